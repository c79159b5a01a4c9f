"""The schema builder every config and sweep file goes through: dataclass fields with types, durations and
ranges; unknown keys with a did-you-mean; one line per problem, naming its dotted key. A leaf of the
`trainables.config` package, like the package itself: nothing else of the project is imported."""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import field
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

_DURATION = re.compile(r"^(\d+)(it|ep)$")


def duration(default: str | tuple[str, ...]) -> Any:
    """A field holding a training duration (or a tuple of them): 'Nit' (iterations) or 'Nep' (epochs)."""
    return field(default=default, metadata={"duration": True})


def parse_duration(value: str) -> tuple[int, str]:
    """'30000it' -> (30000, 'it'); '160ep' -> (160, 'ep') (validated when the config was built)."""
    return int(_DURATION.match(value).group(1)), _DURATION.match(value).group(2)


def to_iterations(value: str, steps_per_epoch: int) -> int:
    """'30000it' -> 30000; '160ep' -> 160 * steps_per_epoch."""
    count, unit = parse_duration(value)
    return count * (steps_per_epoch if unit == "ep" else 1)


def did_you_mean(word: Any, options: Iterable[Any], known: bool = False) -> str:
    """' (did you mean 'x'?)'; with `known`, the list of options when nothing is close; else ''."""
    options = [str(o) for o in options]
    if close := difflib.get_close_matches(str(word), options, n=1):
        return f" (did you mean {close[0]!r}?)"
    return f" (known: {', '.join(options)})" if known else ""


class UserError(Exception):
    """An error whose message names the problem and its fix: the CLI prints it as it is, no traceback."""


class ConfigError(ValueError, UserError):
    """A config that cannot run; lists every problem with the key that holds it."""

    def __init__(self, source: str, problems: Sequence[str]):
        self.source = source
        self.problems = list(problems)
        super().__init__(f"invalid config ({source}):\n" + "\n".join(f"  - {p}" for p in self.problems))


def ranged(default: Any, interval: str, note: str = "") -> Any:
    """A number field that must lie in `interval`: '>0', '>=N' or '[lo,hi)' with either bracket; None passes."""
    return field(default=default, metadata={"range": (interval, note)})


def _range_problem(value: float, interval: str) -> str | None:
    if interval[0] == ">":
        bound = float(interval.lstrip(">="))
        ok = value >= bound if interval[1] == "=" else value > bound
        rule = "must be positive" if interval == ">0" else f"must be {'>=' if bound == 0 else 'at least'} {bound:g}"
    else:
        low, high = map(float, interval[1:-1].split(","))
        ok = (low <= value if interval[0] == "[" else low < value) and (
            value <= high if interval[-1] == "]" else value < high)
        rule = f"must be in {interval.replace(',', ', ')}"
    return None if ok else rule


class _Problem(Exception):
    pass


def _coerce(value: Any, tp: Any, is_duration: bool) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or (value is None and type(None) in args):
        return value
    if origin in (typing.Union, types.UnionType):
        return _coerce(value, next(a for a in args if a is not type(None)), is_duration)
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise _Problem(f"expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], is_duration) for v in value)
    if origin is Literal:
        if value not in args:
            names = ", ".join(repr(a) for a in args)
            raise _Problem(f"expected one of {names}, got {value!r}{did_you_mean(value, args)}")
        return value
    if is_duration:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return f"{value}it"
        if not (isinstance(value, str) and _DURATION.match(value)):
            raise _Problem(f"expected a duration such as '30000it' or '160ep', got {value!r}")
        return value
    if tp is float and isinstance(value, str) and re.fullmatch(r"[-+]?[\d.]+(e[-+]?\d+)?", value.strip(), re.I):
        return float(value)  # YAML 1.1 reads `1e-3` (no dot) as a string
    if isinstance(value, tp if tp is not float else (int, float)) and not (tp is not bool and isinstance(value, bool)):
        return tp(value)
    names = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}
    raise _Problem(f"expected {names.get(tp, tp)}, got {value!r}")


Check = Callable[[Any], list[tuple[str, str]]]  # a built section -> (key, problem) pairs


def build(cls: type, raw: Any, prefix: str, problems: list[str], check: Check | None = None) -> Any:
    """`cls` (a dataclass) from a mapping: each unknown key, wrong type, value out of range and `problems()`
    entry (and `check(section)` entry) appended to `problems` as one line starting with its dotted key.
    Missing keys take their defaults."""
    if not isinstance(raw, Mapping):
        problems.append(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, got {raw!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    problems.extend(f"{prefix}{key}: unknown key{did_you_mean(key, fields, known=True)}" for key in raw
                    if key not in fields)
    kwargs, failed = {}, set()
    for name in [n for n in fields if n in raw]:
        if dataclasses.is_dataclass(hints[name]):
            kwargs[name] = build(hints[name], raw[name], f"{prefix}{name}.", problems, check)
            continue
        try:
            kwargs[name] = _coerce(raw[name], hints[name], fields[name].metadata.get("duration", False))
        except _Problem as exc:
            problems.append(f"{prefix}{name}: {exc}")
            failed.add(name)
    obj = cls(**kwargs)
    for name, f in fields.items():
        interval, note = f.metadata.get("range", (None, ""))
        if interval and name not in failed and (value := getattr(obj, name)) is not None and (
                rule := _range_problem(value, interval)):
            problems.append(f"{prefix}{name}: {rule}{' ' + note if note else ''}, got {value}")
    if not failed:  # the checks across fields need every field valid
        found = [*getattr(obj, "problems", list)(), *(check(obj) if check else ())]
        problems.extend(f"{prefix}{key}: {msg}" for key, msg in found)
    return obj


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """raw['train']['lr'] = value for key 'train.lr'."""
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError("overrides", [f"{key}: {part!r} is not a section"])
    node[parts[-1]] = value


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, tuple) else value


def to_dict(obj: Any) -> dict[str, Any]:
    """Every field, nested, as plain YAML/JSON types."""
    return {f.name: to_dict(v) if dataclasses.is_dataclass(v := getattr(obj, f.name)) else _plain(v)
            for f in dataclasses.fields(obj)}


def non_default(obj: Any) -> dict[str, Any]:
    """Only the fields that differ from their defaults, nested."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            if sub := non_default(value):
                out[f.name] = sub
        elif value != f.default:
            out[f.name] = _plain(value)
    return out
