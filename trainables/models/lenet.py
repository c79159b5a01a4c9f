"""LeNet-300-100 (Frankle & Carbin 2019, Fig. 2)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LeNet300100(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        self.fc1 = nn.Linear(math.prod(input_shape), 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc(F.relu(self.fc2(x)))
