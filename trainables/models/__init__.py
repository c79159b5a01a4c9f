"""The LTH papers' networks (registered in `trainables.catalog.MODELS`) and their seeded initialisation.

Conventions the pruning code relies on: only `nn.Conv2d` and `nn.Linear` weights are
prunable; the last `nn.Linear` is the output layer and is called `fc`; ResNet 1x1
projection convs have `shortcut` in their name.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from trainables.catalog import MODELS
from trainables.config import ModelConfig

_INITS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    # Frankle & Carbin 2019, §2: Gaussian Glorot.
    "glorot_normal": lambda w, g: nn.init.xavier_normal_(w, generator=g),
    "glorot_uniform": lambda w, g: nn.init.xavier_uniform_(w, generator=g),
    "kaiming_normal": lambda w, g: nn.init.kaiming_normal_(w, nonlinearity="relu", generator=g),
    "kaiming_uniform": lambda w, g: nn.init.kaiming_uniform_(w, nonlinearity="relu", generator=g),
}


def build_model(cfg: ModelConfig, input_shape: tuple[int, int, int], num_classes: int,
                seed: int) -> nn.Module:
    """The network `cfg.arch` (hidden layers `cfg.width` times as wide) on CPU, its weights a function of `seed`
    alone."""
    builder = MODELS.get(cfg.arch)
    # Built on the meta device so PyTorch's default initialisation neither draws from the
    # global RNG (which would shift every later draw in the process) nor wastes time.
    with torch.device("meta"):
        model = builder(tuple(input_shape), num_classes, width=cfg.width)
    model.to_empty(device="cpu")
    init_weights(model, cfg.init, torch.Generator().manual_seed(seed), cfg.bn_init)
    return model


def init_weights(model: nn.Module, scheme: str, generator: torch.Generator, bn_init: str) -> None:
    """Conv/Linear weights by `scheme`, biases 0, BatchNorm weights 1 (or U[0, 1) with `bn_init: uniform`, drawn
    from the same generator in module order) and biases 0."""
    init = _INITS[scheme]
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            init(module.weight, generator)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            if bn_init == "uniform":
                nn.init.uniform_(module.weight, 0.0, 1.0, generator=generator)
            else:
                nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
            module.reset_running_stats()
        elif [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            # to_empty left its tensors as uninitialised memory.
            raise TypeError(f"no initialisation for {type(module).__name__} at {name!r}")
