"""Kinds of experiment (`kind:` in a sweep file): one workflow each, registered once, listed by `lth list kinds`.

A workflow is everything the orchestrator knows about one kind of trial: the run it makes (a
`trainables` run class), the tables the run writes and which of them are gathered into the sweep
folder, what one commit adds (a level, a replicate), the metrics a trial reports to Tune (each name
defined once), what its MLflow run shows, its progress line, how many trainings it costs, and where
its masks are. The trial, the tuner, the sweep folder, tracking, the spec and the CLI ask the
workflow; none of them branches on the kind's name.

Workflow modules import neither torch nor Ray at import time (a dry run and a sweep file's
validation stay light); their runs load on first use. Adding a kind is a module here and one
`KINDS.add` line below.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import pyarrow as pa

from trainables.config import Config, did_you_mean
from trainables.registry import Registry

if TYPE_CHECKING:
    from trainables.imp import Reporter

Rows = dict[str, list[dict[str, Any]]]  # a run's tables: file name (relative to the run folder) -> rows
MlflowMetrics = dict[tuple[str, int], tuple[float, int]]  # (key, step) -> (value, timestamp in ms)


class Workflow:
    """The base of every kind: declarations are class attributes, behaviour methods."""

    name: str
    description: str
    unit: str  # what one commit adds: "level", "replicate"
    run_tables: Mapping[str, pa.Schema]  # every table a run folder holds that the orchestrator reads
    sweep_tables: tuple[str, ...]  # those gathered into the sweep folder (with the sweep's columns in front)
    commit_tables: tuple[str, ...]  # those whose rows count a trial's progress
    masks_dir: str  # where a run folder keeps its IMP run's masks, relative ("" : the run itself)
    takes_masks_from: bool = False  # a sweep of this kind may name an IMP sweep whose masks it reuses

    def metrics(self) -> list[str]:
        """The names of the metrics a trial reports to Tune (the choices of `search.metric`)."""
        raise NotImplementedError

    def split_of(self, metric: str) -> str | None:
        """The data split a metric is computed on (train, val, test), or None (weights remaining)."""
        raise NotImplementedError

    def validation_twin(self, metric: str) -> str:
        """The metric to select on instead of test-split `metric`: the same quantity on the validation split."""
        raise NotImplementedError

    def renamed(self) -> dict[str, str]:
        """Metric names no longer reported -> what they were renamed to."""
        return {}

    def make_run(self, cfg: Config, workdir: Path, reporter: Reporter, dense_dir: Path | None,
                 masks_from: str | None) -> Any:
        """The run a trial (or `lth imp` / `lth stability`) executes: it has `.run()`. `dense_dir`: a shared
        dense run (None: the run's own); `masks_from`: an IMP sweep folder whose masks may be reused, in
        which case `reporter.note_mask(source, level, mask)` says what was found."""
        raise NotImplementedError

    def trial_metrics(self, tables: Rows, cfg: Config, search: Any) -> dict[str, Any]:
        """What a trial reports after a commit; `objective` too when `search` is optuna."""
        raise NotImplementedError

    def progress_line(self, result: Mapping[str, Any]) -> str:
        raise NotImplementedError

    def trainings(self, cfg: Config, end: int, after_k: int) -> tuple[int, int]:
        """(trainings, training iterations) of one trial beyond its dense run, which trains `end` iterations;
        a training from the rewind point trains `after_k`."""
        raise NotImplementedError

    def mask_levels(self, cfg: Config) -> range:
        """The IMP levels whose masks a finished trial keeps."""
        raise NotImplementedError

    def finished(self, cfg: Config, tables: Rows) -> bool:
        """Whether a trial with these rows has done everything it will do."""
        raise NotImplementedError

    def mlflow_metrics(self, tables: Rows) -> MlflowMetrics:
        raise NotImplementedError

    def mlflow_files(self, tables: Rows, title: str) -> dict[str, bytes]:
        """Files for the trial's MLflow run (tables as CSV, plots), logged when it stops."""
        raise NotImplementedError

    def lines(self, rows: Rows) -> list[str]:
        """What `lth imp` / `lth stability` print for one commit."""
        raise NotImplementedError

    def progress(self, tables: Rows) -> int:
        """Rows of the commit tables: grows with every commit."""
        return sum(len(tables.get(name, [])) for name in self.commit_tables)


KINDS: Registry[Workflow] = Registry("kind of experiment", "lth list kinds")
KINDS.add("imp", "iterative magnitude pruning: one IMP run per trial, reported after every level, with its controls "
                 "(Frankle & Carbin 2019)", "orchestrator.workflows.imp:IMP", unit="level")
KINDS.add("stability", "linear mode connectivity: two copies trained from the network at k with different SGD noise, "
                       "the error along the line between them (Frankle et al. 2020)",
          "orchestrator.workflows.stability:STABILITY", unit="replicate")
KINDS.add("pruning_at_init", "IMP beside pruning at initialisation: per trial, prune.method is imp (an IMP run) or a "
                             "method choosing each level's mask before training (`lth list methods`; Frankle et al. "
                             "2021)", "orchestrator.workflows.pruning_at_init:PRUNING_AT_INIT", unit="level")


def workflow(kind: str) -> Workflow:
    return KINDS.get(kind)


def kind_problem(kind: Any) -> str | None:
    if kind in KINDS:
        return None
    return f"expected one of {', '.join(KINDS.names())}, got {kind!r}{did_you_mean(kind, KINDS.names())}"


def table_schemas() -> dict[str, pa.Schema]:
    """Every table any kind gathers into a sweep folder, by file name."""
    out: dict[str, pa.Schema] = {}
    for entry in KINDS:
        flow = entry.load()
        out.update({name: flow.run_tables[name] for name in flow.sweep_tables})
    return out


def csv_bytes(rows: list[dict[str, Any]], schema: pa.Schema) -> bytes:
    import io

    import pyarrow.csv as pacsv

    buffer = io.BytesIO()
    pacsv.write_csv(pa.Table.from_pylist(list(rows), schema=schema), buffer)
    return buffer.getvalue()


def stamp(row: Mapping[str, Any]) -> int:
    """A row's finishing time in ms: the timestamp of its MLflow metrics."""
    return int(row["finished_at"].timestamp() * 1000)
