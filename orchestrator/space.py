"""A sweep's search space: the values each swept dotted key takes (`space:`) and the settings of several
keys that go together (`cases:`), each value checked against the config schema."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Literal, Mapping

from trainables import catalog
from trainables.config import Config, ConfigError, did_you_mean

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")
Cases = tuple[tuple[tuple[str, Any], ...], ...]


@dataclass(frozen=True)
class Domain:
    """The values one dotted key takes: a grid list or a distribution."""

    kind: Literal["grid", "choice", "uniform", "loguniform", "randint"]
    values: tuple[Any, ...]  # the values (grid, choice) or the bounds (low, high)

    @property
    def enumerable(self) -> bool:
        return self.kind == "grid"


def flatten(raw: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys: {'train': {'lr': 0.1}} -> {'train.lr': 0.1}."""
    out = {}
    for k, v in raw.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted key of a config: 'train.lr', 'seed', ..."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        sub = hints[f.name]
        out += config_keys(sub, f"{prefix}{f.name}.") if dataclasses.is_dataclass(sub) else [f"{prefix}{f.name}"]
    return out


def _check_value(base: Config, key: str, value: Any, problems: list[str], where: str) -> None:
    try:
        catalog.with_updates(base, {key: value}, where)
    except ConfigError as exc:
        problems.extend(f"{where}: {p}" for p in exc.problems if p.startswith(key.split(".")[0]))


def parse_space(raw: Any, base: Config | None, problems: list[str]) -> list[tuple[str, Domain]]:
    if not isinstance(raw, Mapping):
        problems.append(f"space: expected a mapping of dotted config keys, got {raw!r}")
        return []
    known = config_keys(Config)
    space = []
    for key, value in raw.items():
        if key not in known:
            problems.append(f"space.{key}: not a config key{did_you_mean(key, known)}; keys look like "
                            "train.lr, imp.rewind_iter, prune.rate, model.arch, seed")
            continue
        if (domain := _domain(key, value, problems)) is None:
            continue
        space.append((key, domain))
        for example in _examples(domain) if base is not None else ():
            _check_value(base, key, example, problems, f"space.{key} = {example!r}")
    return space


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
        problems.append(f"{where}: unknown distribution {kind!r}{did_you_mean(kind, DISTRIBUTIONS)}; "
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
    return [low, high - 1] if domain.kind == "randint" else [float(low), float(high)]


def parse_cases(raw: Any, swept: set[str], base: Config | None, problems: list[str]) -> Cases:
    if raw is None:
        return ()
    if not (isinstance(raw, list) and raw and all(isinstance(c, Mapping) and c for c in raw)):
        problems.append("cases: expected a list of mappings of dotted keys, e.g. "
                        "[{train.lr: 0.1}, {train.lr: 0.1, train.warmup: 10000it}]")
        return ()
    known = config_keys(Config)
    out = []
    for i, case in enumerate(raw):
        for key, value in case.items():
            if key not in known:
                problems.append(f"cases[{i}].{key}: not a config key{did_you_mean(key, known)}")
            elif key in swept:
                problems.append(f"cases[{i}].{key}: also swept under `space`; set it in one place")
            elif base is not None:
                _check_value(base, key, value, problems, f"cases[{i}].{key} = {value!r}")
        out.append(tuple(case.items()))
    return tuple(out)
