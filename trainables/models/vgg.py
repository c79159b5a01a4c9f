"""VGG with BatchNorm for CIFAR (Liu et al. 2019; Frankle & Carbin 2019, §4)."""

from __future__ import annotations

import torch
from torch import nn

from trainables.models.scale import scaled

# Configurations A, D, E of Simonyan & Zisserman 2015; "M" is a 2x2 max-pool.
_CFGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    def __init__(self, cfg: list[int | str], in_channels: int, num_classes: int, width: float = 1.0):
        super().__init__()
        layers: list[nn.Module] = []
        # The CIFAR variant drops the last pool and averages globally into a single fc layer.
        for v in cfg[:-1]:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                out = scaled(v, width)
                layers += [nn.Conv2d(in_channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
                in_channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def vgg11(input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0) -> VGG:
    return VGG(_CFGS["vgg11"], input_shape[0], num_classes, width)


def vgg16(input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0) -> VGG:
    return VGG(_CFGS["vgg16"], input_shape[0], num_classes, width)


def vgg19(input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0) -> VGG:
    return VGG(_CFGS["vgg19"], input_shape[0], num_classes, width)
