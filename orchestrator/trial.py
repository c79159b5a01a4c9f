"""The Ray Tune trainable: one trial is one IMP run, reported and checkpointed after every level.

A trial's IMP run directory lives on its node; after each level it goes to Tune as the
trial's checkpoint (results, masks, the latest trained ticket: rewind states stay in the
shared dense run). A trial that starts again (a retry after a failure or a lost node, or a
resumed sweep) continues from the most advanced checkpoint it has on storage, which can be
newer than the one Tune remembers when the driver was killed, so no finished level is ever
trained twice.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
from ray import tune

from orchestrator.dense_cache import DenseStore, acquire
from orchestrator.spec import SweepSpec
from orchestrator.tracking import Target, TrialLog, TrialRecord, read_masks
from trainables.config import Config, config_hash, dense_hash
from trainables.imp import ImpRun, Reporter
from trainables.results import LEVELS_SCHEMA, read_table

# Set to a file path to append a JSON line per training run started and per level finished (with
# the node and process): an audit trail that shows that retries and resumes never repeat work.
TRAINING_LOG = "LTH_TRAINING_LOG"


def _level_summary(rows: list[dict[str, Any]], level: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in rows:
        if r["level"] == level:
            variant = "ticket" if r["variant"] == "dense" else r["variant"]  # level 0's ticket is the dense net
            out["weights_remaining"] = r["weights_remaining"]
            out[f"{variant}_accuracy"] = r["test_accuracy"]
            if variant == "ticket":
                out["ticket_early_stop_accuracy"] = r["early_stop_accuracy"]
                out["ticket_early_stop_iter"] = r["early_stop_iter"]
                out["ticket_test_loss"] = r["test_loss"]
                out["ticket_val_loss"] = r["val_loss"]
                out["ticket_early_stop_val_loss"] = r["early_stop_val_loss"]
        if r["variant"] == "dense":
            out["dense_accuracy"] = r["test_accuracy"]
    return out


def level_metrics(rows: list[dict[str, Any]], spec: SweepSpec) -> dict[str, Any]:
    """What a trial reports after a level: that level's results and, for optuna, the objective so far
    (the metric at the last level, or at the level nearest `search.at_weights_remaining`)."""
    last = max(r["level"] for r in rows)
    out = {"level": last, **_level_summary(rows, last)}
    if spec.search.algorithm == "optuna":
        chosen = out
        if (target := spec.search.at_weights_remaining) is not None:
            levels = [_level_summary(rows, level) for level in sorted({r["level"] for r in rows})]
            chosen = min(levels, key=lambda m: abs(m["weights_remaining"] - target))
        if spec.search.metric in chosen:
            out["objective"] = chosen[spec.search.metric]
    return out


class TrialReporter(Reporter):
    """Reports each finished level to Tune with the run directory as its checkpoint, and hands it
    to the trial's MLflow logger (if tracked)."""

    def __init__(self, spec: SweepSpec, cfg: Config, workdir: Path, trial_id: str, tracking: TrialLog | None):
        self.spec, self.cfg, self.workdir, self.trial_id = spec, cfg, workdir, trial_id
        self.tracking = tracking
        self.masks_read: set[int] = set()
        self.log = os.environ.get(TRAINING_LOG)

    def _log(self, event: str, **fields: Any) -> None:
        if self.log:
            entry = {"event": event, "trial": self.trial_id, "config_hash": config_hash(self.cfg),
                     "dense_hash": dense_hash(self.cfg), **fields, "node": ray.get_runtime_context().get_node_id(),
                     "pid": os.getpid(), "time": time.time()}
            with open(self.log, "a") as f:
                f.write(json.dumps(entry) + "\n")

    def training(self, level: int, variant: str, start: int, end: int, weights_remaining: float) -> None:
        self._log("training", level=level, variant=variant, start=start, end=end)

    def level_done(self, level: int, rows: list[dict[str, Any]]) -> None:
        self.report()
        self._log("level_done", level=level)

    def track(self) -> list[dict[str, Any]]:
        """Hand the run's rows (and masks not yet read) to the MLflow logger; returns the rows."""
        rows = read_table(self.workdir / "results.parquet", LEVELS_SCHEMA).to_pylist()
        if self.tracking is not None:
            levels = {r["level"] for r in rows} - self.masks_read
            self.tracking.update(rows, read_masks(self.workdir, sorted(levels)))
            self.masks_read |= levels
        return rows

    def report(self) -> None:
        metrics = level_metrics(self.track(), self.spec)
        if self.tracking is not None:
            metrics["mlflow_failures"] = self.tracking.failures
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(self.workdir)))


def _levels_in(fs: pafs.FileSystem, path: str) -> int:
    """Finished levels in a stored run directory (0 if it has none or cannot be read)."""
    try:
        with fs.open_input_file(f"{path}/results.parquet") as f:
            return len(set(pq.read_table(f, columns=["level"]).column("level").to_pylist()))
    except (OSError, ValueError):
        return 0


def restore(workdir: Path) -> int:
    """Put the trial's most advanced saved state in `workdir`; returns the finished levels Tune knows of."""
    known = tune.get_checkpoint()
    storage = tune.get_context().get_storage()
    fs, trial_path = storage.storage_filesystem, storage.trial_fs_path
    candidates = [(i.path, i.base_name) for i in fs.get_file_info(pafs.FileSelector(trial_path, allow_not_found=True))
                  if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")]
    best, best_levels = None, _levels_in(pafs.LocalFileSystem(), str(workdir)) if workdir.exists() else 0
    for path, _ in sorted(candidates, key=lambda c: c[1]):
        if (levels := _levels_in(fs, path)) > best_levels:
            best, best_levels = path, levels
    if best is not None:
        shutil.rmtree(workdir, ignore_errors=True)
        tune.Checkpoint(best, fs).to_directory(str(workdir))
    return _levels_in(known.filesystem, known.path) if known else 0


def run_trial(config: Mapping[str, Any], spec: SweepSpec, rewind_points: Mapping[str, list[str]],
              target: Target | None) -> None:
    """The Tune function trainable (bound to the sweep with `tune.with_parameters`); `target`: the
    sweep's MLflow runs, or None when it is not tracked."""
    cfg = spec.trial_config(config)
    context = tune.get_context()
    trial_id = context.get_trial_id()
    # Node-local and outside Tune's trial folder (which Tune uploads on its own schedule): the run
    # directory reaches storage only as a checkpoint, whole, after each level.
    workdir = Path(tempfile.gettempdir()) / "lth-trials" / context.get_experiment_name() / trial_id
    tune_knows = restore(workdir)
    tracking = None if target is None else TrialLog(target, TrialRecord(trial_id, cfg, spec.overrides(config), []))
    reporter = TrialReporter(spec, cfg, workdir, trial_id, tracking)
    try:
        points = [*rewind_points.get(dense_hash(cfg), []), cfg.imp.rewind_iter]
        dense_dir = acquire(cfg, points, DenseStore(spec.storage), trial_id, reporter)
        run = ImpRun(cfg, workdir, reporter, dense_dir=dense_dir)
        if len(run.finished_levels()) > tune_knows:  # progress Tune lost with a killed driver: tell it again
            reporter.report()
        else:
            reporter.track()  # a retry: its MLflow run may lack what an earlier attempt could not log
        run.run()
    except BaseException:
        if tracking is not None:
            tracking.close("FAILED", timeout=10)
        raise
    if tracking is not None:
        tracking.close("FINISHED")
