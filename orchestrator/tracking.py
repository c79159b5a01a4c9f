"""MLflow: a view of a sweep's Parquet record, for browsing and comparing runs in the MLflow UI.

One MLflow run per sweep (the parent: the sweep file, its tables, report figures) and one child
run per trial, nested under it: the trial's resolved config as params, tags, metrics and
artifacts. An IMP trial logs per-level metrics with step = level (`ticket/test_accuracy`,
`reinit/test_accuracy`, `weights_remaining`, ...), its results table, per-layer sparsity, the
final mask and a plot of accuracy against weights remaining; a stability analysis logs the
error along the path (step = alpha index), the instability per pair of copies and a plot.

Every write goes through `sync_trial`, which brings a child run level with a trial's rows and
logs only what is missing. Trials call it after every level from a background thread (a slow
or dead server never holds up training), a retried trial or a resumed sweep calls it again on
the same run, and `lth mlflow sync` calls it from the Parquet table: the same code path, so no
run and no metric step is ever logged twice.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import queue
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from orchestrator.report import Figure, Panel, Series, png
from orchestrator.store import PATH_FILE, RESULTS_FILE, RUN_TABLES, SUMMARY_FILE, StoredTrial
from trainables.config import Config, to_dict

SWEEP_FILE_JSON = "sweep.json"  # the sweep's id and MLflow location, beside sweep.yaml
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # the UI's "model training" view
# Per row: `{variant}/{column}` with step = level.
METRIC_COLUMNS = ("test_accuracy", "test_loss", "val_loss", "early_stop_iter", "early_stop_accuracy",
                  "early_stop_val_loss", "train_seconds")
# Our own retries (below) replace MLflow's, whose defaults wait minutes on a dead server.
_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
             "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lth-sweeps")
    except PackageNotFoundError:
        return "unknown"


def client(uri: str):
    for key, value in _HTTP_ENV.items():
        os.environ.setdefault(key, value)
    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # after the import, which sets it: no migration lines

    return MlflowClient(tracking_uri=uri)


# ---------------------------------------------------------------------------------------------
# where a sweep is tracked


@dataclass(frozen=True)
class Target:
    """Where a sweep's runs are: what trials need to log their child runs."""

    uri: str
    experiment_id: str
    parent_run_id: str
    sweep: str
    sweep_id: str


def default_uri(storage: str) -> str | None:
    """The embedded store: SQLite beside the sweep folders (MLflow's file store is deprecated)."""
    if "://" in storage:
        return None  # no local file is shared by the nodes of a cluster: a tracking server is needed
    return f"sqlite:///{Path(storage).resolve() / 'mlflow.db'}"


def resolve_uri(tracking_uri: str | None, configured: str | None, storage: str) -> str | None:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else the sweep file's `tracking.uri`, else the default."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or configured or default_uri(storage)


def is_local(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def _artifact_location(uri: str, experiment: str) -> str | None:
    if uri.startswith("sqlite:///"):  # else MLflow puts artifacts under the working directory
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts" / experiment).as_uri()
    return None  # a server stores them where it was told to


def experiment_id(mlflow_client, name: str, uri: str) -> str:
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return mlflow_client.create_experiment(name, artifact_location=_artifact_location(uri, name), tags=EXPERIMENT_KIND)


def _find_run(mlflow_client, experiment: str, **tags: str):
    conditions = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = mlflow_client.search_runs([experiment], filter_string=conditions, max_results=2)
    return runs[0] if runs else None


def _log_batch(mlflow_client, run_id: str, metrics: Sequence = (), params: Mapping[str, str] | None = None,
               tags: Mapping[str, str] | None = None) -> None:
    """As few requests as MLflow's batch limits allow (900 metrics, 90 params each); `tags` go with the
    last, so a tag such as lth.progress is set only once everything before it is in."""
    from mlflow.entities import Param, RunTag

    items = [Param(k, v) for k, v in (params or {}).items()]
    chunks = max(1, -(-len(metrics) // 900), -(-len(items) // 90))
    for i in range(chunks):
        last = i == chunks - 1
        mlflow_client.log_batch(run_id, metrics=metrics[i * 900:(i + 1) * 900], params=items[i * 90:(i + 1) * 90],
                                tags=[RunTag(k, v) for k, v in (tags or {}).items()] if last else [])


def _parent(mlflow_client, experiment: str, sweep_id: str):
    return _find_run(mlflow_client, experiment, **{"lth.sweep_id": sweep_id, "lth.kind": "sweep"})


def parent_run(mlflow_client, experiment: str, sweep: str, sweep_id: str, sweep_text: str,
               params: Mapping[str, str]) -> str:
    """The sweep's run: found by its sweep id (a resumed sweep, a sync), else created."""
    run = _parent(mlflow_client, experiment, sweep_id)
    if run is not None:
        return run.info.run_id
    run = mlflow_client.create_run(experiment, run_name=sweep, tags={
        "lth.kind": "sweep", "lth.sweep": sweep, "lth.sweep_id": sweep_id, "lth.version": _version()})
    _log_batch(mlflow_client, run.info.run_id, params=params)
    mlflow_client.log_text(run.info.run_id, sweep_text, "sweep.yaml")
    return run.info.run_id


# ---------------------------------------------------------------------------------------------
# one trial's run


@dataclass
class TrialRecord:
    """Everything a trial's child run shows, as of its latest finished level or replicate."""

    trial_id: str
    cfg: Config
    overrides: Mapping[str, Any]
    kind: str = "imp"  # an IMP run, or a stability analysis
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # its tables' rows, by file name
    layers: dict[int, dict[str, tuple[int, int]]] = field(default_factory=dict)  # level -> layer -> (kept, total)
    final_mask: Mapping[str, tuple[tuple[int, ...], Any]] | None = None  # the bit-packed mask state
    status: str | None = None  # FINISHED / FAILED / KILLED once the trial stopped
    tags: dict[str, str] = field(default_factory=dict)  # more tags for its run (where its mask came from)

    @property
    def progress(self) -> int:
        """Rows of the trial's commit record: grows with every level (replicate, for an analysis)."""
        return len(self.tables.get(RESULTS_FILE if self.kind == "imp" else SUMMARY_FILE, []))

    @property
    def run_name(self) -> str:
        swept = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in self.overrides.items())
        return f"{self.trial_id} ({swept})" if swept else self.trial_id


def _stamp(row: Mapping[str, Any]) -> int:
    return int(row["finished_at"].timestamp() * 1000)


def metrics_of(record: TrialRecord) -> dict[tuple[str, int], tuple[float, int]]:
    """(key, step) -> (value, timestamp ms) for every row of the record.

    IMP runs: `{variant}/{column}` and `weights_remaining` with step = level; level 0's dense network
    is also the ticket at 100% of weights, so ticket curves start where the papers' figures do.
    Stability analyses: `path/{split}_error_r{replicate}` (and `_loss`) with step = alpha index, and
    `{split}/instability`, `{split}/endpoint_error`, `{split}/stable` with step = replicate."""
    out: dict[tuple[str, int], tuple[float, int]] = {}
    for row in record.tables.get(RESULTS_FILE, []) if record.kind == "imp" else []:
        variants = ["dense", "ticket"] if row["variant"] == "dense" else [row["variant"]]
        for variant in variants:
            for column in METRIC_COLUMNS:
                if row[column] is not None:
                    out[(f"{variant}/{column}", row["level"])] = (float(row[column]), _stamp(row))
        out[("weights_remaining", row["level"])] = (float(row["weights_remaining"]), _stamp(row))
    for row in record.tables.get(PATH_FILE, []):
        for column in ("error", "loss"):
            out[(f"path/{row['split']}_{column}_r{row['replicate']}", row["alpha_index"])] = (row[column], _stamp(row))
    for row in record.tables.get(SUMMARY_FILE, []):
        step, split = row["replicate"], row["split"]
        out[(f"{split}/instability", step)] = (row["instability"], _stamp(row))
        out[(f"{split}/endpoint_error", step)] = ((row["error_1"] + row["error_2"]) / 2, _stamp(row))
        out[(f"{split}/stable", step)] = (float(row["stable"]), _stamp(row))
        out[("weights_remaining", 0)] = (row["weights_remaining"], _stamp(row))
    return out


def flat_params(node: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as MLflow params: dotted keys, string values (lists as JSON)."""
    from orchestrator.spec import flatten

    return {k: json.dumps(v) if isinstance(v, (list, tuple)) else str(v) for k, v in flatten(node, prefix).items()}


def _sparsity_csv(layers: Mapping[int, Mapping[str, tuple[int, int]]]) -> str:
    lines = ["level,layer,kept,total,remaining"]
    for level in sorted(layers):
        lines += [f"{level},{name},{kept},{total},{kept / total:.6f}" for name, (kept, total) in layers[level].items()]
    return "\n".join(lines) + "\n"


def _rows_csv(rows: Sequence[Mapping[str, Any]], name: str) -> bytes:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    buffer = io.BytesIO()
    pacsv.write_csv(pa.Table.from_pylist(list(rows), schema=RUN_TABLES[name]), buffer)
    return buffer.getvalue()


def error_plot(path_rows: Sequence[Mapping[str, Any]], title: str) -> bytes:
    """Error along the line between the two copies, one line per split and replicate."""
    lines = []
    for split in sorted({r["split"] for r in path_rows}):
        for replicate in sorted({r["replicate"] for r in path_rows}):
            points = sorted((r["alpha"], r["error"] * 100) for r in path_rows
                            if r["split"] == split and r["replicate"] == replicate)
            lines.append(Series(f"{split}, pair {replicate}", *map(tuple, zip(*points)), color=len(lines)))
    return png(Figure("error_vs_alpha", title, "", "interpolation alpha", "error (%)", (Panel("", tuple(lines)),)))


def accuracy_plot(rows: Sequence[Mapping[str, Any]], title: str) -> bytes:
    """Test accuracy against weights remaining (log axis, 100% on the left), one line per variant."""
    lines = []
    for variant in ("ticket", "reinit", "random_mask"):
        points = sorted(((r["weights_remaining"] * 100, r["test_accuracy"] * 100) for r in rows
                         if r["variant"] == variant or (variant == "ticket" and r["variant"] == "dense")), reverse=True)
        if points:
            lines.append(Series(variant, *map(tuple, zip(*points)), color=len(lines), variant=variant))
    return png(Figure("accuracy_vs_weights_remaining", title, "", "weights remaining (%)", "test accuracy (%)",
                      (Panel("", tuple(lines)),), xscale="log", invert_x=True))


@dataclass
class RunState:
    """What a process knows it has logged to one child run; dropped after any error."""

    run_id: str | None = None
    params: set[str] | None = None
    logged: set[tuple[str, int]] | None = None
    artifact_progress: int = 0
    status: str | None = None

    def forget(self) -> None:
        """Keep only the run id (so no second run is created); ask the server for the rest next time."""
        self.params = self.logged = self.status = None
        self.artifact_progress = 0


def _child_run(mlflow_client, target: Target, record: TrialRecord) -> tuple[str, bool]:
    """The trial's run id, and whether it was created now."""
    run = _find_run(mlflow_client, target.experiment_id,
                    **{"lth.trial_id": record.trial_id, "mlflow.parentRunId": target.parent_run_id})
    if run is not None:
        return run.info.run_id, False
    cfg = record.cfg
    from trainables.config import config_hash, dense_hash

    return mlflow_client.create_run(target.experiment_id, run_name=record.run_name, tags={
        "mlflow.parentRunId": target.parent_run_id, "lth.kind": "trial", "lth.sweep": target.sweep,
        "lth.sweep_id": target.sweep_id, "lth.trial_id": record.trial_id, "lth.config_hash": config_hash(cfg),
        "lth.dense_hash": dense_hash(cfg), "lth.arch": cfg.model.arch, "lth.dataset": cfg.data.dataset,
        "lth.overrides": json.dumps(dict(record.overrides), sort_keys=True), "lth.version": _version(),
        **record.tags}).info.run_id, True


def sync_trial(mlflow_client, target: Target, record: TrialRecord, state: RunState) -> None:
    """Make the trial's child run show `record`, logging only what it lacks. On any error `state` is
    reset, so the next call asks the server what it has instead of trusting this process's memory."""
    from mlflow.entities import Metric

    try:
        if state.run_id is None:
            state.run_id, created = _child_run(mlflow_client, target, record)
            if created:  # nothing to ask the server about
                state.params, state.logged = set(), set()
        run_id = state.run_id
        wanted = metrics_of(record)
        if state.logged is None:
            run = mlflow_client.get_run(run_id)
            state.params = set(run.data.params)
            state.logged = {(key, m.step) for key in {k for k, _ in wanted} | set(run.data.metrics)
                            for m in mlflow_client.get_metric_history(run_id, key)}
            if run.info.status != "RUNNING" and record.status is None:
                mlflow_client.update_run(run_id, status="RUNNING")  # a retried trial or a resumed sweep
        params = {k: v for k, v in flat_params(to_dict(record.cfg)).items() if k not in state.params}
        missing = [Metric(k, v, stamp, step) for (k, step), (v, stamp) in sorted(wanted.items())
                   if (k, step) not in state.logged]
        # Files and a plot once the trial stops (metrics are live): every level, they cost a second each.
        if record.status is not None and record.progress > state.artifact_progress:
            _log_artifacts(mlflow_client, run_id, record)
            state.artifact_progress = record.progress
        _log_batch(mlflow_client, run_id, missing, params, {"lth.progress": str(record.progress)})
        state.params |= set(params)
        state.logged |= {(m.key, m.step) for m in missing}
        if record.status is not None and record.status != state.status:
            mlflow_client.set_terminated(run_id, record.status)
            state.status = record.status
    except Exception:
        state.forget()
        raise


def _log_artifacts(mlflow_client, run_id: str, record: TrialRecord) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if record.kind == "imp":
            rows = record.tables.get(RESULTS_FILE, [])
            files = {"results.csv": _rows_csv(rows, RESULTS_FILE),
                     "accuracy_vs_weights_remaining.png": accuracy_plot(rows, record.run_name)}
        else:
            files = {"stability.csv": _rows_csv(record.tables.get(PATH_FILE, []), PATH_FILE),
                     "stability_summary.csv": _rows_csv(record.tables.get(SUMMARY_FILE, []), SUMMARY_FILE),
                     "error_vs_alpha.png": error_plot(record.tables.get(PATH_FILE, []), record.run_name)}
        if record.layers:
            files["sparsity.csv"] = _sparsity_csv(record.layers).encode()
        if record.final_mask is not None:
            buffer = io.BytesIO()  # bit-packed, compressed, readable with numpy alone
            arrays = {}
            for name, (shape, packed) in record.final_mask.items():
                arrays[f"{name}.bits"] = np.asarray(packed)
                arrays[f"{name}.shape"] = np.asarray(shape, dtype=np.int64)
            np.savez_compressed(buffer, **arrays)
            files["final_mask.npz"] = buffer.getvalue()
        for name, content in files.items():
            (Path(tmp) / name).write_bytes(content)
        mlflow_client.log_artifacts(run_id, tmp)


def read_masks(run_dir: Path, levels: Sequence[int]) -> dict[int, Mapping[str, Any]]:
    """level -> its bit-packed mask state, for the levels an IMP run directory has."""
    import torch

    paths = {level: run_dir / "checkpoints" / f"level_{level:03d}" / "mask.pt" for level in levels}
    return {level: torch.load(path, weights_only=True) for level, path in paths.items() if path.exists()}


def add_masks(record: TrialRecord, masks: Mapping[int, Mapping[str, Any]]) -> None:
    for level, state in masks.items():
        record.layers[level] = {name: (int(np.unpackbits(np.asarray(packed), count=int(np.prod(shape))).sum()),
                                       int(np.prod(shape))) for name, (shape, packed) in state.items()}
    if masks:
        record.final_mask = masks[max(masks)]


class TrialLog:
    """Keeps one trial's child run level with its results from a background thread.

    A failed attempt is retried with backoff; a newer level supersedes a pending one (a sync
    logs everything missing). Training never waits for MLflow, except for a bounded final flush.
    """

    def __init__(self, target: Target, record: TrialRecord, warn: Callable[[str], None] | None = None):
        self.target, self.record = target, record
        self.warn = warn or (lambda text: print(text, file=sys.stderr, flush=True))
        self.state = RunState()
        self.failures = 0  # failed attempts so far (reported to the driver)
        self.synced = 0  # progress MLflow has
        self._lock = threading.Lock()
        self._wake: queue.Queue[None] = queue.Queue()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name=f"mlflow-{record.trial_id}", daemon=True)
        self._thread.start()

    def update(self, tables: dict[str, list[dict[str, Any]]], masks: Mapping[int, Mapping[str, Any]]) -> None:
        with self._lock:
            self.record.tables = tables
            add_masks(self.record, masks)
        self._wake.put(None)

    def close(self, status: str, timeout: float = 30.0) -> bool:
        """Log the final state and `status`; True if MLflow has everything."""
        with self._lock:
            self.record.status = status
            self._closing = True
        self._wake.put(None)
        self._thread.join(timeout)
        done = not self._thread.is_alive() and self.synced == self.record.progress
        if not done:
            self.warn(f"MLflow: trial {self.record.trial_id} is not fully logged ({self.failures} failed attempts); "
                      "its results are in Parquet: run `lth mlflow sync <sweep folder>` once MLflow is reachable")
        return done

    def _snapshot(self) -> TrialRecord:
        with self._lock:
            return dataclasses.replace(self.record, tables=dict(self.record.tables), layers=dict(self.record.layers))

    def _loop(self) -> None:
        mlflow_client, delay = None, 1.0
        while True:
            failing = self.failures and self.synced < self.record.progress
            try:
                self._wake.get(timeout=delay if failing else None)
            except queue.Empty:
                pass
            record = self._snapshot()
            try:
                mlflow_client = mlflow_client or client(self.target.uri)
                sync_trial(mlflow_client, self.target, record, self.state)
                self.synced, delay = record.progress, 1.0
            except Exception as exc:  # noqa: BLE001 - any failure: Parquet has the data, retry later
                self.failures += 1
                delay = min(delay * 2, 30.0)
                self.warn(f"MLflow: logging trial {record.trial_id} failed ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); retrying in {delay:.0f} s")
                if record.status is not None:
                    return  # closing: one last attempt was made
                continue
            if record.status is not None:
                return



# ---------------------------------------------------------------------------------------------
# a whole sweep


def open_sweep(uri: str, experiment: str, sweep: str, sweep_id: str, sweep_text: str,
               params: Mapping[str, str]) -> Target:
    """The sweep's experiment and parent run (found again on resume, created the first time)."""
    mlflow_client = client(uri)
    exp = experiment_id(mlflow_client, experiment, uri)
    parent = parent_run(mlflow_client, exp, sweep, sweep_id, sweep_text, params)
    mlflow_client.update_run(parent, status="RUNNING")
    return Target(uri, exp, parent, sweep, sweep_id)


def log_report(uri: str, experiment: str, sweep_id: str, files: Sequence[Path]) -> str | None:
    """Log a report's files under `report/` in the sweep's parent run (again: replaced); returns the
    run's id, or None if MLflow has no run of this sweep yet."""
    mlflow_client = client(uri)
    found = mlflow_client.get_experiment_by_name(experiment)
    run = None if found is None else _parent(mlflow_client, found.experiment_id, sweep_id)
    if run is None:
        return None
    for path in files:
        mlflow_client.log_artifact(run.info.run_id, str(path), "report")
    return run.info.run_id


def _children(mlflow_client, target: Target) -> dict[str, Any]:
    out, token = {}, None
    while True:
        page = mlflow_client.search_runs([target.experiment_id], max_results=1000, page_token=token,
                                         filter_string=f"tags.`mlflow.parentRunId` = '{target.parent_run_id}'")
        out.update({run.data.tags.get("lth.trial_id"): run for run in page})
        if not (token := page.token):
            return out


def sync_sweep(target: Target, tables: Mapping[str, Any], kind: str,
               trial_config: Callable[[Mapping[str, Any]], Config], statuses: Mapping[str, str],
               masks: Callable[[str, Config], Mapping[int, Any]], files: Sequence[Path]) -> int:
    """Bring every child run level with the sweep's tables (file name -> table; `statuses`: trial id ->
    final MLflow status; `masks(trial id, config)`: the trial's stored masks) and give the parent the
    tables (`files`) and its status. Runs already level are only looked at. Returns the number of child
    runs it had to update."""
    mlflow_client = client(target.uri)
    children = _children(mlflow_client, target)
    by_trial: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for name, table in tables.items():
        for row in table.to_pylist():
            by_trial.setdefault(row["trial_id"], {}).setdefault(name, []).append(row)
    updated = 0
    for trial_id, rows in sorted(by_trial.items()):
        overrides = json.loads(next(iter(rows.values()))[0]["overrides"])
        record = TrialRecord(trial_id, trial_config(overrides), overrides, kind, rows, status=statuses.get(trial_id))
        run = children.get(trial_id)
        if run is not None and run.data.tags.get("lth.progress") == str(record.progress) and \
                run.info.status == record.status:
            continue
        add_masks(record, masks(trial_id, record.cfg))
        sync_trial(mlflow_client, target, record, RunState())
        updated += 1
    for path in files:
        mlflow_client.log_artifact(target.parent_run_id, str(path))
    values = set(statuses.values())
    mlflow_client.set_terminated(target.parent_run_id, "FAILED" if "FAILED" in values else
                                 "FINISHED" if values == {"FINISHED"} else "KILLED")
    return updated


def stored_levels(kind: str, cfg: Config) -> tuple[str, range]:
    """Where a trial's run directory keeps its masks (relative), and for which levels."""
    return ("", range(cfg.imp.levels + 1)) if kind == "imp" else ("imp", range(cfg.stability.level + 1))


def sync_folder(spec, target: Target, tables: Mapping[str, Any], statuses: Mapping[str, str],
                trials: Mapping[str, StoredTrial]) -> int | None:
    """`sync_sweep` from a sweep folder (masks from its `trials`' checkpoints, as `store.collect` read
    them); None, with the fix printed, if MLflow cannot be reached."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    def masks(trial_id: str, cfg: Config) -> dict[int, Any]:
        trial = trials.get(trial_id)
        if trial is None or trial.checkpoint is None:
            return {}
        folder, levels = stored_levels(spec.kind, cfg)
        if isinstance(trial.fs, pafs.LocalFileSystem):
            return read_masks(Path(trial.checkpoint) / folder, levels)
        with tempfile.TemporaryDirectory() as tmp:
            pafs.copy_files(trial.checkpoint, tmp, source_filesystem=trial.fs)
            return read_masks(Path(tmp) / folder, levels)

    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for name, table in tables.items():
            files.append(Path(tmp) / name)
            pq.write_table(table, files[-1])
        try:
            return sync_sweep(target, tables, spec.kind, spec.base.with_updates, statuses, masks, files)
        except Exception as exc:  # noqa: BLE001 - MLflow is a view; Parquet holds the results
            print(f"MLflow: could not bring {target.uri} level with the results ({type(exc).__name__}: "
                  f"{str(exc)[:200]}); they are all in {spec.experiment}. Once MLflow is reachable: "
                  f"lth mlflow sync {spec.experiment}", flush=True)
            return None
