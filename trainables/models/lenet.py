"""LeNet-300-100 (Frankle & Carbin 2019, Fig. 2)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trainables.models.scale import scaled


class LeNet300100(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0):
        super().__init__()
        self.fc1 = nn.Linear(math.prod(input_shape), scaled(300, width))
        self.fc2 = nn.Linear(scaled(300, width), scaled(100, width))
        self.fc = nn.Linear(scaled(100, width), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc(F.relu(self.fc2(x)))
