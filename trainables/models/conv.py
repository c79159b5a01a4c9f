"""Conv-2/4/6: VGG-like nets for CIFAR-10 (Frankle & Carbin 2019, Fig. 2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainables.models.scale import scaled


class ConvNet(nn.Module):
    """3x3 convs in pairs, each pair followed by a 2x2 max-pool, then fc 256, 256, output."""

    def __init__(self, widths: tuple[int, ...], input_shape: tuple[int, int, int], num_classes: int,
                 width: float = 1.0):
        super().__init__()
        channels, height, size = input_shape
        layers: list[nn.Module] = []
        for i, out in enumerate(scaled(w, width) for w in widths):
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.ReLU()]
            if i % 2:
                layers.append(nn.MaxPool2d(2))
            channels = out
        self.features = nn.Sequential(*layers)
        pools = len(widths) // 2
        hidden = scaled(256, width)
        self.fc1 = nn.Linear(channels * (height >> pools) * (size >> pools), hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.features(x), 1)
        return self.fc(F.relu(self.fc2(F.relu(self.fc1(x)))))


def conv2(input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0) -> ConvNet:
    return ConvNet((64, 64), input_shape, num_classes, width)


def conv4(input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0) -> ConvNet:
    return ConvNet((64, 64, 128, 128), input_shape, num_classes, width)


def conv6(input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0) -> ConvNet:
    return ConvNet((64, 64, 128, 128, 256, 256), input_shape, num_classes, width)
