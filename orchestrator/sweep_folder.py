"""A sweep folder, `<storage>/<name>/`: every path and file name in it, and reading and writing them.

    sweep.yaml            the sweep file with its base config resolved: all `lth sweep resume` needs
    sweep.json            the sweep's id and MLflow location, fixed at its first launch
    results/, ...         the sweep's tables as Parquet datasets: every trial's rows, the sweep's columns in
                          front, in files `<trial id>-<rows so far, 6 digits>.parquet`
    results.parquet, ...  each table compacted into one file, when the sweep ends (or `lth results --compact`)
    trial_<id>/           Tune's trial folder: params.json, checkpoint_NNNNNN/ (the run folder as of a commit);
                          orchestrator/trial_folder.py reads and writes them
    experiment_state-*    Tune's own state

The driver is the tables' only writer: after every commit a trial checkpoints, the driver writes the rows the
commit added as one new file of that trial's (a temporary file renamed on a local disk; one PUT on object
stores), never rewriting one, so its work per commit does not grow with the sweep and readers, pandas,
DuckDB and polars included, always see complete files, each row once. A compacted file records the dataset
extent it holds (each trial's rows); readers take it and the dataset's later files. The driver rewrites it
from the rows it holds every so many files (at least as many as there are trials), so that mid-sweep readers
scan few small files, at a cost per commit that stays flat. A sweep folder from before the datasets has
only the single file: it reads as it is, and a resumed driver starts its dataset from it. Trial checkpoints
hold the same rows, so `collect` can rebuild the tables from them.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import yaml

from orchestrator import fs
from orchestrator.trial_folder import PARAMS, latest_checkpoint
from orchestrator.tracking.client import resolve_uri
from orchestrator.workflows import Workflow, table_schemas
from trainables.config import ConfigError, as_made, to_dict

if TYPE_CHECKING:
    from orchestrator.spec import SweepSpec

SWEEP_YAML = "sweep.yaml"
SWEEP_JSON = "sweep.json"
TRIAL_PREFIX = "trial_"  # a trial's folder: trial_<Tune's trial id>
SWEEP_COLUMNS = [
    ("sweep", pa.string()),  # the sweep's name (its folder)
    ("sweep_id", pa.string()),  # unique per launch of a sweep file; kept by `lth sweep resume`
    ("trial_id", pa.string()),  # Ray Tune's trial id
    ("overrides", pa.string()),  # JSON: the dotted config keys this trial sets on the sweep's base
]
COMPACTED_FROM = "lth.compacted_from"  # a compacted table's metadata: {trial id: rows} of the dataset it holds


def sweep_schema(name: str) -> pa.Schema:
    return pa.schema([*SWEEP_COLUMNS, *table_schemas()[name]])


def dataset_dir(name: str) -> str:
    """The folder of a table's dataset: results.parquet -> results/."""
    return name.removesuffix(".parquet")


def _file_name(trial_id: str, rows: int) -> str:
    return f"{trial_id}-{rows:06d}.parquet"


def _parse(base_name: str) -> tuple[str, int] | None:
    """(trial id, its rows up to and including this file) from a dataset file's name; None for other files
    (a writer's temporary `.*.tmp`)."""
    if base_name.startswith((".", "_")) or not base_name.endswith(".parquet"):
        return None
    trial_id, _, rows = base_name.removesuffix(".parquet").rpartition("-")
    return (trial_id, int(rows)) if trial_id and rows.isdigit() else None


def dataset_files(directory: str, name: str) -> dict[str, list[tuple[int, str]]]:
    """trial id -> [(its rows up to and including the file, path)] of a table's dataset, in row order."""
    filesystem, root = fs.filesystem(directory)
    out: dict[str, list[tuple[int, str]]] = {}
    for info in filesystem.get_file_info(pafs.FileSelector(f"{root}/{dataset_dir(name)}", allow_not_found=True)):
        if info.type == pafs.FileType.File and (parsed := _parse(info.base_name)) is not None:
            out.setdefault(parsed[0], []).append((parsed[1], info.path))
    return {t: sorted(files) for t, files in sorted(out.items())}


def _extent(files: Mapping[str, list[tuple[int, str]]]) -> dict[str, int]:
    """trial id -> rows the dataset holds: what a compacted table records it was made from."""
    return {t: found[-1][0] for t, found in files.items()}


def _compacted_from(filesystem: pafs.FileSystem, path: str) -> dict[str, int] | None:
    """The dataset extent a compacted table was made from; None for a table from before the dataset (or none)."""
    try:
        with filesystem.open_input_file(path) as f:
            found = (pq.read_metadata(f).metadata or {}).get(COMPACTED_FROM.encode())
    except (OSError, ValueError, pa.ArrowInvalid):
        return None
    return None if found is None else json.loads(found)


def read_table(directory: str, name: str) -> pa.Table:
    """One of the sweep's tables (empty if it has none yet): its compacted file and the dataset's files that
    came after it, each trial's rows in order, the trials in id order; a sweep folder from before the dataset
    has its single file alone."""
    filesystem, root = fs.filesystem(directory)
    schema, files = sweep_schema(name), dataset_files(directory, name)
    extent = _compacted_from(filesystem, f"{root}/{name}")
    base = fs.read_table(filesystem, f"{root}/{name}", schema) if extent is not None or not files else None
    if not files:
        return schema.empty_table() if base is None else base.replace_schema_metadata(None)
    if base is None:
        base, extent = schema.empty_table(), {}
    paths = [path for t, found in files.items() for rows, path in found if rows > extent.get(t, 0)]
    if not paths:
        return base.replace_schema_metadata(None)
    try:  # many small files: one multi-threaded scan, in the order given
        newer = ds.dataset(paths, schema=schema, format="parquet", filesystem=filesystem).to_table()
    except (OSError, pa.ArrowInvalid):  # a file no writer of ours leaves (cut short by another tool): skip it
        newer = pa.concat_tables([schema.empty_table(), *filter(None, (fs.read_table(filesystem, path, schema)
                                                                       for path in paths))])
    return by_trial(pa.concat_tables([base.replace_schema_metadata(None), newer]))


def by_trial(table: pa.Table) -> pa.Table:
    """The trials in id order, each trial's rows as they were (a stable sort)."""
    return table.take(pc.sort_indices(table, sort_keys=[("trial_id", "ascending")]))


def read_tables(directory: str) -> dict[str, pa.Table]:
    """Every table a sweep folder can hold, by file name (empty where it has none)."""
    return {name: read_table(directory, name) for name in table_schemas()}


def compact(directory: str, name: str) -> pa.Table:
    """Write the table as one file, `<name>` beside its dataset, recording the dataset extent it holds (readers
    then read only the dataset's later files); returns the table. Nothing is written for a sweep folder from
    before the dataset, whose single file is the whole table."""
    filesystem, root = fs.filesystem(directory)
    files = dataset_files(directory, name)  # listed before reading: a later file is not in the extent
    table = read_table(directory, name)
    if files and _compacted_from(filesystem, f"{root}/{name}") != _extent(files):
        write_compacted(table, directory, name, _extent(files))
    return table


def write_compacted(table: pa.Table, directory: str, name: str, extent: Mapping[str, int]) -> None:
    fs.write_table(table.replace_schema_metadata({COMPACTED_FROM: json.dumps(dict(extent))}), directory, name)


def sweep_rows(trial_rows: pa.Table, name: str, sweep: str, sweep_id: str, trial_id: str,
               overrides: Mapping[str, Any]) -> pa.Table:
    n = trial_rows.num_rows
    schema = sweep_schema(name)
    columns = {"sweep": [sweep] * n, "sweep_id": [sweep_id] * n, "trial_id": [trial_id] * n,
               "overrides": [json.dumps(dict(overrides), sort_keys=True)] * n}
    return pa.Table.from_pydict({**columns, **{f.name: trial_rows.column(f.name) for f in table_schemas()[name]}},
                                schema=schema)


class SweepTable:
    """The driver's record of one of the sweep's tables (`name`). A trial's new rows go to a file of their own,
    written once; now and then (every `compact_every` files, at least one per trial) the driver also writes the
    table compacted from what it holds, so that readers mid-sweep read one file and few small ones. The
    driver's work per commit is the same in a sweep of ten trials or ten thousand."""

    compact_every = 256

    def __init__(self, directory: str, sweep: str, sweep_id: str, name: str):
        self.directory, self.sweep, self.sweep_id, self.name = directory, sweep, sweep_id, name
        self.rows = _extent(dataset_files(directory, name))  # trial id -> rows recorded
        self.pending: dict[str, pa.Table] = {}  # trial id -> rows set but not yet written
        self.held = read_table(directory, name)  # every written row, as readers see them
        self.recent: list[pa.Table] = []  # files written since `held` was last compacted
        if not self.rows:  # a sweep folder from before the dataset: its single table becomes the dataset's start
            for t in self.held.column("trial_id").unique().to_pylist():
                self.pending[t] = self.held.filter(pc.equal(self.held.column("trial_id"), t))
                self.rows[t] = self.pending[t].num_rows
            self.save()
            self.recent = []

    def set(self, trial_id: str, overrides: Mapping[str, Any], trial_rows: pa.Table) -> bool:
        """Set a trial's rows; False if they add nothing (a trial only ever adds rows)."""
        have = self.rows.get(trial_id, 0)
        if trial_rows.num_rows <= have:
            return False
        new = sweep_rows(trial_rows.slice(have), self.name, self.sweep, self.sweep_id, trial_id, overrides)
        self.pending[trial_id] = pa.concat_tables([self.pending[trial_id], new]) if trial_id in self.pending else new
        self.rows[trial_id] = trial_rows.num_rows
        return True

    def save(self) -> None:
        """Write each trial's rows set since the last save as one file, named by the trial's rows up to it."""
        for trial_id in list(self.pending):
            fs.write_table(self.pending[trial_id], f"{self.directory.rstrip('/')}/{dataset_dir(self.name)}",
                           _file_name(trial_id, self.rows[trial_id]))
            self.recent.append(self.pending.pop(trial_id))  # only once written: a failed write is retried
        if len(self.recent) >= max(self.compact_every, len(self.rows)):  # amortised: rows held / rows written
            self.held = by_trial(pa.concat_tables([self.held, *self.recent]))
            self.recent = []
            write_compacted(self.held, self.directory, self.name, self.rows)  # nothing is pending here

    def table(self) -> pa.Table:
        self.save()
        return read_table(self.directory, self.name)


def sweep_tables(directory: str, sweep: str, sweep_id: str, flow: Workflow) -> dict[str, SweepTable]:
    """The tables a sweep of this workflow keeps, by file name."""
    return {name: SweepTable(directory, sweep, sweep_id, name) for name in flow.sweep_tables}


def record(tables: Mapping[str, SweepTable], trial_id: str, overrides: Mapping[str, Any],
           rows: Callable[[str], pa.Table | None], save: bool = True) -> set[str]:
    """Give each table the trial's rows (`rows(name)`); returns the names of those that changed, which
    are rewritten unless `save` is false."""
    changed = {name for name, table in tables.items()
               if (found := rows(name)) is not None and table.set(trial_id, overrides, found)}
    for name in changed if save else ():
        tables[name].save()
    return changed


# ---------------------------------------------------------------------------------------------
# trial folders and their checkpoints


@dataclass(frozen=True)
class StoredTrial:
    """A trial folder in a sweep folder: its Tune config and its most advanced complete checkpoint."""

    trial_id: str
    params: dict[str, Any]  # the Tune trial config (params.json)
    fs: pafs.FileSystem
    checkpoint: str | None

    def rows(self, name: str, schema: pa.Schema) -> pa.Table | None:
        return None if self.checkpoint is None else fs.read_table(self.fs, f"{self.checkpoint}/{name}", schema)


def stored_trials(directory: str, commit_tables: Sequence[str]) -> dict[str, StoredTrial]:
    """trial id -> what its folder holds, for every trial folder of a sweep."""
    manifests = uses_manifests(directory)
    filesystem, root = fs.filesystem(directory)
    out = {}
    for trial in filesystem.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
        if trial.type != pafs.FileType.Directory or not trial.base_name.startswith(TRIAL_PREFIX):
            continue
        try:
            with filesystem.open_input_stream(f"{trial.path}/{PARAMS}") as f:
                params = json.loads(f.read())
        except (OSError, ValueError):
            continue  # written before the first checkpoint: a folder without one holds nothing yet
        trial_id = trial.base_name[len(TRIAL_PREFIX):]
        checkpoint = latest_checkpoint(filesystem, trial.path, commit_tables, manifests)[0]
        out[trial_id] = StoredTrial(trial_id, params, filesystem, checkpoint)
    return out


def collect(tables: Mapping[str, SweepTable], flow: Workflow,
            overrides: Callable[[Mapping[str, Any]], Mapping[str, Any]]) -> dict[str, StoredTrial]:
    """Bring the tables level with the trials' checkpoints (a driver killed before it recorded a commit).
    `overrides`: a Tune trial config -> the trial's dotted overrides. Returns the trials it read."""
    directory = next(iter(tables.values())).directory
    trials = stored_trials(directory, flow.commit_tables)
    changed = set()
    for trial in trials.values():
        changed |= record(tables, trial.trial_id, overrides(trial.params),
                          lambda name: trial.rows(name, flow.run_tables[name]), save=False)
    for name in changed:  # once per table, however many trials moved on
        tables[name].save()
    return trials


# ---------------------------------------------------------------------------------------------
# sweep.yaml and sweep.json


def header_comment(text: str) -> str:
    """A sweep file's opening comment block (its launch command and what it reproduces), '#' removed."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[2:] if line.startswith("# ") else line[1:])
    return "\n".join(lines)


def save_spec(spec: SweepSpec) -> None:
    """Store the sweep, its base config fully resolved, in the sweep folder."""
    raw = yaml.safe_load(spec.text)
    raw["base"] = to_dict(spec.base)
    raw["resources"] = dataclasses.asdict(spec.resources)  # as run: `--pack auto` may have changed them
    header = "".join(f"# {line}\n" for line in header_comment(spec.text).splitlines())
    text = f"# resolved copy of {spec.source}\n{header}" + yaml.safe_dump(raw, sort_keys=False)
    fs.write_bytes(spec.folder, SWEEP_YAML, text.encode())


def load_spec(directory: str) -> SweepSpec:
    """The sweep stored in a sweep folder, with its storage and name as found; a protocol key its resolved base
    config lacks takes the value the sweep was made under (`trainables.config.PROTOCOL_CHANGES`)."""
    from orchestrator.spec import parse_sweep

    data = fs.read_bytes(directory, SWEEP_YAML)
    if data is None:
        raise ConfigError(directory, [f"no {SWEEP_YAML} here: not a sweep folder made by `lth sweep run` "
                                      "(it is <storage>/<sweep name>)"])
    text = data.decode()
    raw = yaml.safe_load(text)
    if isinstance(raw, dict) and isinstance(raw.get("base"), dict):  # resolved: a key it lacks did not exist then
        raw["base"] = as_made(raw["base"])[0]
    spec = parse_sweep(raw, f"{fs.filesystem(directory)[1]}/{SWEEP_YAML}", text)
    return dataclasses.replace(spec, storage=fs.parent(directory), name=fs.filesystem(directory)[1].rsplit("/")[-1])


def header(directory: str) -> str:
    """The opening comment of the sweep file a folder was made from ('' if none)."""
    data = fs.read_bytes(directory, SWEEP_YAML)
    return "" if data is None else header_comment(data.decode())


def exists(directory: str) -> bool:
    return fs.exists(directory, SWEEP_YAML)


def sweep_record(spec: SweepSpec, tracking_uri: str | None = None) -> dict[str, Any]:
    """The sweep's id and MLflow location (`sweep.json`), fixed at its first launch; a `tracking_uri`
    given later (to resume against a server) replaces the stored one."""
    stored = read_record(spec.folder)
    if stored is None or tracking_uri:
        uri = resolve_uri(tracking_uri, spec.tracking.uri, spec.storage) if spec.tracking.enabled else None
        stored = {"sweep_id": (stored or {}).get("sweep_id") or uuid.uuid4().hex[:12], "tracking_uri": uri,
                  "experiment": spec.tracking.experiment or spec.name,
                  "manifests": (stored or {"manifests": True}).get("manifests", False)}
        write_record(spec.folder, stored)
    return stored


def read_record(directory: str) -> dict[str, Any] | None:
    """sweep.json: {sweep_id, tracking_uri, experiment, manifests}, or None for a folder without one."""
    return fs.read_json(directory, SWEEP_JSON)


def uses_manifests(directory: str) -> bool:
    """Whether the sweep's checkpoints carry a manifest (every sweep launched since they do)."""
    return bool((read_record(directory) or {}).get("manifests"))


def write_record(directory: str, record: Mapping[str, Any]) -> None:
    fs.write_bytes(directory, SWEEP_JSON, json.dumps(dict(record), indent=2).encode())
