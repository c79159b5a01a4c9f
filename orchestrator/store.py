"""A sweep's results table, `<sweep>/results.parquet`: one row per trial x level x variant.

The columns are a trial's own rows (`trainables.results.LEVELS_SCHEMA`: identity, swept
hyperparameters, results, timestamps) behind the sweep's: its name and id, the trial's id and
the dotted overrides that made it. The driver is the table's only writer: after every level a
trial checkpoints, the driver replaces that trial's rows with the checkpoint's and rewrites
the table atomically (a temporary file renamed over the old one), so readers, pandas, DuckDB
and polars included, always see a complete table. Trial checkpoints hold the same rows, so
`collect` can rebuild the table from them (a resumed sweep does).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from orchestrator.dense_cache import filesystem
from trainables.results import LEVELS_SCHEMA, write_atomic

RESULTS_FILE = "results.parquet"
TRIAL_PREFIX = "trial_"  # a trial's folder in the sweep folder: trial_<Tune's trial id>
SWEEP_SCHEMA = pa.schema([
    ("sweep", pa.string()),  # the sweep's name (its folder)
    ("sweep_id", pa.string()),  # unique per launch of a sweep file; kept by `lth sweep resume`
    ("trial_id", pa.string()),  # Ray Tune's trial id
    ("overrides", pa.string()),  # JSON: the dotted config keys this trial sets on the sweep's base
    *LEVELS_SCHEMA,
])


def write_table(table: pa.Table, directory: str, name: str) -> None:
    """Replace `directory/name` atomically: rename on a local disk; object stores publish a whole object."""
    fs, root = filesystem(directory)
    if isinstance(fs, pafs.LocalFileSystem):
        write_atomic(table, Path(root) / name)
    else:
        with fs.open_output_stream(f"{root}/{name}") as f:
            pq.write_table(table, f)


def read_results(directory: str) -> pa.Table:
    """The sweep's table (empty if it has none yet)."""
    fs, root = filesystem(directory)
    try:
        with fs.open_input_file(f"{root}/{RESULTS_FILE}") as f:
            return pq.read_table(f, schema=SWEEP_SCHEMA)
    except FileNotFoundError:
        return SWEEP_SCHEMA.empty_table()


def checkpoint_rows(fs: pafs.FileSystem, path: str) -> pa.Table | None:
    """A trial checkpoint's per-level rows, or None if it has none that can be read."""
    try:
        with fs.open_input_file(f"{path}/results.parquet") as f:
            return pq.read_table(f, schema=LEVELS_SCHEMA)
    except (OSError, ValueError, pa.ArrowInvalid):
        return None


def sweep_rows(trial_rows: pa.Table, sweep: str, sweep_id: str, trial_id: str,
               overrides: Mapping[str, Any]) -> pa.Table:
    n = trial_rows.num_rows
    columns = {"sweep": [sweep] * n, "sweep_id": [sweep_id] * n, "trial_id": [trial_id] * n,
               "overrides": [json.dumps(dict(overrides), sort_keys=True)] * n}
    return pa.Table.from_pydict({**columns, **{f.name: trial_rows.column(f.name) for f in LEVELS_SCHEMA}},
                                schema=SWEEP_SCHEMA)


class SweepTable:
    """The driver's copy of the table, rewritten whole after every update."""

    def __init__(self, directory: str, sweep: str, sweep_id: str):
        self.directory, self.sweep, self.sweep_id = directory, sweep, sweep_id
        existing = read_results(directory)
        self.trials: dict[str, pa.Table] = {
            t: existing.filter(pc.equal(existing.column("trial_id"), t))
            for t in existing.column("trial_id").unique().to_pylist()}

    def set(self, trial_id: str, overrides: Mapping[str, Any], trial_rows: pa.Table) -> bool:
        """Set a trial's rows; False if they add nothing (a trial only ever adds levels)."""
        if trial_id in self.trials and self.trials[trial_id].num_rows >= trial_rows.num_rows:
            return False
        self.trials[trial_id] = sweep_rows(trial_rows, self.sweep, self.sweep_id, trial_id, overrides)
        return True

    def save(self) -> None:
        write_table(self.table(), self.directory, RESULTS_FILE)

    def table(self) -> pa.Table:
        tables = [self.trials[t] for t in sorted(self.trials)]
        return pa.concat_tables(tables) if tables else SWEEP_SCHEMA.empty_table()


@dataclass(frozen=True)
class StoredTrial:
    """A trial folder in a sweep folder: its Tune config and its most advanced checkpoint."""

    trial_id: str
    params: dict[str, Any]  # the Tune trial config (params.json)
    fs: pafs.FileSystem
    checkpoint: str | None  # the checkpoint with the most rows, if any

    def rows(self) -> pa.Table | None:
        return None if self.checkpoint is None else checkpoint_rows(self.fs, self.checkpoint)


def stored_trials(directory: str) -> dict[str, StoredTrial]:
    """trial id -> what its folder holds, for every trial folder of a sweep."""
    fs, root = filesystem(directory)
    out = {}
    for trial in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
        if trial.type != pafs.FileType.Directory or not trial.base_name.startswith(TRIAL_PREFIX):
            continue
        try:
            with fs.open_input_stream(f"{trial.path}/params.json") as f:
                params = json.loads(f.read())
        except (OSError, ValueError):
            continue  # Tune writes params.json first: a folder without one holds nothing yet
        best, best_rows = None, -1
        for checkpoint in fs.get_file_info(pafs.FileSelector(trial.path)):
            if checkpoint.type == pafs.FileType.Directory and checkpoint.base_name.startswith("checkpoint_"):
                rows = checkpoint_rows(fs, checkpoint.path)
                if rows is not None and rows.num_rows > best_rows:
                    best, best_rows = checkpoint.path, rows.num_rows
        trial_id = trial.base_name[len(TRIAL_PREFIX):]
        out[trial_id] = StoredTrial(trial_id, params, fs, best)
    return out


def collect(table: SweepTable, overrides: Callable[[Mapping[str, Any]], Mapping[str, Any]]) -> None:
    """Bring the table level with the trials' checkpoints (a driver killed before it recorded a level).
    `overrides`: a Tune trial config -> the trial's dotted overrides."""
    changed = False
    for trial in stored_trials(table.directory).values():
        if (rows := trial.rows()) is not None:
            changed |= table.set(trial.trial_id, overrides(trial.params), rows)
    if changed:
        table.save()


SEED_KEYS = ("seed", "train.data_seed")  # replicates: averaged over, never a setting of their own
SUMMARY_VARIANTS = ("dense", "ticket", "reinit", "random_mask")


def summary(table: pa.Table) -> tuple[list[str], list[dict[str, Any]]]:
    """Per setting (the swept keys other than seeds) and level: mean and std over seeds of each
    variant's test accuracy. Level 0's dense network counts as the ticket at 100% of weights.
    Returns the setting keys and one row per (setting, level)."""
    df = table.to_pandas()
    if df.empty:
        return [], []
    overrides = df["overrides"].map(json.loads)
    keys = sorted({k for o in overrides for k in o} - set(SEED_KEYS))
    for key in keys:
        df[key] = overrides.map(lambda o: json.dumps(o[key]) if isinstance(o.get(key), list) else o.get(key))
    dense = df[df["variant"] == "dense"].groupby(keys, dropna=False)["test_accuracy"].agg(["mean", "std"]) \
        if keys else df[df["variant"] == "dense"]["test_accuracy"].agg(["mean", "std"])
    df["variant"] = df["variant"].where(df["variant"] != "dense", "ticket")
    grouped = df.groupby([*keys, "level", "variant"], dropna=False).agg(
        remaining=("weights_remaining", "mean"), mean=("test_accuracy", "mean"), std=("test_accuracy", "std"),
        n=("test_accuracy", "size"))
    rows: dict[tuple, dict[str, Any]] = {}
    for index, values in grouped.iterrows():
        *setting, level, variant = index
        row = rows.setdefault((*setting, level), {**dict(zip(keys, setting)), "level": int(level),
                                                  "weights_remaining": values["remaining"], "seeds": 0})
        row[f"{variant}_mean"], row[f"{variant}_std"] = values["mean"], values["std"]
        if variant == "ticket":
            row["seeds"] = int(values["n"])
    for (*setting, _), row in rows.items():
        ref = dense.loc[tuple(setting) if len(setting) > 1 else setting[0]] if keys else dense
        row["dense_mean"], row["dense_std"] = ref["mean"], ref["std"]
    out = [{k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}  # NaN std: one seed
           for _, row in sorted(rows.items(), key=lambda item: tuple(map(str, item[0][:-1])) + (item[0][-1],))]
    return keys, out
