"""Typed, frozen configuration of one IMP run, its YAML form, dotted overrides and content hashes.

Defaults are the LTH paper's LeNet-300-100 setting (Frankle & Carbin 2019, Fig. 2), the
paper's first and cheapest experiment; presets (`trainables.presets`) hold the other nets.
A config's identity is the hash of its non-default fields, so adding a field with a default
never renames existing runs; `tests/test_config.py` pins the hashes.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

_DURATION = re.compile(r"^(\d+)(it|ep)$")


def duration(default: str) -> Any:
    """A field holding a training duration: 'Nit' (iterations) or 'Nep' (epochs)."""
    return field(default=default, metadata={"duration": True})


def durations(default: tuple[str, ...] = ()) -> Any:
    return field(default=default, metadata={"duration": True})


def to_iterations(value: str, steps_per_epoch: int) -> int:
    """'30000it' -> 30000; '160ep' -> 160 * steps_per_epoch."""
    count, unit = _DURATION.match(value).groups()  # validated when the config was built
    return int(count) * (steps_per_epoch if unit == "ep" else 1)


@dataclass(frozen=True)
class ModelConfig:
    """The network and how its weights are initialised."""

    arch: str = "lenet_300_100"  # Frankle & Carbin 2019, Fig. 2: LeNet-300-100, the paper's first net
    init: Literal["glorot_normal", "glorot_uniform", "kaiming_normal", "kaiming_uniform"] = (
        "glorot_normal")  # Frankle & Carbin 2019, §2: Gaussian Glorot initialisation

    def problems(self) -> list[tuple[str, str]]:
        from trainables.models import MODELS

        return [] if self.arch in MODELS else [("arch", MODELS.unknown_message(self.arch))]


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, where it lives, and how the training split is held out and augmented."""

    dataset: str = "mnist"  # Frankle & Carbin 2019, Fig. 2: LeNet-300-100 on MNIST
    root: str | None = None  # None: $LTH_DATA_ROOT, else ~/.cache/lth-sweeps/data
    download: bool = False  # torchvision may fetch the dataset when the machine is online
    val_size: int | None = None  # None: the dataset's default (5,000 held out, Frankle & Carbin 2019, §2)
    augment: bool | None = None  # None: the dataset's default (pad-4 crop + flip for CIFAR, F&C 2019 App. I)
    # `synthetic` only: generated class-template images of any shape.
    shape: tuple[int, ...] = (1, 28, 28)
    num_classes: int = 10
    train_size: int = 2000
    test_size: int = 500

    def problems(self) -> list[tuple[str, str]]:
        from trainables.data import DATASETS

        out = []
        if self.dataset not in DATASETS:
            out.append(("dataset", DATASETS.unknown_message(self.dataset)))
        if self.val_size is not None and self.val_size < 1:
            out.append(("val_size", f"must be at least 1, got {self.val_size}"))
        if self.dataset != "synthetic":
            for name in ("shape", "num_classes", "train_size", "test_size"):
                if getattr(self, name) != _DEFAULTS[DataConfig][name]:
                    out.append((name, f"applies to dataset 'synthetic' only, not {self.dataset!r}; remove it"))
        if len(self.shape) != 3 or min(self.shape) < 1:
            out.append(("shape", f"must be [channels, height, width], got {list(self.shape)}"))
        for name in ("num_classes", "train_size", "test_size"):
            if getattr(self, name) < (2 if name == "num_classes" else 1):
                out.append((name, f"too small: {getattr(self, name)}"))
        return out


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule and length of one training run, and how often it is evaluated."""

    optimizer: Literal["sgd", "adam"] = "adam"  # Frankle & Carbin 2019, Fig. 2 (LeNet): Adam
    lr: float = 1.2e-3  # Frankle & Carbin 2019, Fig. 2 (LeNet)
    batch_size: int = 60  # Frankle & Carbin 2019, Fig. 2 (LeNet)
    length: str = duration("50000it")  # Frankle & Carbin 2019, Fig. 2 (LeNet): 50K iterations
    momentum: float = 0.9  # SGD only; Frankle & Carbin 2019, Fig. 2 (ResNet, VGG)
    nesterov: bool = False
    weight_decay: float = 0.0  # Frankle & Carbin 2019, Fig. 2: none for LeNet/Conv, 1e-4 for ResNet/VGG
    milestones: tuple[str, ...] = durations()  # lr *= gamma at each; F&C 2019 ResNet: 20000it, 25000it
    gamma: float = 0.1  # Frankle & Carbin 2019, Fig. 2: learning rate divided by 10 at milestones
    warmup: str = duration("0it")  # linear from 0; Frankle & Carbin 2019, §4: 10K (VGG) / 20K (ResNet)
    eval_every: str = duration("1000it")  # resolution of the early-stop iteration
    data_seed: int | None = None  # SGD noise (data order, augmentation); None: the run's seed
    precision: Literal["fp32", "bf16"] = "fp32"  # the papers train in fp32; bf16: autocast, BatchNorm and loss in fp32

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if not self.lr > 0:
            out.append(("lr", f"must be positive, got {self.lr}"))
        if self.batch_size < 1:
            out.append(("batch_size", f"must be at least 1, got {self.batch_size}"))
        if not 0 <= self.momentum < 1:
            out.append(("momentum", f"must be in [0, 1), got {self.momentum}"))
        if self.weight_decay < 0:
            out.append(("weight_decay", f"must be >= 0, got {self.weight_decay}"))
        if not 0 < self.gamma <= 1:
            out.append(("gamma", f"must be in (0, 1], got {self.gamma}"))
        if self.nesterov and self.optimizer != "sgd":
            out.append(("nesterov", "applies to optimizer 'sgd' only"))
        if _DURATION.match(self.length) and int(self.length[:-2]) == 0:
            out.append(("length", "must be at least one iteration"))
        if _DURATION.match(self.eval_every) and int(self.eval_every[:-2]) == 0:
            out.append(("eval_every", "must be at least one iteration"))
        return out


@dataclass(frozen=True)
class PruneConfig:
    """How each IMP level chooses the weights to remove."""

    strategy: str = "magnitude"  # Frankle & Carbin 2019, §2: remove the smallest-magnitude trained weights
    scope: Literal["layerwise", "global"] = "layerwise"  # F&C 2019: layer-wise (LeNet, Conv), global (ResNet, VGG, §4)
    rate: float = 0.2  # Frankle & Carbin 2019, Fig. 2: fc layers lose 20% of remaining weights per level
    conv_rate: float | None = None  # None: `rate`; Frankle & Carbin 2019, Fig. 2: Conv-2/4 10%, Conv-6 15%
    output_rate: float | None = None  # None: rate / 2 (Frankle & Carbin 2019, Fig. 2: output at half the fc rate)
    exclude: tuple[str, ...] = ()  # layer-name patterns (fnmatch) never pruned; F&C 2019 §4: ResNet shortcuts, fc

    def problems(self) -> list[tuple[str, str]]:
        from trainables.pruning import STRATEGIES

        out = [] if self.strategy in STRATEGIES else [("strategy", STRATEGIES.unknown_message(self.strategy))]
        for name in ("rate", "conv_rate", "output_rate"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                out.append((name, f"must be in [0, 1) (a fraction of the remaining weights), got {value}"))
        return out

    def rate_for(self, kind: str) -> float:
        """Per-level rate for a layer kind: 'conv', 'linear' or 'output'."""
        if kind == "conv":
            return self.rate if self.conv_rate is None else self.conv_rate
        if kind == "output":
            return self.rate / 2 if self.output_rate is None else self.output_rate
        return self.rate


@dataclass(frozen=True)
class ImpConfig:
    """The IMP schedule: how many levels, where survivors rewind to, which controls run."""

    levels: int = 15  # Frankle & Carbin 2019, §2: 15-30 levels; 0.8^15 = 3.5% remaining (LeNet's winning range)
    rewind_iter: str = duration("0it")  # 0: original init (F&C 2019); k > 0: late rewinding (Frankle et al. 2020)
    controls: tuple[str, ...] = ()  # `reinit`, `random_mask` (Frankle & Carbin 2019, §2-§4)
    keep_weights: Literal["last", "all"] = "last"  # trained weights of every level, or of the latest only

    def problems(self) -> list[tuple[str, str]]:
        from trainables.imp import CONTROLS

        out = [] if self.levels >= 0 else [("levels", f"must be >= 0, got {self.levels}")]
        for name in self.controls:
            if name not in CONTROLS:
                out.append(("controls", CONTROLS.unknown_message(name)))
        if len(set(self.controls)) != len(self.controls):
            out.append(("controls", f"lists a control twice: {list(self.controls)}"))
        return out


@dataclass(frozen=True)
class StabilityConfig:
    """Linear mode connectivity of a network at the rewind iteration k (`imp.rewind_iter`): two copies
    trained from its state at k with different SGD noise, and the error along the line between them."""

    level: int = 0  # 0: the dense network; L: IMP level L's mask at k (Frankle et al. 2020, "LMC": both studied)
    alpha_points: int = 30  # LMC: 30 evenly spaced alphas, both ends included
    barrier: Literal["endpoints_mean", "linear"] = "endpoints_mean"  # LMC / Entezari et al. 2022 (line between ends)
    threshold: float = 0.02  # LMC: stable when the instability is below 2%
    bn: Literal["interpolate", "recompute"] = "interpolate"  # recompute: REPAIR (Jordan et al. 2023), Git Re-Basin
    bn_batches: int | None = None  # recompute only; None: one epoch of training batches (REPAIR)
    replicates: int = 3  # LMC: three pairs of data orders, reported as mean and standard deviation
    splits: tuple[str, ...] = ("train", "test")  # LMC: train and test instability

    def problems(self) -> list[tuple[str, str]]:
        out = [] if self.level >= 0 else [("level", f"must be >= 0, got {self.level}")]
        if self.alpha_points < 2:
            out.append(("alpha_points", f"must be at least 2 (both ends), got {self.alpha_points}"))
        if not 0 < self.threshold < 1:
            out.append(("threshold", f"must be in (0, 1) (an error difference), got {self.threshold}"))
        if self.bn_batches is not None and self.bn_batches < 1:
            out.append(("bn_batches", f"must be at least 1, got {self.bn_batches}"))
        if self.bn_batches is not None and self.bn != "recompute":
            out.append(("bn_batches", "applies to bn 'recompute' only"))
        if self.replicates < 1:
            out.append(("replicates", f"must be at least 1, got {self.replicates}"))
        unknown = [s for s in self.splits if s not in ("train", "val", "test")]
        if unknown or not self.splits or len(set(self.splits)) != len(self.splits):
            out.append(("splits", f"expected distinct splits from train, val, test, got {list(self.splits)}"))
        return out


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how a run executes; changes nothing a run computes, so never part of its hash."""

    device: str = "auto"  # auto: CUDA when present, else CPU
    eval_batch_size: int = 2000
    channels_last: bool = False  # conv nets in NHWC memory layout (faster convolutions on GPUs)
    compile: bool = False  # torch.compile each model once per run; every level reuses the compiled code

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if not re.match(r"^(auto|cpu|cuda(:\d+)?|mps)$", self.device):
            out.append(("device", f"expected auto, cpu, cuda, cuda:N or mps, got {self.device!r}"))
        if self.eval_batch_size < 1:
            out.append(("eval_batch_size", f"must be at least 1, got {self.eval_batch_size}"))
        return out


@dataclass(frozen=True)
class Config:
    """One IMP run: everything that determines its results, plus where it runs."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    prune: PruneConfig = PruneConfig()
    imp: ImpConfig = ImpConfig()
    stability: StabilityConfig = StabilityConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    seed: int = 0  # initialisation, pruning ties, controls; also SGD noise unless train.data_seed is set

    @property
    def data_seed(self) -> int:
        return self.seed if self.train.data_seed is None else self.train.data_seed

    def with_updates(self, updates: Mapping[str, Any], source: str = "overrides") -> Config:
        """A copy with dotted keys replaced (`{"train.lr": 0.01}`), validated like a file."""
        raw = to_dict(self)
        for key, value in updates.items():
            _set_dotted(raw, key, value)
        return from_dict(raw, source)


# An IMP run's name ignores the stability section: analysing a run never renames it.
_HASH_EXCLUDED = {"runtime", "stability"}
# Everything that decides what dense training (level 0) computes: the key of a shared dense run.
DENSE_SECTIONS = ("model", "data", "train", "seed")


def _defaults(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls)}


_DEFAULTS = {cls: _defaults(cls) for cls in
             (ModelConfig, DataConfig, TrainConfig, PruneConfig, ImpConfig, StabilityConfig, RuntimeConfig,
              Config)}


class ConfigError(ValueError):
    """A config that cannot run; lists every problem with the key that holds it."""

    def __init__(self, source: str, problems: Sequence[str]):
        self.source = source
        self.problems = list(problems)
        super().__init__(f"invalid config ({source}):\n" + "\n".join(f"  - {p}" for p in self.problems))


# ---------------------------------------------------------------------------------------------
# dict <-> dataclass


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


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


class _Problem(Exception):
    pass


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if tp is float:
        return "a number"
    if tp is int:
        return "an integer"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    return str(tp)


def _coerce(value: Any, tp: Any, is_duration: bool) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], is_duration)
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise _Problem(f"expected a list, got {value!r}")
        item = typing.get_args(tp)[0]
        return tuple(_coerce(v, item, is_duration) for v in value)
    if origin is Literal:
        if value not in typing.get_args(tp):
            close = difflib.get_close_matches(str(value), [str(a) for a in typing.get_args(tp)], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _Problem(f"expected {_type_name(tp)}, got {value!r}{hint}")
        return value
    if is_duration:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return f"{value}it"
        if not (isinstance(value, str) and _DURATION.match(value)):
            raise _Problem(f"expected a duration such as '30000it' or '160ep', got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise _Problem(f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Problem(f"expected an integer, got {value!r}")
        return value
    if tp is float:
        # YAML 1.1 reads `1e-3` (no dot) as a string: accept numeric strings.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Problem(f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _Problem(f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config field type {tp}")


def _build(cls: type, raw: Any, prefix: str, problems: list[str]) -> Any:
    if not isinstance(raw, Mapping):
        problems.append(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, got {raw!r}")
        return cls()
    before = len(problems)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"did you mean {prefix}{close[0]!r}?" if close else f"known: {', '.join(fields)}"
            problems.append(f"{prefix}{key}: unknown key ({hint})")
    kwargs = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        if dataclasses.is_dataclass(hints[name]):
            kwargs[name] = _build(hints[name], raw[name], f"{prefix}{name}.", problems)
            continue
        try:
            kwargs[name] = _coerce(raw[name], hints[name], f.metadata.get("duration", False))
        except _Problem as exc:
            problems.append(f"{prefix}{name}: {exc}")
    obj = cls(**kwargs)
    if hasattr(obj, "problems") and len(problems) == before:
        problems.extend(f"{prefix}{key}: {msg}" for key, msg in obj.problems())
    return obj


def from_dict(raw: Mapping[str, Any], source: str = "config") -> Config:
    """Validate a nested dict into a `Config`; every problem is reported at once."""
    problems: list[str] = []
    cfg = _build(Config, raw, "", problems)
    if problems:
        raise ConfigError(source, problems)
    return cfg


# ---------------------------------------------------------------------------------------------
# files, presets, overrides


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError("overrides", [f"{key}: {part!r} is not a section"])
    node[parts[-1]] = value


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) else value
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """'train.lr=0.01' -> ('train.lr', 0.01); values are read as YAML ('[a, b]' is a list)."""
    if "=" not in text:
        raise ConfigError("--set", [f"{text!r}: expected dotted.key=value, e.g. train.lr=0.01"])
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value) if value.strip() else ""


def load_config(path: str | Path | None = None, preset: str | None = None,
                overrides: Sequence[str] | Mapping[str, Any] = ()) -> Config:
    """Defaults <- preset (or a file's `preset:` key) <- file <- dotted overrides."""
    from trainables.presets import PRESETS

    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(source, ["file not found; give the path to a YAML config"]) from None
        except yaml.YAMLError as exc:
            raise ConfigError(source, [f"not valid YAML: {exc}"]) from None
        if not isinstance(loaded, dict):
            raise ConfigError(source, [f"expected a mapping of sections at the top, got {type(loaded).__name__}"])
        raw = dict(loaded)
        preset = raw.pop("preset", None) if preset is None else preset
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(source, [f"preset: {PRESETS.unknown_message(preset)}"])
        raw = _merge(copy.deepcopy(PRESETS.get(preset).values), raw)
        source = f"{source} + preset {preset}" if path else f"preset {preset}"
    items = overrides.items() if isinstance(overrides, Mapping) else map(parse_override, overrides)
    for key, value in items:
        _set_dotted(raw, key, value)
    return from_dict(raw, source)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# ---------------------------------------------------------------------------------------------
# content hashes


def _digest(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def config_hash(cfg: Config) -> str:
    """Names a run: the hash of everything non-default that decides its results."""
    return _digest({k: v for k, v in non_default(cfg).items() if k not in _HASH_EXCLUDED})


def dense_hash(cfg: Config) -> str:
    """Names the dense prefix (level 0): runs that differ only after dense training share it."""
    return _digest({k: v for k, v in non_default(cfg).items() if k in DENSE_SECTIONS})


def stability_hash(cfg: Config) -> str:
    """Names a stability analysis: everything non-default but the runtime, the stability section included."""
    return _digest({k: v for k, v in non_default(cfg).items() if k != "runtime"})


def run_name(cfg: Config) -> str:
    return f"{cfg.model.arch}-{cfg.data.dataset}-{config_hash(cfg)}"
