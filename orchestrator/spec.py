"""Sweep files (`sweeps/*.yaml`) -> a validated, frozen `SweepSpec`.

A sweep is a base IMP config (the schema `lth imp` takes) plus a search space over its dotted
keys, a search algorithm, per-trial resources and a storage location. Everything is checked
before anything runs, and every problem is reported at once with the file, the key and the fix.

    name: lr_study                      # the sweep's folder under `storage`
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
    max_failures: 2                     # retries of a failed trial, each from its last finished level
    storage: runs/sweeps                # a local folder or a URI pyarrow understands (s3://bucket/lth)
    checkpoints: {keep: 1}              # Tune checkpoints kept per trial
    kind: imp                           # or stability: each trial analyses linear mode connectivity
    masks_from: runs/sweeps/lenet       # stability: take IMP masks from this sweep's matching trials
    tracking: {uri: http://head:5000}   # MLflow; default: $MLFLOW_TRACKING_URI, else <storage>/mlflow.db
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from trainables.config import Config, ConfigError, dense_hash, load_config, to_iterations

# What a trial reports after every level; any of them can be the optuna objective.
# Test-set numbers are what the papers report; select on the validation losses to keep the test set unseen.
METRICS = ("ticket_accuracy", "ticket_early_stop_accuracy", "reinit_accuracy", "random_mask_accuracy",
           "dense_accuracy", "ticket_test_loss", "ticket_val_loss", "ticket_early_stop_val_loss",
           "ticket_early_stop_iter", "weights_remaining")
# What a stability trial reports after every replicate (means over the replicates done so far).
STABILITY_METRICS = ("instability_train", "instability_val", "instability_test", "endpoint_error_train",
                     "endpoint_error_val", "endpoint_error_test")
KINDS = ("imp", "stability")
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")
MAX_GRID = 100_000  # combinations checked one by one before a run; beyond this, a sweep file is a mistake


@dataclass(frozen=True)
class Domain:
    """The values one dotted key takes: a grid list or a distribution."""

    kind: Literal["grid", "choice", "uniform", "loguniform", "randint"]
    values: tuple[Any, ...]  # the values (grid, choice) or the bounds (low, high)

    @property
    def enumerable(self) -> bool:
        return self.kind == "grid"


@dataclass(frozen=True)
class Search:
    """How trials are chosen."""

    algorithm: Literal["grid", "optuna"] = "grid"
    num_samples: int = 1  # grid: repeats of each combination (samples of any distribution); optuna: trials
    metric: str = "ticket_accuracy"  # optuna's objective, read at the level given below
    mode: Literal["max", "min"] = "max"
    at_weights_remaining: float | None = None  # None: the last level; else the level nearest this fraction
    seed: int = 0  # the optuna sampler's seed: the same file proposes the same trials


@dataclass(frozen=True)
class Resources:
    """What one trial reserves on a node."""

    cpu: float = 1.0
    gpu: float = 0.0  # a fraction below 1 packs that many trials per GPU (0.25: four per card)


@dataclass(frozen=True)
class Tracking:
    """Where MLflow shows the sweep; the Parquet tables in the sweep folder are the record either way."""

    uri: str | None = None  # None: --tracking-uri, else $MLFLOW_TRACKING_URI, else <storage>/mlflow.db (SQLite)
    experiment: str | None = None  # None: the sweep's name
    enabled: bool = True


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep file."""

    name: str
    source: str  # the file it came from
    text: str  # the file's text, stored with the sweep so that `lth sweep resume` needs nothing else
    base: Config
    space: tuple[tuple[str, Domain], ...]
    cases: tuple[tuple[tuple[str, Any], ...], ...] = ()
    search: Search = Search()
    resources: Resources = Resources()
    max_concurrent: int | None = None  # None: as many as the cluster's resources allow
    max_failures: int = 2
    storage: str = "runs/sweeps"
    keep_checkpoints: int = 1
    tracking: Tracking = Tracking()
    kind: Literal["imp", "stability"] = "imp"  # a trial is an IMP run, or a stability analysis (LMC)
    masks_from: str | None = None  # stability: an IMP sweep folder whose trials' masks to analyse

    @property
    def is_uri(self) -> bool:
        return "://" in self.storage

    @property
    def experiment(self) -> str:
        """The sweep's folder (or URI): Tune's experiment directory."""
        return f"{self.storage.rstrip('/')}/{self.name}"

    def overrides(self, trial_config: Mapping[str, Any]) -> dict[str, Any]:
        """A Tune trial config (dotted keys, and a `case` index) -> the dotted overrides of the base."""
        out = {k: v for k, v in trial_config.items() if k != "case"}
        if "case" in trial_config:
            out = dict(self.cases[trial_config["case"]]) | out
        return out

    def trial_config(self, trial_config: Mapping[str, Any]) -> Config:
        return self.base.with_updates(self.overrides(trial_config), f"{self.source}: trial {dict(trial_config)}")

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

    def rewind_points(self) -> dict[str, list[str]]:
        """For a grid sweep: the rewind iterations each shared dense run must keep, by dense hash."""
        points: dict[str, set[str]] = {}
        for trial in self.grid() or []:
            cfg = self.trial_config(trial)
            points.setdefault(dense_hash(cfg), set()).add(cfg.imp.rewind_iter)
        return {k: sorted(v) for k, v in points.items()}


# ---------------------------------------------------------------------------------------------
# loading and validation

_TOP = {"name", "base", "space", "cases", "search", "resources", "max_concurrent", "max_failures", "storage",
        "checkpoints", "tracking", "kind", "masks_from", "description"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_URI_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "file", "mock")


def _close(word: str, options: typing.Iterable[str], known: bool = False) -> str:
    """' (did you mean 'x'?)', or with `known` the list of valid options when nothing is close."""
    options = list(options)
    match = difflib.get_close_matches(word, options, n=1)
    if match:
        return f" (did you mean {match[0]!r}?)"
    return f" (known: {', '.join(sorted(options))})" if known else ""


def _config_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted key of a config: 'train.lr', 'seed', ..."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += _config_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


def _section(raw: Mapping[str, Any], key: str, cls: type, problems: list[str]) -> Any:
    """A small dataclass section (search, resources) from a mapping, with typed checks."""
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        problems.append(f"{key}: expected a mapping, got {value!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in value.items():
        if k not in names:
            problems.append(f"{key}.{k}: unknown key{_close(str(k), names, known=True)}")
            continue
        tp = hints[k]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) is Literal and v not in typing.get_args(tp):
            problems.append(f"{key}.{k}: expected one of {', '.join(map(repr, typing.get_args(tp)))}, got {v!r}"
                            f"{_close(str(v), map(str, typing.get_args(tp)))}")
        elif v is None and type(None) in typing.get_args(tp):
            kwargs[k] = v
        elif tp in (int, float) or args and args[0] in (int, float):
            base = tp if tp in (int, float) else args[0]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (base is int and not isinstance(v, int)):
                problems.append(f"{key}.{k}: expected {'an integer' if base is int else 'a number'}, got {v!r}")
            else:
                kwargs[k] = base(v)
        elif (tp is str or args and args[0] is str) and not isinstance(v, str):
            problems.append(f"{key}.{k}: expected a string, got {v!r}")
        elif tp is bool and not isinstance(v, bool):
            problems.append(f"{key}.{k}: expected true or false, got {v!r}")
        else:
            kwargs[k] = v
    return cls(**kwargs)


def _domain(key: str, raw: Any, problems: list[str]) -> Domain | None:
    where = f"space.{key}"
    if isinstance(raw, list):
        if not raw:
            problems.append(f"{where}: an empty list; give at least one value")
            return None
        return Domain("grid", tuple(raw))
    if not (isinstance(raw, Mapping) and len(raw) == 1):
        problems.append(f"{where}: expected a list of values or one of {{{', '.join(DISTRIBUTIONS)}: ...}}, "
                        f"got {raw!r}")
        return None
    (kind, args), = raw.items()
    if kind not in DISTRIBUTIONS:
        problems.append(f"{where}: unknown distribution {kind!r}{_close(str(kind), DISTRIBUTIONS)}; "
                        f"expected one of {', '.join(DISTRIBUTIONS)}")
        return None
    if kind == "choice":
        if not isinstance(args, list) or not args:
            problems.append(f"{where}.choice: expected a non-empty list of values, got {args!r}")
            return None
        return Domain("choice", tuple(args))
    if isinstance(args, list):
        args = [_number(a) for a in args]  # YAML 1.1 reads 1e-4 (no dot) as a string
    if not (isinstance(args, list) and len(args) == 2 and all(
            isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)):
        problems.append(f"{where}.{kind}: expected [low, high], got {args!r}")
        return None
    low, high = args
    if not low < high:
        problems.append(f"{where}.{kind}: low ({low}) must be below high ({high})")
    elif kind == "loguniform" and low <= 0:
        problems.append(f"{where}.loguniform: bounds must be positive, got {args}")
    elif kind == "randint" and not all(isinstance(a, int) for a in args):
        problems.append(f"{where}.randint: bounds must be integers, got {args} (high is excluded)")
    else:
        return Domain(kind, (low, high))
    return None


def _number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _examples(domain: Domain) -> list[Any]:
    """Values that stand for a domain when checking it against the config schema."""
    if domain.kind in ("grid", "choice"):
        return list(domain.values)
    low, high = domain.values
    if domain.kind == "randint":
        return [low, high - 1]
    return [float(low), float(high)]


def _check_value(base: Config, key: str, value: Any, problems: list[str], where: str) -> None:
    try:
        base.with_updates({key: value}, where)
    except ConfigError as exc:
        problems.extend(f"{where}: {p}" for p in exc.problems if p.startswith(key.split(".")[0]))


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


def header_comment(text: str) -> str:
    """A sweep file's opening comment block (its launch command and what it reproduces), '#' removed."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[2:] if line.startswith("# ") else line[1:])
    return "\n".join(lines)


def parse_sweep(raw: Any, source: str, text: str = "", folder: Path = Path(".")) -> SweepSpec:
    """Validate a sweep given as a mapping (`text`: the file it came from, if any; `folder`: where
    a `base:` path is relative to)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(source, [f"expected a mapping of sweep keys at the top, got {type(raw).__name__}"])
    problems: list[str] = []
    for key in raw:
        if key not in _TOP:
            problems.append(f"{key}: unknown key{_close(str(key), _TOP, known=True)}")

    name = raw.get("name")
    if not (isinstance(name, str) and _NAME.match(name)):
        problems.append(f"name: expected a folder name (letters, digits, '_', '.', '-'), got {name!r}")

    base = _base(raw.get("base", {}), folder, problems)

    known = _config_keys()
    space: list[tuple[str, Domain]] = []
    raw_space = raw.get("space", {}) or {}
    if not isinstance(raw_space, Mapping):
        problems.append(f"space: expected a mapping of dotted config keys, got {raw_space!r}")
        raw_space = {}
    for key, value in raw_space.items():
        if key not in known:
            problems.append(f"space.{key}: not a config key{_close(str(key), known)}; keys look like "
                            "train.lr, imp.rewind_iter, prune.rate, model.arch, seed")
            continue
        if (domain := _domain(key, value, problems)) is None:
            continue
        space.append((key, domain))
        if base is not None:
            for value in _examples(domain):
                _check_value(base, key, value, problems, f"space.{key} = {value!r}")

    cases = _cases(raw.get("cases"), known, {k for k, _ in space}, base, problems)
    search = _section(raw, "search", Search, problems)
    resources = _section(raw, "resources", Resources, problems)
    tracking = _section(raw, "tracking", Tracking, problems)
    checkpoints = raw.get("checkpoints", {})
    keep = 1
    if not isinstance(checkpoints, Mapping) or set(checkpoints) - {"keep"}:
        problems.append(f"checkpoints: expected {{keep: N}}, got {checkpoints!r}")
    else:
        keep = checkpoints.get("keep", 1)
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            problems.append(f"checkpoints.keep: expected an integer >= 1 (Tune checkpoints kept per trial), "
                            f"got {keep!r}")

    if search.num_samples < 1:
        problems.append(f"search.num_samples: must be at least 1, got {search.num_samples}")
    kind = raw.get("kind", "imp")
    if kind not in KINDS:
        problems.append(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}{_close(str(kind), KINDS)}")
    metrics = STABILITY_METRICS if kind == "stability" else METRICS
    masks_from = raw.get("masks_from")
    if masks_from is not None and (kind != "stability" or not isinstance(masks_from, str)):
        problems.append(f"masks_from: an IMP sweep folder (a string) for a `kind: stability` sweep, got "
                        f"{masks_from!r} in a {kind!r} sweep")
    if search.metric not in metrics and (search.algorithm == "optuna" or "metric" in (raw.get("search") or {})):
        problems.append(f"search.metric: unknown metric {search.metric!r}{_close(search.metric, metrics)}; "
                        f"{kind} trials report {', '.join(metrics)}")
    if search.at_weights_remaining is not None and not 0 < search.at_weights_remaining <= 1:
        problems.append(f"search.at_weights_remaining: a fraction in (0, 1], got {search.at_weights_remaining}")
    if search.algorithm == "optuna" and not raw_space and not cases:
        problems.append("search.algorithm: optuna needs a space to search; add keys under `space`")
    if resources.cpu <= 0:
        problems.append(f"resources.cpu: must be positive, got {resources.cpu}")
    if resources.gpu < 0 or (resources.gpu > 1 and resources.gpu != int(resources.gpu)):
        problems.append(f"resources.gpu: a fraction below 1 (several trials per GPU) or a whole number of GPUs, "
                        f"got {resources.gpu}")

    max_concurrent = raw.get("max_concurrent")
    if max_concurrent is not None and (isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int)
                                       or max_concurrent < 1):
        problems.append(f"max_concurrent: expected an integer >= 1 (or leave it out), got {max_concurrent!r}")
    max_failures = raw.get("max_failures", 2)
    if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < -1:
        problems.append(f"max_failures: expected an integer >= 0 (-1: retry forever), got {max_failures!r}")
    storage = raw.get("storage", "runs/sweeps")
    if not isinstance(storage, str) or not storage:
        problems.append(f"storage: expected a folder or a URI such as s3://bucket/lth, got {storage!r}")
    elif "://" in storage and storage.split("://")[0] not in _URI_SCHEMES:
        problems.append(f"storage: unknown URI scheme {storage.split('://')[0]!r}; pyarrow understands "
                        f"{', '.join(_URI_SCHEMES)}")

    spec = None
    if not problems:
        spec = SweepSpec(name=name, source=source, text=text or yaml.safe_dump(dict(raw), sort_keys=False),
                         base=base, space=tuple(space), cases=cases, search=search, resources=resources,
                         max_concurrent=max_concurrent, max_failures=max_failures, storage=storage,
                         keep_checkpoints=keep, tracking=tracking, kind=kind, masks_from=masks_from)
        _check_combinations(spec, problems)
    if problems:
        raise ConfigError(source, problems)
    return spec


def _base(raw: Any, folder: Path, problems: list[str]) -> Config | None:
    try:
        if isinstance(raw, str):
            return load_config(folder / raw)
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
        return load_config(None, preset, overrides)
    except ConfigError as exc:
        problems.extend(f"base.{p}" for p in exc.problems)
        return None


def flatten(raw: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys: {'train': {'lr': 0.1}} -> {'train.lr': 0.1}."""
    out = {}
    for k, v in raw.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _cases(raw: Any, known: list[str], swept: set[str], base: Config | None,
           problems: list[str]) -> tuple[tuple[tuple[str, Any], ...], ...]:
    if raw is None:
        return ()
    if not (isinstance(raw, list) and raw and all(isinstance(c, Mapping) and c for c in raw)):
        problems.append("cases: expected a list of mappings of dotted keys, e.g. "
                        "[{train.lr: 0.1}, {train.lr: 0.1, train.warmup: 10000it}]")
        return ()
    out = []
    for i, case in enumerate(raw):
        for key, value in case.items():
            if key not in known:
                problems.append(f"cases[{i}].{key}: not a config key{_close(str(key), known)}")
            elif key in swept:
                problems.append(f"cases[{i}].{key}: also swept under `space`; set it in one place")
            elif base is not None:
                _check_value(base, key, value, problems, f"cases[{i}].{key} = {value!r}")
        out.append(tuple(case.items()))
    return tuple(out)


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
            for p in exc.problems:
                if p not in seen:
                    seen.add(p)
                    problems.append(f"space: the trial {spec.overrides(trial)}: {p}")
            continue
        if cfg.imp.rewind_iter.endswith("it") and cfg.train.length.endswith("it") and (
                int(cfg.imp.rewind_iter[:-2]) >= int(cfg.train.length[:-2])):
            message = (f"space: the trial {spec.overrides(trial)}: imp.rewind_iter {cfg.imp.rewind_iter} is not "
                       f"before the end of training ({cfg.train.length}); choose an earlier rewind point")
            if message not in seen:
                seen.add(message)
                problems.append(message)


def total_iterations(spec: SweepSpec, trials: list[dict[str, Any]]) -> tuple[int, int, int]:
    """(training iterations, dense networks, IMP trainings) for the given trials, dense runs counted once."""
    from trainables.data import steps_per_epoch

    total = trainings = 0
    dense: set[str] = set()
    for trial in trials:
        cfg = spec.trial_config(trial)
        steps = steps_per_epoch(cfg.data, cfg.train.batch_size)
        end = to_iterations(cfg.train.length, steps)
        after_k = end - to_iterations(cfg.imp.rewind_iter, steps)
        if spec.kind == "stability":  # IMP up to the analysed level (no controls), then pairs of copies
            trainings += cfg.stability.level + 2 * cfg.stability.replicates
            total += (cfg.stability.level + 2 * cfg.stability.replicates) * after_k
        else:
            trainings += cfg.imp.levels * (1 + len(cfg.imp.controls))
            total += cfg.imp.levels * (1 + len(cfg.imp.controls)) * after_k
        if (key := dense_hash(cfg)) not in dense:
            dense.add(key)
            total += end
    return total, len(dense), trainings
