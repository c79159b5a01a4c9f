"""Bringing MLflow level with the Parquet record: one trial's child run (`sync_trial`) or a whole sweep.

A child run shows its trial's resolved config as params, its workflow's metrics (`Workflow.mlflow_metrics`)
and, once the trial stops, its workflow's files plus per-layer sparsity (`sparsity.csv`) and the last
mask (`final_mask.npz`, bit-packed, readable with numpy alone).
"""

from __future__ import annotations

import dataclasses
import io
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from orchestrator.tracking.client import Target, children, client, find_run, log_batch, version
from orchestrator.workflows import Rows, Workflow
from trainables.config import Config, config_hash, dense_hash, to_dict
from trainables.layout import RunLayout


@dataclass
class TrialRecord:
    """Everything a trial's child run shows, as of its latest commit."""

    trial_id: str
    cfg: Config
    overrides: Mapping[str, Any]
    workflow: Workflow
    tables: Rows = field(default_factory=dict)  # its tables' rows, by file name
    layers: dict[int, dict[str, tuple[int, int]]] = field(default_factory=dict)  # level -> layer -> (kept, total)
    final_mask: Mapping[str, tuple[tuple[int, ...], Any]] | None = None  # the bit-packed mask state
    status: str | None = None  # FINISHED / FAILED / KILLED once the trial stopped
    tags: dict[str, str] = field(default_factory=dict)  # more tags for its run (where its mask came from)

    @property
    def progress(self) -> int:
        return self.workflow.progress(self.tables)

    @property
    def run_name(self) -> str:
        swept = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in self.overrides.items())
        return f"{self.trial_id} ({swept})" if swept else self.trial_id


def flat_params(node: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as MLflow params: dotted keys, string values (lists as JSON)."""
    from orchestrator.spec import flatten

    return {k: json.dumps(v) if isinstance(v, (list, tuple)) else str(v) for k, v in flatten(node, prefix).items()}


def sweep_params(spec) -> dict[str, str]:
    """The parent run's params: the kind, the search, the swept values and the base config."""
    swept = {f"space.{key}": json.dumps(list(d.values)) if d.kind == "grid" else f"{d.kind}{list(d.values)}"
             for key, d in spec.space}
    if spec.cases:
        swept["cases"] = json.dumps([dict(c) for c in spec.cases])[:6000]
    search = {f"search.{k}": str(v) for k, v in dataclasses.asdict(spec.search).items()}
    return {"kind": spec.kind, **search, **swept, **flat_params(to_dict(spec.base), "base.")}


def _sparsity_csv(layers: Mapping[int, Mapping[str, tuple[int, int]]]) -> str:
    lines = ["level,layer,kept,total,remaining"]
    for level in sorted(layers):
        lines += [f"{level},{name},{kept},{total},{kept / total:.6f}" for name, (kept, total) in layers[level].items()]
    return "\n".join(lines) + "\n"


def _mask_npz(mask: Mapping[str, tuple[tuple[int, ...], Any]]) -> bytes:
    arrays = {}
    for name, (shape, packed) in mask.items():
        arrays[f"{name}.bits"] = np.asarray(packed)
        arrays[f"{name}.shape"] = np.asarray(shape, dtype=np.int64)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def read_masks(run_dir: Path, levels: Sequence[int]) -> dict[int, Mapping[str, Any]]:
    """level -> its bit-packed mask state, for the levels an IMP run folder has."""
    import torch

    layout = RunLayout(run_dir)
    return {level: torch.load(layout.mask(level), weights_only=True) for level in levels if layout.mask(level).exists()}


def add_masks(record: TrialRecord, masks: Mapping[int, Mapping[str, Any]]) -> None:
    for level, state in masks.items():
        record.layers[level] = {name: (int(np.unpackbits(np.asarray(packed), count=int(np.prod(shape))).sum()),
                                       int(np.prod(shape))) for name, (shape, packed) in state.items()}
    if masks:
        record.final_mask = masks[max(masks)]


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
    run = find_run(mlflow_client, target.experiment_id,
                   **{"lth.trial_id": record.trial_id, "mlflow.parentRunId": target.parent_run_id})
    if run is not None:
        return run.info.run_id, False
    cfg = record.cfg
    return mlflow_client.create_run(target.experiment_id, run_name=record.run_name, tags={
        "mlflow.parentRunId": target.parent_run_id, "lth.kind": "trial", "lth.sweep": target.sweep,
        "lth.sweep_id": target.sweep_id, "lth.trial_id": record.trial_id, "lth.config_hash": config_hash(cfg),
        "lth.dense_hash": dense_hash(cfg), "lth.arch": cfg.model.arch, "lth.dataset": cfg.data.dataset,
        "lth.overrides": json.dumps(dict(record.overrides), sort_keys=True), "lth.version": version(),
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
        wanted = record.workflow.mlflow_metrics(record.tables)
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
            _log_files(mlflow_client, run_id, record)
            state.artifact_progress = record.progress
        log_batch(mlflow_client, run_id, missing, params, {"lth.progress": str(record.progress)})
        state.params |= set(params)
        state.logged |= {(m.key, m.step) for m in missing}
        if record.status is not None and record.status != state.status:
            mlflow_client.set_terminated(run_id, record.status)
            state.status = record.status
    except Exception:
        state.forget()
        raise


def _log_files(mlflow_client, run_id: str, record: TrialRecord) -> None:
    files = record.workflow.mlflow_files(record.tables, record.run_name)
    if record.layers:
        files["sparsity.csv"] = _sparsity_csv(record.layers).encode()
    if record.final_mask is not None:
        files["final_mask.npz"] = _mask_npz(record.final_mask)
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in files.items():
            (Path(tmp) / name).write_bytes(content)
        mlflow_client.log_artifacts(run_id, tmp)


def sync_sweep(target: Target, tables: Mapping[str, Any], flow: Workflow,
               trial_config: Callable[[Mapping[str, Any]], Config], statuses: Mapping[str, str],
               masks: Callable[[str, Config], Mapping[int, Any]], files: Sequence[Path]) -> int:
    """Bring every child run level with the sweep's tables (file name -> table; `statuses`: trial id ->
    final MLflow status; `masks(trial id, config)`: the trial's stored masks) and give the parent the
    tables (`files`) and its status. Runs already level are only looked at. Returns the number of child
    runs it had to update."""
    mlflow_client = client(target.uri)
    runs = children(mlflow_client, target)
    by_trial: dict[str, Rows] = {}
    for name, table in tables.items():
        for row in table.to_pylist():
            by_trial.setdefault(row["trial_id"], {}).setdefault(name, []).append(row)
    updated = 0
    for trial_id, rows in sorted(by_trial.items()):
        overrides = json.loads(next(iter(rows.values()))[0]["overrides"])
        record = TrialRecord(trial_id, trial_config(overrides), overrides, flow, rows, status=statuses.get(trial_id))
        run = runs.get(trial_id)
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


def sync_folder(spec, target: Target, tables: Mapping[str, Any], statuses: Mapping[str, str],
                trials: Mapping[str, Any]) -> int | None:
    """`sync_sweep` from a sweep folder (masks from its `trials`' checkpoints, as `sweep_folder.collect` read
    them); None, with the fix printed, if MLflow cannot be reached."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    flow = spec.workflow

    def masks(trial_id: str, cfg: Config) -> dict[int, Any]:
        trial = trials.get(trial_id)
        if trial is None or trial.checkpoint is None:
            return {}
        levels = flow.mask_levels(cfg)
        if isinstance(trial.fs, pafs.LocalFileSystem):
            return read_masks(Path(trial.checkpoint) / flow.masks_dir, levels)
        with tempfile.TemporaryDirectory() as tmp:
            pafs.copy_files(trial.checkpoint, tmp, source_filesystem=trial.fs)
            return read_masks(Path(tmp) / flow.masks_dir, levels)

    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for name, table in tables.items():
            files.append(Path(tmp) / name)
            pq.write_table(table, files[-1])
        try:
            return sync_sweep(target, tables, flow, spec.base.with_updates, statuses, masks, files)
        except Exception as exc:  # noqa: BLE001 - MLflow is a view; Parquet holds the results
            print(f"MLflow: could not bring {target.uri} level with the results ({type(exc).__name__}: "
                  f"{str(exc)[:200]}); they are all in {spec.folder}. Once MLflow is reachable: "
                  f"lth mlflow sync {spec.folder}", flush=True)
            return None


def snapshot(record: TrialRecord) -> TrialRecord:
    return dataclasses.replace(record, tables=dict(record.tables), layers=dict(record.layers))
