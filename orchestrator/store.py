"""A sweep's tables: `<sweep>/results.parquet`, one row per trial x level x variant, and for
stability sweeps `stability.parquet` and `stability_summary.parquet`.

The columns are a trial's own rows (`trainables.results`: identity, swept hyperparameters,
results, timestamps) behind the sweep's: its name and id, the trial's id and the dotted
overrides that made it. The driver is the tables' only writer: after every level (or
replicate) a trial checkpoints, the driver replaces that trial's rows with the checkpoint's and
rewrites the table atomically (a temporary file renamed over the old one), so readers, pandas,
DuckDB and polars included, always see a complete table. Trial checkpoints hold the same rows,
so `collect` can rebuild the tables from them (a resumed sweep does).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
import yaml

from orchestrator.dense_cache import filesystem
from trainables.config import Config, ConfigError, from_dict, to_dict
from trainables.masks import Mask
from trainables.results import LEVELS_SCHEMA, STABILITY_PATH_SCHEMA, STABILITY_SUMMARY_SCHEMA, write_atomic

RESULTS_FILE, PATH_FILE, SUMMARY_FILE = "results.parquet", "stability.parquet", "stability_summary.parquet"
SWEEP_FILE = "sweep.yaml"  # the resolved sweep, stored in its folder: all `lth sweep resume` needs
TRIAL_PREFIX = "trial_"  # a trial's folder in the sweep folder: trial_<Tune's trial id>
SWEEP_COLUMNS = [
    ("sweep", pa.string()),  # the sweep's name (its folder)
    ("sweep_id", pa.string()),  # unique per launch of a sweep file; kept by `lth sweep resume`
    ("trial_id", pa.string()),  # Ray Tune's trial id
    ("overrides", pa.string()),  # JSON: the dotted config keys this trial sets on the sweep's base
]
# The tables a trial's run directory holds (IMP runs: results; stability analyses: the other two),
# each gathered into a sweep table of the same name with the sweep columns in front.
RUN_TABLES = {RESULTS_FILE: LEVELS_SCHEMA, PATH_FILE: STABILITY_PATH_SCHEMA, SUMMARY_FILE: STABILITY_SUMMARY_SCHEMA}
SWEEP_SCHEMAS = {name: pa.schema([*SWEEP_COLUMNS, *schema]) for name, schema in RUN_TABLES.items()}
SWEEP_SCHEMA = SWEEP_SCHEMAS[RESULTS_FILE]


def write_table(table: pa.Table, directory: str, name: str) -> None:
    """Replace `directory/name` atomically: rename on a local disk; object stores publish a whole object."""
    fs, root = filesystem(directory)
    if isinstance(fs, pafs.LocalFileSystem):
        write_atomic(table, Path(root) / name)
    else:
        with fs.open_output_stream(f"{root}/{name}") as f:
            pq.write_table(table, f)


def read_results(directory: str, name: str = RESULTS_FILE) -> pa.Table:
    """One of the sweep's tables (empty if it has none yet)."""
    fs, root = filesystem(directory)
    try:
        with fs.open_input_file(f"{root}/{name}") as f:
            return pq.read_table(f, schema=SWEEP_SCHEMAS[name])
    except FileNotFoundError:
        return SWEEP_SCHEMAS[name].empty_table()


def read_json(directory: str, name: str) -> dict[str, Any] | None:
    """A JSON file in a sweep folder (sweep.json), or None if there is none."""
    fs, root = filesystem(directory)
    try:
        with fs.open_input_stream(f"{root}/{name}") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None


def checkpoint_rows(fs: pafs.FileSystem, path: str, name: str = RESULTS_FILE) -> pa.Table | None:
    """One of a trial checkpoint's tables, or None if it has none that can be read."""
    try:
        with fs.open_input_file(f"{path}/{name}") as f:
            return pq.read_table(f, schema=RUN_TABLES[name])
    except (OSError, ValueError, pa.ArrowInvalid):
        return None


def sweep_rows(trial_rows: pa.Table, name: str, sweep: str, sweep_id: str, trial_id: str,
               overrides: Mapping[str, Any]) -> pa.Table:
    n = trial_rows.num_rows
    columns = {"sweep": [sweep] * n, "sweep_id": [sweep_id] * n, "trial_id": [trial_id] * n,
               "overrides": [json.dumps(dict(overrides), sort_keys=True)] * n}
    return pa.Table.from_pydict({**columns, **{f.name: trial_rows.column(f.name) for f in RUN_TABLES[name]}},
                                schema=SWEEP_SCHEMAS[name])


class SweepTable:
    """The driver's copy of one of the sweep's tables (`name`), rewritten whole after every update."""

    def __init__(self, directory: str, sweep: str, sweep_id: str, name: str = RESULTS_FILE):
        self.directory, self.sweep, self.sweep_id, self.name = directory, sweep, sweep_id, name
        existing = read_results(directory, name)
        self.trials: dict[str, pa.Table] = {
            t: existing.filter(pc.equal(existing.column("trial_id"), t))
            for t in existing.column("trial_id").unique().to_pylist()}

    def set(self, trial_id: str, overrides: Mapping[str, Any], trial_rows: pa.Table) -> bool:
        """Set a trial's rows; False if they add nothing (a trial only ever adds levels)."""
        if trial_id in self.trials and self.trials[trial_id].num_rows >= trial_rows.num_rows:
            return False
        self.trials[trial_id] = sweep_rows(trial_rows, self.name, self.sweep, self.sweep_id, trial_id, overrides)
        return True

    def save(self) -> None:
        write_table(self.table(), self.directory, self.name)

    def table(self) -> pa.Table:
        tables = [self.trials[t] for t in sorted(self.trials)]
        return pa.concat_tables(tables) if tables else SWEEP_SCHEMAS[self.name].empty_table()


def sweep_tables(directory: str, sweep: str, sweep_id: str, kind: str) -> dict[str, SweepTable]:
    """The tables a sweep of `kind` keeps, by file name."""
    names = [RESULTS_FILE] if kind == "imp" else [n for n in RUN_TABLES if n != RESULTS_FILE]
    return {name: SweepTable(directory, sweep, sweep_id, name) for name in names}


def record(tables: Mapping[str, SweepTable], trial_id: str, overrides: Mapping[str, Any],
           rows: Callable[[str], pa.Table | None], save: bool = True) -> set[str]:
    """Give each table the trial's rows (`rows(name)`); returns the names of those that changed, which
    are rewritten unless `save` is false."""
    changed = {name for name, table in tables.items()
               if (found := rows(name)) is not None and table.set(trial_id, overrides, found)}
    for name in changed if save else ():
        tables[name].save()
    return changed


@dataclass(frozen=True)
class StoredTrial:
    """A trial folder in a sweep folder: its Tune config and its most advanced checkpoint."""

    trial_id: str
    params: dict[str, Any]  # the Tune trial config (params.json)
    fs: pafs.FileSystem
    checkpoint: str | None  # the checkpoint with the most rows, if any

    def rows(self, name: str = RESULTS_FILE) -> pa.Table | None:
        return None if self.checkpoint is None else checkpoint_rows(self.fs, self.checkpoint, name)


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
        best, best_rows = None, 0
        for checkpoint in fs.get_file_info(pafs.FileSelector(trial.path)):
            if checkpoint.type == pafs.FileType.Directory and checkpoint.base_name.startswith("checkpoint_"):
                if (rows := progress(fs, checkpoint.path)) > best_rows:
                    best, best_rows = checkpoint.path, rows
        trial_id = trial.base_name[len(TRIAL_PREFIX):]
        out[trial_id] = StoredTrial(trial_id, params, fs, best)
    return out


def progress(fs: pafs.FileSystem, path: str) -> int:
    """Committed rows in a run directory, IMP levels of a stability analysis included: grows with every
    level or replicate, so the larger of two copies of a trial's directory is the more advanced."""
    total = 0
    for name in (RESULTS_FILE, f"imp/{RESULTS_FILE}", SUMMARY_FILE):
        try:
            with fs.open_input_file(f"{path}/{name}") as f:
                total += pq.read_metadata(f).num_rows
        except (OSError, ValueError, pa.ArrowInvalid):
            pass
    return total


def collect(tables: Mapping[str, SweepTable],
            overrides: Callable[[Mapping[str, Any]], Mapping[str, Any]]) -> dict[str, StoredTrial]:
    """Bring the tables level with the trials' checkpoints (a driver killed before it recorded a level).
    `overrides`: a Tune trial config -> the trial's dotted overrides. Returns the trials it read."""
    directory = next(iter(tables.values())).directory
    trials = stored_trials(directory)
    changed = set()
    for trial in trials.values():
        changed |= record(tables, trial.trial_id, overrides(trial.params), trial.rows, save=False)
    for name in changed:  # once per table, however many trials moved on
        tables[name].save()
    return trials


SEED_KEYS = ("seed", "train.data_seed")  # replicates: averaged over, never a setting of their own
SUMMARY_VARIANTS = ("dense", "ticket", "reinit", "random_mask")


def settings(df) -> list[str]:
    """Add a column per swept key (other than seeds) from `overrides`; returns their names."""
    overrides = df["overrides"].map(json.loads)
    keys = sorted({k for o in overrides for k in o} - set(SEED_KEYS))
    for key in keys:
        df[key] = overrides.map(lambda o: json.dumps(o[key]) if isinstance(o.get(key), list) else o.get(key))
    return keys


def clean(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """NaN (the std of one sample) as None; numpy scalars as Python numbers."""
    return [{k: None if isinstance(v, float) and v != v else v.item() if hasattr(v, "item") else v
             for k, v in row.items()} for row in rows]


def stability_summary(table: pa.Table) -> tuple[list[str], list[dict[str, Any]]]:
    """Per setting (swept keys other than seeds, e.g. k and level) and split: instability mean and std over
    the pairs of copies (replicates x seeds), the mean endpoint error and the fraction of stable pairs."""
    df = table.to_pandas()
    if df.empty:
        return [], []
    keys = settings(df)
    df["endpoint_error"] = (df["error_1"] + df["error_2"]) / 2
    grouped = df.groupby([*keys, "split"], dropna=False, sort=True).agg(
        level=("level", "first"), rewind_iter=("rewind_iter", "first"),
        weights_remaining=("weights_remaining", "mean"), pairs=("instability", "size"),
        instability_mean=("instability", "mean"), instability_std=("instability", "std"),
        endpoint_error=("endpoint_error", "mean"), stable_fraction=("stable", "mean"),
        threshold=("threshold", "first")).reset_index()
    return keys, clean(grouped.to_dict("records"))


def summary(table: pa.Table, column: str = "test_accuracy") -> tuple[list[str], list[dict[str, Any]]]:
    """Per setting (the swept keys other than seeds) and level: mean and std over seeds of each
    variant's `column` (`{variant}_mean`, `{variant}_std`; `dense_*` is level 0's). Level 0's dense
    network counts as the ticket at 100% of weights. Returns the setting keys and one row per
    (setting, level)."""
    df = table.to_pandas()
    if df.empty:
        return [], []
    keys = settings(df)
    dense = df[df["variant"] == "dense"].groupby(keys, dropna=False)[column].agg(["mean", "std"]) \
        if keys else df[df["variant"] == "dense"][column].agg(["mean", "std"])
    df["variant"] = df["variant"].where(df["variant"] != "dense", "ticket")
    grouped = df.groupby([*keys, "level", "variant"], dropna=False).agg(
        remaining=("weights_remaining", "mean"), mean=(column, "mean"), std=(column, "std"), n=(column, "size"))
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
    ordered = [row for _, row in sorted(rows.items(), key=lambda item: tuple(map(str, item[0][:-1])) + (item[0][-1],))]
    return keys, clean(ordered)


def _ticket_identity(cfg: Config) -> dict[str, Any]:
    """What decides an IMP run's masks: all but how many levels it runs, its controls, which weights it
    keeps, the stability section and the runtime (controls draw their own seeds: they never touch a ticket)."""
    raw = to_dict(cfg)
    del raw["runtime"], raw["stability"]
    raw["imp"] = {"rewind_iter": raw["imp"]["rewind_iter"]}
    return raw


def find_mask(directory: str, cfg: Config, level: int) -> tuple[str, Mask] | None:
    """(trial id, mask) of level `level` from a trial of the IMP sweep in `directory` that computes the
    same masks as `cfg`, or None if no trial there has it."""
    wanted = _ticket_identity(cfg)
    for trial in stored_trials(directory).values():
        if trial.checkpoint is None:
            continue
        try:
            with trial.fs.open_input_stream(f"{trial.checkpoint}/config.yaml") as f:
                stored = from_dict(yaml.safe_load(f.read()), f"{trial.checkpoint}/config.yaml")
            if _ticket_identity(stored) != wanted:
                continue
            with trial.fs.open_input_file(f"{trial.checkpoint}/checkpoints/level_{level:03d}/mask.pt") as f:
                state = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
        except (OSError, ValueError, ConfigError, yaml.YAMLError):
            continue  # not this trial: another config, or it has not reached `level`
        return trial.trial_id, Mask.from_state(state)
    return None
