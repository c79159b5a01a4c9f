"""Sweep files (`sweeps/*.yaml`) -> a validated, frozen `SweepSpec`.

A sweep is a base config (the schema `lth imp` takes) plus a search space over its dotted keys, a
kind of experiment (`lth list kinds`), a search algorithm, per-trial resources and a storage location.
Everything is checked before anything runs, by the same schema builder as configs
(`trainables.config.build`), and every problem is reported at once with the file, the key and the fix.

    name: lr_study                      # the sweep's folder under `storage`
    kind: imp                           # `lth list kinds`: imp (default) or stability
    base: {preset: resnet20}            # or a path to a config file, relative to this file
    space:                              # dotted config keys
      train.lr: [0.1, 0.03, 0.01]       # a list: every value (grid) / a categorical (optuna)
      train.warmup: {choice: [0it, 20000it]}
      prune.rate: {uniform: [0.1, 0.3]} # also loguniform: [lo, hi], randint: [lo, hi) (hi excluded)
      seed: [0, 1, 2]                   # replicates
    cases:                              # optional: settings of several keys that go together
      - {train.lr: 0.1}
      - {train.lr: 0.03, train.warmup: 20000it}
    search: {algorithm: grid}           # or optuna: num_samples, metric, mode, at_weights_remaining
    resources: {cpu: 1, gpu: 0.25}      # per trial; a fraction of a GPU packs small trials on one card
    max_concurrent: 4
    max_failures: 2                     # retries of a failed trial, each from its last commit
    storage: runs/sweeps                # a local folder or a URI pyarrow understands (s3://bucket/lth)
    checkpoints: {keep: 1}              # checkpoints kept per trial (older ones emptied by the trial)
    masks_from: runs/sweeps/lenet       # stability: take IMP masks from this sweep's matching trials
    tracking: {uri: http://head:5000}   # MLflow; default: $MLFLOW_TRACKING_URI, else <storage>/mlflow.db
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from orchestrator.fs import URI_SCHEMES, credential_problem, is_uri
from orchestrator.space import Cases, Domain, flatten, parse_cases, parse_space
from orchestrator.workflows import KINDS, Workflow, kind_problem
from trainables import catalog
from trainables.config import Config, ConfigError, build, did_you_mean, ranged, to_iterations

MAX_GRID = 100_000  # combinations checked one by one before a run; beyond this, a sweep file is a mistake


@dataclass(frozen=True)
class Search:
    """How trials are chosen."""

    algorithm: Literal["grid", "optuna"] = "grid"
    num_samples: int = ranged(1, ">=1")  # grid: repeats of each combination (and its samples); optuna: trials
    metric: str = "ticket_val_accuracy"  # optuna's objective, read at the level given below; validation only
    allow_test_metric: bool = False  # select on a test-split metric knowingly (the test set is for reporting)
    mode: Literal["max", "min"] = "max"
    at_weights_remaining: float | None = ranged(None, "(0,1]", "(a fraction)")  # None: the last level; else the nearest
    seed: int = 0  # the optuna sampler's seed: the same file proposes the same trials


@dataclass(frozen=True)
class Resources:
    """What one trial reserves on a node."""

    cpu: float = ranged(1.0, ">0")
    gpu: float = 0.0  # a fraction below 1 packs that many trials per GPU (0.25: four per card)

    def problems(self) -> list[tuple[str, str]]:
        if self.gpu >= 0 and (self.gpu <= 1 or self.gpu == int(self.gpu)):
            return []
        return [("gpu", f"a fraction below 1 (several trials per GPU) or a whole number of GPUs, got {self.gpu}")]


@dataclass(frozen=True)
class Tracking:
    """Where MLflow shows the sweep; the Parquet tables in the sweep folder are the record either way."""

    uri: str | None = None  # None: --tracking-uri, else $MLFLOW_TRACKING_URI, else <storage>/mlflow.db (SQLite)
    experiment: str | None = None  # None: the sweep's name
    enabled: bool = True


@dataclass(frozen=True)
class Checkpoints:
    keep: int = ranged(1, ">=1", "(checkpoints kept per trial; older ones emptied by the trial)")


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class SweepFile:
    """A sweep file's top-level keys as the schema builder checks them; `base`, `space` and `cases` are
    checked against the config schema by `parse_sweep`."""

    name: Any = None
    kind: str = "imp"
    base: Any = None
    space: Any = None
    cases: Any = None
    search: Search = Search()
    resources: Resources = Resources()
    max_concurrent: Any = None  # None: as many as the cluster's resources allow
    max_failures: Any = 2
    storage: Any = "runs/sweeps"
    checkpoints: Checkpoints = Checkpoints()
    tracking: Tracking = Tracking()
    masks_from: Any = None
    description: str | None = None

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if not (isinstance(self.name, str) and _NAME.match(self.name)):
            out.append(("name", f"expected a folder name (letters, digits, '_', '.', '-'), got {self.name!r}"))
        if (problem := kind_problem(self.kind)) is not None:
            out.append(("kind", problem))
        reuses = self.kind in KINDS and KINDS.get(self.kind).takes_masks_from
        if self.masks_from is not None and not (isinstance(self.masks_from, str) and reuses):
            kinds = ", ".join(f"`kind: {e.name}`" for e in KINDS if e.load().takes_masks_from)
            out.append(("masks_from", f"an IMP sweep folder (a string) for a {kinds} sweep, got {self.masks_from!r} "
                                      f"in a {self.kind!r} sweep"))
        mc, mf = self.max_concurrent, self.max_failures
        if mc is not None and (isinstance(mc, bool) or not isinstance(mc, int) or mc < 1):
            out.append(("max_concurrent", f"expected an integer >= 1 (or leave it out), got {mc!r}"))
        if isinstance(mf, bool) or not isinstance(mf, int) or mf < -1:
            out.append(("max_failures", f"expected an integer >= 0 (-1: retry forever), got {mf!r}"))
        if not isinstance(self.storage, str) or not self.storage:
            out.append(("storage", f"expected a folder or a URI such as s3://bucket/lth, got {self.storage!r}"))
        elif is_uri(self.storage) and self.storage.split("://")[0] not in URI_SCHEMES:
            out.append(("storage", f"unknown URI scheme {self.storage.split('://')[0]!r}; pyarrow understands "
                                   f"{', '.join(URI_SCHEMES)}"))
        elif (problem := credential_problem(self.storage)) is not None:
            out.append(("storage", problem))
        return out


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep file."""

    name: str
    source: str  # the file it came from
    text: str  # the file's text, stored with the sweep so that `lth sweep resume` needs nothing else
    base: Config
    space: tuple[tuple[str, Domain], ...]
    cases: Cases = ()
    search: Search = Search()
    resources: Resources = Resources()
    max_concurrent: int | None = None
    max_failures: int = 2
    storage: str = "runs/sweeps"
    keep_checkpoints: int = 1
    tracking: Tracking = Tracking()
    kind: str = "imp"  # `lth list kinds`: what one trial is
    masks_from: str | None = None  # an IMP sweep folder whose trials' masks this sweep's trials may reuse

    @property
    def workflow(self) -> Workflow:
        return KINDS.get(self.kind)

    @property
    def folder(self) -> str:
        """The sweep folder (or URI): `<storage>/<name>`, Tune's experiment directory."""
        return f"{self.storage.rstrip('/')}/{self.name}"

    def overrides(self, trial_config: Mapping[str, Any]) -> dict[str, Any]:
        """A Tune trial config (dotted keys, and a `case` index) -> the dotted overrides of the base."""
        out = {k: v for k, v in trial_config.items() if k != "case"}
        if "case" in trial_config:
            out = dict(self.cases[trial_config["case"]]) | out
        return out

    def trial_config(self, trial_config: Mapping[str, Any]) -> Config:
        return catalog.with_updates(self.base, self.overrides(trial_config),
                                    f"{self.source}: trial {dict(trial_config)}")

    def axes(self) -> list[tuple[str, Domain]]:
        """The swept keys (and `case`) in Tune's order: sorted by name, the first one varying fastest."""
        axes = list(self.space)
        if self.cases:
            axes.append(("case", Domain("grid", tuple(range(len(self.cases))))))
        return sorted(axes)

    def grid(self) -> list[dict[str, Any]] | None:
        """Every trial config of a grid sweep, in the order Tune runs them; None if any key is sampled."""
        if self.search.algorithm != "grid" or not all(d.enumerable for _, d in self.space):
            return None
        axes = self.axes()
        keys = [k for k, _ in axes]
        combos = itertools.product(*[domain.values for _, domain in reversed(axes)])
        trials = [dict(zip(keys, reversed(combo))) for combo in combos]
        return trials * self.search.num_samples  # as Tune repeats a grid

    def configs(self) -> list[Config]:
        """Every trial's config (a grid sweep), else the base config standing for the sampled trials."""
        trials = self.grid()
        return [self.base] if trials is None else [self.trial_config(t) for t in trials]

    def rewind_points(self) -> dict[str, list[str]]:
        """For a grid sweep: the rewind iterations each shared dense run must keep, by dense hash."""
        from trainables.config import dense_hash

        points: dict[str, set[str]] = {}
        for cfg in self.configs() if self.grid() is not None else []:
            points.setdefault(dense_hash(cfg), set()).add(cfg.imp.rewind_iter)
        return {k: sorted(v) for k, v in points.items()}


# ---------------------------------------------------------------------------------------------
# loading and validation


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file; raises ConfigError listing every problem."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(source, ["file not found; give the path to a sweep file (see sweeps/)"]) from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"not valid YAML: {exc}"]) from None
    return parse_sweep(raw, source, text, path.parent)


def parse_sweep(raw: Any, source: str, text: str = "", folder: Path = Path(".")) -> SweepSpec:
    """Validate a sweep given as a mapping (`text`: the file it came from, if any; `folder`: where
    a `base:` path is relative to)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(source, [f"expected a mapping of sweep keys at the top, got {type(raw).__name__}"])
    problems: list[str] = []
    top = build(SweepFile, raw, "", problems)
    base = _base(top.base or {}, folder, problems)
    space = parse_space(top.space or {}, base, problems)
    cases = parse_cases(top.cases, {k for k, _ in space}, base, problems)
    flow = KINDS.get(top.kind) if top.kind in KINDS else None
    if flow is not None and (top.search.algorithm == "optuna" or "metric" in (raw.get("search") or {})):
        problems += _metric_problems(flow, top.kind, top.search)
    if top.search.algorithm == "optuna" and not space and not cases:
        problems.append("search.algorithm: optuna needs a space to search; add keys under `space`")
    if problems:
        raise ConfigError(source, problems)
    spec = SweepSpec(name=top.name, source=source, text=text or yaml.safe_dump(dict(raw), sort_keys=False),
                     base=base, space=tuple(space), cases=cases, search=top.search, resources=top.resources,
                     max_concurrent=top.max_concurrent, max_failures=top.max_failures, storage=top.storage,
                     keep_checkpoints=top.checkpoints.keep, tracking=top.tracking, kind=top.kind,
                     masks_from=top.masks_from)
    _check_combinations(spec, problems)
    if problems:
        raise ConfigError(source, problems)
    return spec


def _metric_problems(flow: Workflow, kind: str, search: Search) -> list[str]:
    """An objective must be a metric the kind's trials report, and computed on data that may select."""
    metric, metrics = search.metric, flow.metrics()
    if metric in flow.renamed():
        new = flow.renamed()[metric]
        return [f"search.metric: {metric!r} is no longer reported: metric names say their split now: {new} (the test "
                f"split, which reports) or {flow.validation_twin(new)} (the validation split: select on this)"]
    if metric not in metrics:
        return [f"search.metric: unknown metric {metric!r}{did_you_mean(metric, metrics)}; {kind} trials report "
                f"{', '.join(metrics)}"]
    if flow.split_of(metric) == "test" and not search.allow_test_metric:
        return [f"search.metric: {metric} is computed on the test split, which reports results and must not choose "
                f"them; select on {flow.validation_twin(metric)} (the validation split), or set "
                "search.allow_test_metric: true to select on test data knowingly"]
    return []


def _base(raw: Any, folder: Path, problems: list[str]) -> Config | None:
    try:
        if isinstance(raw, str):
            return catalog.load_config(folder / raw)
        if not isinstance(raw, Mapping):
            problems.append(f"base: expected a config mapping (optionally with `preset:`) or a path, got {raw!r}")
            return None
        raw = dict(raw)
        preset = raw.pop("preset", None)
        overrides = {}
        for section, values in raw.items():
            if isinstance(values, Mapping):
                overrides.update({f"{section}.{k}": v for k, v in flatten(values).items()})
            else:
                overrides[section] = values
        return catalog.load_config(None, preset, overrides)
    except ConfigError as exc:
        problems.extend(f"base.{p}" for p in exc.problems)
        return None


def _check_combinations(spec: SweepSpec, problems: list[str]) -> None:
    """Build every grid trial's config: catches problems only a combination has (nesterov with adam)."""
    trials = spec.grid()
    if trials is None:
        return
    if len(trials) > MAX_GRID:
        problems.append(f"space: {len(trials):,} trials; more than {MAX_GRID:,} is almost certainly a mistake")
        return
    seen = set()
    for trial in trials:
        try:
            cfg = spec.trial_config(trial)
        except ConfigError as exc:
            found = [f"space: the trial {spec.overrides(trial)}: {p}" for p in exc.problems]
        else:
            steps = catalog.steps_per_epoch(cfg.data, cfg.train.batch_size)
            rewind, end = to_iterations(cfg.imp.rewind_iter, steps), to_iterations(cfg.train.length, steps)
            found = [] if rewind < end else [
                f"space: the trial {spec.overrides(trial)}: imp.rewind_iter {cfg.imp.rewind_iter} is not before the "
                f"end of training ({cfg.train.length}); choose an earlier rewind point"]
        problems.extend(p for p in found if p not in seen)
        seen.update(found)


def total_iterations(spec: SweepSpec, trials: list[dict[str, Any]]) -> tuple[int, int, int]:
    """(training iterations, dense networks, trainings after the dense runs) for the given trials, each dense
    run counted once."""
    from trainables.config import dense_hash

    total = trainings = 0
    dense: set[str] = set()
    for trial in trials:
        cfg = spec.trial_config(trial)
        steps = catalog.steps_per_epoch(cfg.data, cfg.train.batch_size)
        end = to_iterations(cfg.train.length, steps)
        count, iterations = spec.workflow.trainings(cfg, end, end - to_iterations(cfg.imp.rewind_iter, steps))
        trainings += count
        total += iterations
        if (key := dense_hash(cfg)) not in dense:
            dense.add(key)
            total += end
    return total, len(dense), trainings
