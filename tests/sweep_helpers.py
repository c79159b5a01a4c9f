"""Tiny sweeps for the end-to-end tests: real Ray, real training on small synthetic data."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import yaml

from orchestrator.spec import parse_sweep
from orchestrator.trial_folder import latest_checkpoint

COLUMNS = ["level", "variant", "weights_remaining", "test_accuracy", "test_loss", "val_loss", "early_stop_iter",
           "early_stop_accuracy"]

BASE = {
    "data": {"dataset": "synthetic", "shape": [1, 8, 8], "num_classes": 4, "train_size": 600, "test_size": 200},
    "train": {"length": "90it", "batch_size": 30, "eval_every": "30it"},
    "imp": {"levels": 3, "controls": ["reinit"]},
    "runtime": {"device": "cpu"},
}


def sweep_raw(storage: Path, name: str = "tiny", **extra) -> dict:
    raw = {"name": name, "base": BASE, "storage": str(storage), "resources": {"cpu": 1}, "max_failures": 2,
           "space": {"train.lr": [1.2e-3, 3e-3], "imp.rewind_iter": ["0it", "30it"], "prune.rate": [0.2, 0.5]}}
    raw.update(extra)
    return raw


def sweep_spec(storage: Path, **extra):
    raw = sweep_raw(storage, **extra)
    return parse_sweep(raw, "test sweep", yaml.safe_dump(raw))


def write_sweep(path: Path, storage: Path, **extra) -> Path:
    path.write_text(yaml.safe_dump(sweep_raw(storage, **extra)))
    return path


def read_log(path: Path) -> list[dict]:
    """Every complete line of a training log (a line being written has no newline yet)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().split("\n")[:-1]]


def wait_for(log: Path, predicate, timeout: float = 300.0) -> dict:
    """The first training-log entry matching `predicate`, once it is written."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for entry in read_log(log):
            if predicate(entry):
                return entry
        time.sleep(0.2)
    raise TimeoutError(f"no matching entry in {log} after {timeout} s")


def trial_results(experiment: Path) -> dict[str, "object"]:
    """config hash -> the trial's per-level results (from its latest checkpoint), sorted."""
    out = {}
    for trial in experiment.glob("trial_*"):
        checkpoint, _ = latest_checkpoint(pafs.LocalFileSystem(), str(trial), ["results.parquet"])
        if checkpoint is None:
            continue
        table = pq.read_table(f"{checkpoint}/results.parquet").to_pandas()
        out[table.config_hash.iloc[0]] = table.sort_values(["level", "variant"])[COLUMNS].reset_index(drop=True)
    return out
