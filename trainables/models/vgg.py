"""VGG with BatchNorm for CIFAR (Liu et al. 2019; Frankle & Carbin 2019, §4)."""

from __future__ import annotations

import torch
from torch import nn

from trainables.models import MODELS

# Configurations A, D, E of Simonyan & Zisserman 2015; "M" is a 2x2 max-pool.
_CFGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    def __init__(self, cfg: list[int | str], in_channels: int, num_classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        # The CIFAR variant drops the last pool and averages globally into a single fc layer.
        for v in cfg[:-1]:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(in_channels, v, 3, padding=1, bias=False),
                           nn.BatchNorm2d(v), nn.ReLU()]
                in_channels = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def _register(name: str, description: str) -> None:
    MODELS.register(name, description)(
        lambda input_shape, num_classes: VGG(_CFGS[name], input_shape[0], num_classes))


_register("vgg11", "VGG-11 with BatchNorm for CIFAR (Liu et al. 2019); 9.2M weights on CIFAR-10")
_register("vgg16", "VGG-16 with BatchNorm for CIFAR (Liu et al. 2019); 14.7M weights on CIFAR-10")
_register("vgg19", "VGG-19 with BatchNorm for CIFAR (Liu et al. 2019; Frankle & Carbin 2019, Fig. 2); "
                   "20.0M weights on CIFAR-10")
