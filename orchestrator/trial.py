"""The Ray Tune trainable: one trial is one IMP run (or, in a `kind: stability` sweep, one
stability analysis), reported and checkpointed after every level (and replicate).

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
import ray
from ray import tune

from orchestrator.dense_cache import DenseStore, acquire
from orchestrator.spec import SweepSpec
from orchestrator.store import PATH_FILE, RESULTS_FILE, RUN_TABLES, SUMMARY_FILE, TRIAL_PREFIX, find_mask, progress
from orchestrator.tracking import Target, TrialLog, TrialRecord, add_masks, read_masks
from trainables.config import Config, config_hash, dense_hash
from trainables.imp import ImpRun, Reporter
from trainables.masks import Mask
from trainables.results import LEVELS_SCHEMA, read_table
from trainables.stability import StabilityRun

# Set to a file path to append a JSON line per training run started and per level finished (with
# the node and process): an audit trail that shows that retries and resumes never repeat work.
TRAINING_LOG = "LTH_TRAINING_LOG"
IMP_RESULTS = f"imp/{RESULTS_FILE}"  # a stability analysis's IMP run


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
    """What an IMP trial reports after a level: that level's results and, for optuna, the objective so
    far (the metric at the last level, or at the level nearest `search.at_weights_remaining`)."""
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


def stability_metrics(tables: Mapping[str, list[dict[str, Any]]], cfg: Config, spec: SweepSpec) -> dict[str, Any]:
    """What a stability trial reports: the IMP level it reached, then per split the mean instability and
    endpoint error over the replicates analysed so far (and, for optuna, the objective)."""
    summary, imp = tables[SUMMARY_FILE], tables[IMP_RESULTS]
    out: dict[str, Any] = {"level": 0, "replicates": 0}
    if imp:  # the IMP run that finds the analysed level's mask, as it goes
        out |= level_metrics(imp, spec)
    if summary:
        out |= {"level": cfg.stability.level, "weights_remaining": summary[0]["weights_remaining"],
                "replicates": len({r["replicate"] for r in summary})}
        for split in cfg.stability.splits:
            rows = [r for r in summary if r["split"] == split]
            out[f"instability_{split}"] = sum(r["instability"] for r in rows) / len(rows)
            out[f"endpoint_error_{split}"] = sum((r["error_1"] + r["error_2"]) / 2 for r in rows) / len(rows)
            out[f"stable_{split}"] = out[f"instability_{split}"] < cfg.stability.threshold
        if spec.search.algorithm == "optuna" and spec.search.metric in out:
            out["objective"] = out[spec.search.metric]
    return out


def run_tables(workdir: Path, kind: str) -> dict[str, list[dict[str, Any]]]:
    """The tables of a trial's run directory (an analysis's IMP run included), by path."""
    files = {RESULTS_FILE: LEVELS_SCHEMA} if kind == "imp" else {
        PATH_FILE: RUN_TABLES[PATH_FILE], SUMMARY_FILE: RUN_TABLES[SUMMARY_FILE], IMP_RESULTS: LEVELS_SCHEMA}
    return {name: read_table(workdir / name, schema).to_pylist() for name, schema in files.items()}


class TrialReporter(Reporter):
    """Reports each finished level (and stability replicate) to Tune with the run directory as its
    checkpoint, and hands it to the trial's MLflow logger (if tracked)."""

    def __init__(self, spec: SweepSpec, cfg: Config, workdir: Path, trial_id: str, tracking: TrialLog | None):
        self.spec, self.cfg, self.workdir, self.trial_id = spec, cfg, workdir, trial_id
        self.tracking = tracking
        self.masks_read: set[int] = set()
        self.log = os.environ.get(TRAINING_LOG)

    def event(self, event: str, **fields: Any) -> None:
        if self.log:
            entry = {"event": event, "trial": self.trial_id, "config_hash": config_hash(self.cfg),
                     "dense_hash": dense_hash(self.cfg), **fields, "node": ray.get_runtime_context().get_node_id(),
                     "pid": os.getpid(), "time": time.time()}
            with open(self.log, "a") as f:
                f.write(json.dumps(entry) + "\n")

    def training(self, level: int, variant: str, start: int, end: int, weights_remaining: float) -> None:
        self.event("training", level=level, variant=variant, start=start, end=end)

    def level_done(self, level: int, rows: list[dict[str, Any]]) -> None:
        self.report()
        self.event("level_done", level=level)

    def analysed(self, replicate: int, summary_rows: list[dict[str, Any]], path_rows: list[dict[str, Any]]) -> None:
        self.report()
        self.event("analysed", level=self.cfg.stability.level, replicate=replicate)

    def track(self) -> dict[str, list[dict[str, Any]]]:
        """Hand the run's tables (and masks not yet read) to the MLflow logger; returns the tables."""
        tables = run_tables(self.workdir, self.spec.kind)
        if self.tracking is not None:
            imp = tables.get(RESULTS_FILE) or tables.get(IMP_RESULTS, [])
            levels = {r["level"] for r in imp} - self.masks_read
            run_dir = self.workdir if self.spec.kind == "imp" else self.workdir / "imp"
            self.tracking.update(tables, read_masks(run_dir, sorted(levels)))
            self.masks_read |= levels
        return tables

    def report(self) -> None:
        tables = self.track()
        if self.spec.kind == "imp":
            metrics = level_metrics(tables[RESULTS_FILE], self.spec)
        else:
            metrics = stability_metrics(tables, self.cfg, self.spec)
        if self.tracking is not None:
            metrics["mlflow_failures"] = self.tracking.failures
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(self.workdir)))


def restore(workdir: Path) -> int:
    """Put the trial's most advanced saved state in `workdir`; returns the progress (committed rows)
    of the checkpoint Tune knows of."""
    known = tune.get_checkpoint()
    storage = tune.get_context().get_storage()
    fs, trial_path = storage.storage_filesystem, storage.trial_fs_path
    candidates = [(i.path, i.base_name) for i in fs.get_file_info(pafs.FileSelector(trial_path, allow_not_found=True))
                  if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")]
    best, best_rows = None, progress(pafs.LocalFileSystem(), str(workdir)) if workdir.exists() else 0
    for path, _ in sorted(candidates, key=lambda c: c[1]):
        if (rows := progress(fs, path)) > best_rows:
            best, best_rows = path, rows
    if best is not None:
        shutil.rmtree(workdir, ignore_errors=True)
        tune.Checkpoint(best, fs).to_directory(str(workdir))
    return progress(known.filesystem, known.path) if known else 0


def given_mask(spec: SweepSpec, cfg: Config, reporter: TrialReporter) -> Mask | None:
    """The analysed level's mask from the IMP sweep `masks_from`, if one of its trials has it."""
    if not (spec.masks_from and cfg.stability.level):
        return None
    found = find_mask(spec.masks_from, cfg, cfg.stability.level)
    source = f"{spec.masks_from}/{TRIAL_PREFIX}{found[0]}" if found else "computed (no matching trial in masks_from)"
    reporter.event("mask", source=source)
    if reporter.tracking is not None:
        reporter.tracking.record.tags["lth.mask_source"] = source
        if found:  # its sparsity and the mask itself, as a computed mask would show them
            add_masks(reporter.tracking.record, {cfg.stability.level: found[1].state()})
    return found[1] if found else None


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
    tracking = None if target is None else TrialLog(target, TrialRecord(trial_id, cfg, spec.overrides(config),
                                                                        spec.kind))
    reporter = TrialReporter(spec, cfg, workdir, trial_id, tracking)
    try:
        points = [*rewind_points.get(dense_hash(cfg), []), cfg.imp.rewind_iter]
        dense_dir = acquire(cfg, points, DenseStore(spec.storage), trial_id, reporter)
        if spec.kind == "imp":
            run = ImpRun(cfg, workdir, reporter, dense_dir=dense_dir)
        else:
            run = StabilityRun(cfg, workdir, reporter, dense_dir=dense_dir, mask=given_mask(spec, cfg, reporter))
        if progress(pafs.LocalFileSystem(), str(workdir)) > tune_knows:  # what Tune lost with a killed driver
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
