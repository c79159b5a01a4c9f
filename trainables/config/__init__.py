"""Typed, frozen configuration of one run, and the content hashes that name runs.

A leaf package (it imports nothing else of the project), so validating a config never loads torch;
registry names are checked by `trainables.catalog`. Defaults are the LTH paper's LeNet-300-100 setting
(Frankle & Carbin 2019, Fig. 2), each with its source in one line. A run is named by the hash of its
non-default fields, so a new field whose default is today's behaviour renames no run
(`tests/test_config.py` pins the hashes). The schema builder is `trainables.config.schema`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Literal, Mapping

from trainables.config.schema import (Check, ConfigError, UserError, build, did_you_mean, duration,  # noqa: F401
                                      non_default, parse_duration, ranged, set_dotted, to_dict, to_iterations)


@dataclass(frozen=True)
class ModelConfig:
    """The network and how its weights are initialised."""

    arch: str = "lenet_300_100"  # Frankle & Carbin 2019, Fig. 2: LeNet-300-100, the paper's first net
    init: Literal["glorot_normal", "glorot_uniform", "kaiming_normal", "kaiming_uniform"] = (
        "glorot_normal")  # Frankle & Carbin 2019, §2: Gaussian Glorot initialisation
    bn_init: Literal["ones", "uniform"] = "ones"  # BatchNorm weights: 1 (F&C 2019); U[0, 1) (LMC code, open_lth)
    # Every hidden layer's units or channels times this; 1: the papers' nets (Git Re-Basin, Entezari et al.: wider)
    width: float = ranged(1.0, ">0")


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, where it lives, and how the training split is held out and augmented."""

    dataset: str = "mnist"  # Frankle & Carbin 2019, Fig. 2: LeNet-300-100 on MNIST
    root: str | None = None  # None: $LTH_DATA_ROOT, else ~/.cache/lth-sweeps/data
    download: bool = False  # torchvision may fetch the dataset when the machine is online
    val_size: int | None = ranged(None, ">=1")  # None: the dataset's default (5,000 held out, F&C 2019, §2)
    augment: bool | None = None  # None: the dataset's default (pad-4 crop + flip for CIFAR, F&C 2019 App. I)
    # `synthetic` only: generated class-template images of any shape.
    shape: tuple[int, ...] = (1, 28, 28)
    num_classes: int = ranged(10, ">=2")
    train_size: int = ranged(2000, ">=1")
    test_size: int = ranged(500, ">=1")

    def problems(self) -> list[tuple[str, str]]:
        out = [(f.name, f"applies to dataset 'synthetic' only, not {self.dataset!r}; remove it")
               for f in dataclasses.fields(self) if f.name in ("shape", "num_classes", "train_size", "test_size")
               and self.dataset != "synthetic" and getattr(self, f.name) != f.default]
        if len(self.shape) != 3 or min(self.shape) < 1:
            out.append(("shape", f"must be [channels, height, width], got {list(self.shape)}"))
        return out


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule and length of one training run, and how often it is evaluated."""

    optimizer: Literal["sgd", "adam"] = "adam"  # Frankle & Carbin 2019, Fig. 2 (LeNet): Adam
    lr: float = ranged(1.2e-3, ">0")  # Frankle & Carbin 2019, Fig. 2 (LeNet)
    batch_size: int = ranged(60, ">=1")  # Frankle & Carbin 2019, Fig. 2 (LeNet)
    length: str = duration("50000it")  # Frankle & Carbin 2019, Fig. 2 (LeNet): 50K iterations
    momentum: float = ranged(0.9, "[0,1)")  # SGD only; Frankle & Carbin 2019, Fig. 2 (ResNet, VGG)
    nesterov: bool = False
    weight_decay: float = ranged(0.0, ">=0")  # Frankle & Carbin 2019, Fig. 2: none for LeNet/Conv, 1e-4 ResNet/VGG
    milestones: tuple[str, ...] = duration(())  # lr *= gamma at each; F&C 2019 ResNet: 20000it, 25000it
    gamma: float = ranged(0.1, "(0,1]")  # Frankle & Carbin 2019, Fig. 2: learning rate divided by 10 at milestones
    warmup: str = duration("0it")  # linear from 0; Frankle & Carbin 2019, §4: 10K (VGG) / 20K (ResNet)
    eval_every: str = duration("1000it")  # resolution of the early-stop iteration
    data_seed: int | None = None  # SGD noise (data order, augmentation); None: the run's seed
    # fresh: each training after the dense run draws its own order from (data_seed, level, variant), as
    # open_lth does; replay: every training replays the dense run's order (this project before 2026-12)
    data_order: Literal["fresh", "replay"] = "fresh"
    precision: Literal["fp32", "bf16"] = "fp32"  # the papers train in fp32; bf16: autocast, BatchNorm and loss in fp32

    def problems(self) -> list[tuple[str, str]]:
        out = [(name, "must be at least one iteration") for name in ("length", "eval_every")
               if parse_duration(getattr(self, name))[0] == 0]
        if self.nesterov and self.optimizer != "sgd":
            out.append(("nesterov", "applies to optimizer 'sgd' only"))
        return out


_FRACTION = "(a fraction of the remaining weights)"


@dataclass(frozen=True)
class PruneConfig:
    """How each IMP level chooses the weights to remove."""

    strategy: str = "magnitude"  # Frankle & Carbin 2019, §2: remove the smallest-magnitude trained weights
    scope: Literal["layerwise", "global"] = "layerwise"  # F&C 2019: layer-wise (LeNet, Conv), global (ResNet, VGG, §4)
    rate: float = ranged(0.2, "[0,1)", _FRACTION)  # Frankle & Carbin 2019, Fig. 2: fc layers lose 20% per level
    conv_rate: float | None = ranged(None, "[0,1)", _FRACTION)  # None: `rate`; F&C 2019: Conv-2/4 10%, Conv-6 15%
    output_rate: float | None = ranged(None, "[0,1)", _FRACTION)  # None: rate / 2 (F&C 2019: output at half fc)
    exclude: tuple[str, ...] = ()  # layer-name patterns (fnmatch) never pruned; F&C 2019 §4: ResNet shortcuts, fc
    # imp: IMP's levels; a pruning-at-initialisation method (`lth list methods`, `kind: pruning_at_init`): each
    # level's mask chosen before training at IMP's weights remaining for that level (Frankle et al. 2021)
    method: str = "imp"

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

    levels: int = ranged(15, ">=0")  # Frankle & Carbin 2019, §2: 15-30 levels; 0.8^15 = 3.5% remaining
    rewind_iter: str = duration("0it")  # 0: original init (F&C 2019); k > 0: late rewinding (Frankle et al. 2020)
    # `lth list controls`; reinit and random_mask: Frankle & Carbin 2019, §2-§4. A control with parameters is
    # written name(key=value, ...), e.g. random_mask(start=end); trainables.catalog checks names and parameters
    controls: tuple[str, ...] = ()
    keep_weights: Literal["last", "all"] = "last"  # trained weights of every level, or of the latest only
    # reset: every variant starts at k with a fresh optimiser, schedule position kept (open_lth); restore: the
    # dense optimiser's state at k for every variant that starts from rewound weights (before 2026-12)
    rewind_optimizer: Literal["reset", "restore"] = "reset"
    # rewind: weights and schedule back to k (F&C 2019, Frankle et al. 2020); lr_rewind: the previous level's
    # trained weights, the schedule replayed from k; finetune: trained weights at the final rate (Renda et al. 2020)
    retrain: Literal["rewind", "lr_rewind", "finetune"] = "rewind"

    def problems(self) -> list[tuple[str, str]]:
        twice = len(set(self.controls)) != len(self.controls)
        return [("controls", f"lists a control twice: {list(self.controls)}")] if twice else []


@dataclass(frozen=True)
class StabilityConfig:
    """Linear mode connectivity of a network at the rewind iteration k (`imp.rewind_iter`): two networks
    trained from k (copies with different SGD noise, or two initialisations), the second optionally permuted
    into alignment with the first, and the error along the line between them."""

    level: int = ranged(0, ">=0")  # 0: the dense network; L: IMP level L's mask at k (Frankle et al. 2020, LMC)
    alpha_points: int = ranged(30, ">=2", "(both ends)")  # LMC: 30 evenly spaced alphas, both ends included
    barrier: Literal["endpoints_mean", "linear"] = "endpoints_mean"  # LMC / Entezari et al. 2022 (line between ends)
    threshold: float = ranged(0.02, "(0,1)", "(an error difference)")  # LMC: stable below 2% instability
    # interpolate: the ends' statistics interpolated (LMC); recompute: BatchNorm statistics re-estimated (RESET,
    # Jordan et al. 2023); repair: each unit rescaled to the interpolated ends' mean and std (REPAIR, same paper)
    bn: Literal["interpolate", "recompute", "repair"] = "interpolate"
    bn_batches: int | None = ranged(None, ">=1")  # recompute, repair; None: one epoch of training batches (Jordan et al.)
    replicates: int = ranged(3, ">=1")  # LMC: three pairs of data orders, reported as mean and standard deviation
    splits: tuple[str, ...] = ("train", "test")  # LMC: train and test instability
    # sgd_noise: two copies of one network (LMC); independent: two initialisations, same recipe (Entezari et al.)
    pair: Literal["sgd_noise", "independent"] = "sgd_noise"
    # the second network permuted onto the first: weight or activation matching (Ainsworth et al. 2023, Git Re-Basin)
    align: Literal["none", "weights", "activations"] = "none"

    def problems(self) -> list[tuple[str, str]]:
        out = [("bn_batches", "applies to bn 'recompute' only, or 'repair' (the modes that estimate statistics); "
                              "remove it for 'interpolate'")] if (self.bn_batches is not None and
                                                                   self.bn == "interpolate") else []
        unknown = [s for s in self.splits if s not in ("train", "val", "test")]
        if unknown or not self.splits or len(set(self.splits)) != len(self.splits):
            out.append(("splits", f"expected distinct splits from train, val, test, got {list(self.splits)}"))
        return out


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how a run executes; changes nothing a run computes, so never part of its hash."""

    device: str = "auto"  # auto: CUDA when present, else CPU
    eval_batch_size: int = ranged(2000, ">=1")
    channels_last: bool = False  # conv nets in NHWC memory layout (faster convolutions on GPUs)
    compile: bool = False  # torch.compile each model once per run; every level reuses the compiled code

    def problems(self) -> list[tuple[str, str]]:
        if re.match(r"^(auto|cpu|cuda(:\d+)?|mps)$", self.device):
            return []
        return [("device", f"expected auto, cpu, cuda, cuda:N or mps, got {self.device!r}")]


@dataclass(frozen=True)
class Config:
    """One run: everything that determines its results, plus where it runs."""

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
        """A copy with dotted keys replaced (`{"train.lr": 0.01}`), type- and range-checked like a file
        (`trainables.catalog` also checks registry names)."""
        raw = to_dict(self)
        for key, value in updates.items():
            set_dotted(raw, key, value)
        return from_dict(raw, source)


def from_dict(raw: Mapping[str, Any], source: str = "config", check: Check | None = None) -> Config:
    """Validate a nested dict into a `Config` (types and ranges); every problem is reported at once."""
    problems: list[str] = []
    cfg = build(Config, raw, "", problems, check)
    if problems:
        raise ConfigError(source, problems)
    return cfg


# ---------------------------------------------------------------------------------------------
# content hashes: what names a run, a dense run, an analysis, and what decides a mask

# An IMP run's name ignores the stability section: analysing a run never renames it.
_HASH_EXCLUDED = {"runtime", "stability"}
# Everything that decides what dense training (level 0) computes: the key of a shared dense run.
DENSE_SECTIONS = ("model", "data", "train", "seed")
_NOT_DENSE = ("data_order",)  # the dense run keeps the data seed's order under every data order
# What never changes an IMP run's masks: how far it goes, what it trains beside the ticket, what it keeps.
# Everything else decides them, keys added later included.
_NOT_MASK = {"runtime": None, "stability": None, "imp": ("levels", "controls", "keep_weights")}


def _digest(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def config_hash(cfg: Config) -> str:
    """Names a run: the hash of everything non-default that decides its results."""
    return _digest({k: v for k, v in non_default(cfg).items() if k not in _HASH_EXCLUDED})


def dense_hash(cfg: Config) -> str:
    """Names the dense prefix (level 0): runs that differ only after dense training share it."""
    raw = {k: v for k, v in non_default(cfg).items() if k in DENSE_SECTIONS}
    raw["train"] = {k: v for k, v in raw.get("train", {}).items() if k not in _NOT_DENSE}
    return _digest({k: v for k, v in raw.items() if v != {}})


def stability_hash(cfg: Config) -> str:
    """Names a stability analysis: everything non-default but the runtime, the stability section included."""
    return _digest({k: v for k, v in non_default(cfg).items() if k != "runtime"})


# Protocol keys whose default changed, and the value every run made before the key existed used: a stored
# config that lacks one was made under that value, and is read as such.
PROTOCOL_CHANGES = {"train.data_order": "replay", "imp.rewind_optimizer": "restore"}


def as_made(raw: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A stored config with each protocol key it lacks set to the value it was made under; and those keys."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
    missing = []
    for key, legacy in PROTOCOL_CHANGES.items():
        section, name = key.split(".")
        if isinstance(out.get(section), dict) and name not in out[section]:
            out[section][name] = legacy
            missing.append(key)
    return out, missing


def mask_key(cfg: Config) -> dict[str, Any]:
    """Every setting that decides an IMP run's masks: two runs with equal keys compute equal masks."""
    raw = {k: v for k, v in to_dict(cfg).items() if k not in _NOT_MASK or _NOT_MASK[k]}
    raw["imp"] = {k: v for k, v in raw["imp"].items() if k not in _NOT_MASK["imp"]}
    return raw


def run_name(cfg: Config) -> str:
    return f"{cfg.model.arch}-{cfg.data.dataset}-{config_hash(cfg)}"
