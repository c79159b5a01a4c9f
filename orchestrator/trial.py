"""The Ray Tune trainable: one trial is one run of the sweep's workflow (`orchestrator.workflows`),
reported and checkpointed after every commit (an IMP level, a stability replicate).

A trial's run folder lives on its node; after each commit it goes to Tune as the trial's checkpoint
(results, masks, the latest trained weights: rewind states stay in the shared dense run), with a
manifest written last. A trial that starts again (a retry after a failure or a lost node, or a resumed
sweep) continues from the most advanced complete checkpoint it has on storage, which can be newer
than the one Tune remembers when the driver was killed, so no commit is ever trained twice; a
checkpoint a lost node left half uploaded is skipped for the last complete one.

An error no retry can fix (a missing dataset, an invalid config, an unreadable checkpoint) is
permanent: the trial reports it to Tune (`permanent_error`), and `tuner.PermanentErrors` tells Tune
not to retry the exception the trial raises after it. The terminal shows one line; the traceback
stays in the trial's error file.
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

from orchestrator import trial_folder
from orchestrator.dense_cache import DenseStore, acquire
from orchestrator.spec import SweepSpec
from orchestrator.tracking.client import Target
from orchestrator.tracking.live import TrialLog
from orchestrator.tracking.sync import TrialRecord, read_masks
from orchestrator.workflows import Rows, Workflow
from trainables.config import Config, ConfigError, UserError, config_hash, dense_hash
from trainables.imp import Reporter
from trainables.layout import COMMIT_UNITS, write_manifest
from trainables.results import read_table

# Set to a file path to append a JSON line per training run started and per commit (with the node and
# process): an audit trail that shows that retries and resumes never repeat work.
TRAINING_LOG = "LTH_TRAINING_LOG"
PERMANENT = UserError  # its message names the problem and the fix: a retry would meet it again
PERMANENT_ERROR = "permanent_error"  # the Tune metric that carries a permanent error's one line


class PermanentTrialError(RuntimeError):
    """Raised by a trial after it reported a permanent error; never retried."""


def run_tables(workdir: Path, flow: Workflow) -> Rows:
    """The tables of a trial's run folder, by file name relative to it."""
    return {name: read_table(workdir / name, schema).to_pylist() for name, schema in flow.run_tables.items()}


class TrialReporter(Reporter):
    """Reports each commit to Tune with the run folder as its checkpoint, and hands it to the trial's
    MLflow logger (if tracked)."""

    def __init__(self, spec: SweepSpec, cfg: Config, workdir: Path, trial_id: str, tracking: TrialLog | None):
        self.spec, self.flow, self.cfg, self.workdir, self.trial_id = spec, spec.workflow, cfg, workdir, trial_id
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

    def committed(self, unit: int, rows: dict[str, list[dict[str, Any]]]) -> None:
        self.report()
        for name in rows.keys() & COMMIT_UNITS.keys():
            self.event(f"{COMMIT_UNITS[name]}_done", **{COMMIT_UNITS[name]: unit})

    def note_mask(self, source: str, level: int, mask: Any) -> None:
        """Where the analysed level's mask came from (another sweep's trial, or computed here)."""
        self.event("mask", source=source)
        if self.tracking is not None:  # its sparsity and the mask itself, as a computed mask would show them
            self.tracking.tag("lth.mask_source", source, {level: mask.state()} if mask is not None else {})

    def track(self) -> Rows:
        """Hand the run's tables (and masks not yet read) to the MLflow logger; returns the tables."""
        tables = run_tables(self.workdir, self.flow)
        if self.tracking is not None:
            masks = read_masks(self.workdir / self.flow.masks_dir,
                               [level for level in self.flow.mask_levels(self.cfg) if level not in self.masks_read])
            self.tracking.update(tables, masks)
            self.masks_read |= set(masks)
        return tables

    def report(self) -> None:
        metrics = self.flow.trial_metrics(self.track(), self.cfg, self.spec.search)
        if self.tracking is not None:
            metrics["mlflow_failures"] = self.tracking.failures
        write_manifest(self.workdir)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(self.workdir)))
        # Tune returns from report once the driver has taken the checkpoint (its record read): older ones can go.
        storage = tune.get_context().get_storage()
        trial_folder.prune(storage.storage_filesystem, storage.trial_fs_path, self.flow.commit_tables,
                           self.spec.keep_checkpoints)


def restore(workdir: Path, flow: Workflow, manifests: bool) -> int:
    """Put the trial's most advanced complete saved state in `workdir`; returns the progress (committed
    rows) of the checkpoint Tune knows of."""
    known = tune.get_checkpoint()
    storage = tune.get_context().get_storage()
    local = trial_folder.progress(pafs.LocalFileSystem(), str(workdir), flow.commit_tables) if workdir.exists() else 0
    best, rows = trial_folder.latest_checkpoint(storage.storage_filesystem, storage.trial_fs_path,
                                                flow.commit_tables, manifests)
    if best is not None and rows > local:
        # Downloaded beside the run folder and renamed into place once whole: a process killed mid-download
        # leaves the old folder (or none), never a partial one whose results table would pass for complete.
        partial = workdir.with_name(f".{workdir.name}.restoring")
        shutil.rmtree(partial, ignore_errors=True)
        tune.Checkpoint(best, storage.storage_filesystem).to_directory(str(partial))
        shutil.rmtree(workdir, ignore_errors=True)
        partial.rename(workdir)
    return trial_folder.progress(known.filesystem, known.path, flow.commit_tables) if known else 0


def _permanent(exc: BaseException, trial_id: str) -> PermanentTrialError:
    """Report `exc` to Tune as this trial's terminal state; the error to raise after it."""
    line = " ".join(str(exc).split())
    tune.report({PERMANENT_ERROR: f"{type(exc).__name__}: {line}"})
    return PermanentTrialError(f"trial {trial_id}: {type(exc).__name__}: {line}")


def run_trial(config: Mapping[str, Any], spec: SweepSpec, rewind_points: Mapping[str, list[str]],
              target: Target | None, manifests: bool) -> None:
    """The Tune function trainable (bound to the sweep with `tune.with_parameters`); `target`: the
    sweep's MLflow runs, or None when it is not tracked; `manifests`: the sweep's checkpoints carry one."""
    context = tune.get_context()
    trial_id = context.get_trial_id()
    flow = spec.workflow
    try:
        cfg = spec.trial_config(config)  # a sampled combination can be invalid
    except ConfigError as exc:
        raise _permanent(exc, trial_id) from exc
    # Node-local and outside Tune's trial folder (which Tune uploads on its own schedule): the run folder
    # reaches storage only as a checkpoint, whole, after each commit.
    workdir = Path(tempfile.gettempdir()) / "lth-trials" / context.get_experiment_name() / trial_id
    tracking = None if target is None else TrialLog(target, TrialRecord(trial_id, cfg, spec.overrides(config), flow))
    reporter = TrialReporter(spec, cfg, workdir, trial_id, tracking)
    storage = context.get_storage()
    trial_folder.write_params(storage.storage_filesystem, storage.trial_fs_path, config)
    try:
        tune_knows = restore(workdir, flow, manifests)
        points = [*rewind_points.get(dense_hash(cfg), []), cfg.imp.rewind_iter]
        dense_dir = acquire(cfg, points, DenseStore(spec.storage), trial_id, reporter)
        run = flow.make_run(cfg, workdir, reporter, dense_dir, spec.masks_from)
        if trial_folder.progress(pafs.LocalFileSystem(), str(workdir), flow.commit_tables) > tune_knows:
            reporter.report()  # what Tune lost with a killed driver
        else:
            reporter.track()  # a retry: its MLflow run may lack what an earlier attempt could not log
        run.run()
    except PERMANENT as exc:
        if tracking is not None:
            tracking.close("FAILED", timeout=10)
        raise _permanent(exc, trial_id) from exc
    except BaseException:
        if tracking is not None:
            tracking.close("FAILED", timeout=10)
        raise
    if tracking is not None:
        tracking.close("FINISHED")
