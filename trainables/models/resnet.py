"""CIFAR ResNets (He et al. 2016, §4.2), as pruned in Frankle & Carbin 2019, §4."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainables.models.scale import scaled


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        # A 1x1 projection where the shape changes (He et al.'s option B).
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """A 3x3 stem, then 3 stages of n blocks at widths 16/32/64 (stride 2 entering stages 2, 3)."""

    def __init__(self, depth: int, in_channels: int, num_classes: int,
                 widths: tuple[int, ...] = (16, 32, 64), width: float = 1.0):
        super().__init__()
        n = (depth - 2) // 6
        widths = tuple(scaled(w, width) for w in widths)
        self.conv = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        blocks, channels = [], widths[0]
        for stage, width in enumerate(widths):
            for i in range(n):
                blocks.append(BasicBlock(channels, width, 2 if stage and not i else 1))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet20(input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0) -> ResNet:
    return ResNet(20, input_shape[0], num_classes, width=width)


def resnet56(input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0) -> ResNet:
    return ResNet(56, input_shape[0], num_classes, width=width)
