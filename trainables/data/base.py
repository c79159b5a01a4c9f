"""An in-memory image dataset and its training batches, built for a bare, device-resident loop.

Images stay uint8 on the device; a batch is gathered, augmented and normalised with a handful
of batched tensor ops, so there is no DataLoader, no per-example Python and no host sync.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from typing import Iterator

import torch
from torch import Tensor

_MASK64 = (1 << 64) - 1
_PAD = 4  # torchvision RandomCrop(32, padding=4), Frankle & Carbin 2019, App. I


def mix_seed(*parts: int) -> int:
    """A well-spread generator seed from integers (SplitMix64), stable across processes and
    platforms, unlike Python's `hash`; nearby (seed, epoch) pairs give unrelated streams."""
    h = 0
    for part in parts:
        h = (h + (part & _MASK64) + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h >> 1  # 63 bits: valid for every torch.Generator


@dataclass(frozen=True, eq=False)  # identity equality: tensors have no truth value
class Dataset:
    name: str
    x_train: Tensor  # uint8 (N, C, H, W), contiguous
    y_train: Tensor  # int64 (N,)
    x_val: Tensor  # held out from the training data, never trained on
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    mean: tuple[float, ...]  # per channel, in [0, 1] pixel units
    std: tuple[float, ...]
    augment: bool  # pad-4 random crop + horizontal flip
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device | str) -> Dataset:
        return dataclasses.replace(self, **{f"{k}_{s}": getattr(self, f"{k}_{s}").to(device)
                                            for k in "xy" for s in ("train", "val", "test")})

    @cached_property
    def affine(self) -> tuple[Tensor, Tensor]:
        """(scale, shift), each (1, C, 1, 1): normalised = uint8 * scale + shift."""
        kw = dict(dtype=torch.float32, device=self.x_train.device)
        mean = torch.tensor(self.mean, **kw).view(1, -1, 1, 1)
        std = torch.tensor(self.std, **kw).view(1, -1, 1, 1)
        return (1 / 255) / std, -mean / std

    def normalise(self, x: Tensor) -> Tensor:
        scale, shift = self.affine
        return x.float().mul_(scale).add_(shift)  # in place: a third faster than addcmul on CPU

    def steps_per_epoch(self, batch_size: int) -> int:
        return max(1, len(self.y_train) // batch_size)

    def train_batches(self, batch_size: int, seed: int) -> TrainBatches:
        return TrainBatches(self, batch_size, seed)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        if split not in ("train", "val", "test"):
            raise ValueError(f"unknown split {split!r}; expected 'train', 'val' or 'test'")
        x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
        for start in range(0, len(y), batch_size):
            yield self.normalise(x[start:start + batch_size]), y[start:start + batch_size]


class TrainBatches:
    """`batches(it)`: the training batch of iteration `it`, a pure function of (seed, it).

    Each epoch's order (and augmentation draws) come from a generator seeded by (seed, epoch),
    so resuming at any iteration replays exactly the batches an uninterrupted run would see.
    """

    def __init__(self, data: Dataset, batch_size: int, seed: int):
        self.data = data
        self.seed = seed
        self.steps = data.steps_per_epoch(batch_size)
        self.size = min(batch_size, len(data.y_train))
        self.epoch: int | None = None
        device = data.x_train.device
        self.generator = torch.Generator(device=device)
        if data.augment:
            # Crops are read from a padded buffer holding the batch and its mirror image. An
            # overlapping strided view has a (C, H, W) window starting at every element, so
            # cropping the whole batch is one index_select of window starts.
            c, h, w = data.input_shape
            hp, wp = h + 2 * _PAD, w + 2 * _PAD
            self.buffer = torch.zeros(2, self.size, c, hp, wp, dtype=torch.uint8, device=device)
            self.inner = self.buffer[..., _PAD:_PAD + h, _PAD:_PAD + w]
            last = (c - 1) * hp * wp + (h - 1) * wp + (w - 1)  # offset of a window's last element
            self.windows = self.buffer.as_strided((self.buffer.numel() - last, c, h, w), (1, hp * wp, wp, 1))
            self.image_starts = torch.arange(self.size, device=device) * (c * hp * wp)
            self.mirror_start, self.row_stride = self.size * c * hp * wp, wp

    def _draw(self, epoch: int) -> None:
        n, device, g = len(self.data.y_train), self.data.x_train.device, self.generator
        g.manual_seed(mix_seed(self.seed, epoch))
        self.order = torch.randperm(n, generator=g, device=device)
        if self.data.augment:
            rows, cols = torch.randint(0, 2 * _PAD + 1, (2, n), generator=g, device=device)
            # A uniform crop of the mirror image is a mirrored uniform crop, as torchvision draws it.
            flips = torch.randint(0, 2, (n,), generator=g, device=device)
            self.crop_starts = flips * self.mirror_start + rows * self.row_stride + cols
        self.epoch = epoch

    def __call__(self, it: int) -> tuple[Tensor, Tensor]:
        epoch, pos = divmod(it, self.steps)
        if epoch != self.epoch:
            self._draw(epoch)
        batch = slice(pos * self.size, (pos + 1) * self.size)
        idx = self.order[batch]
        x = self.data.x_train.index_select(0, idx)  # not x[idx]: advanced indexing is 10x slower on CPU
        if self.data.augment:
            self.inner[0].copy_(x)
            self.inner[1].copy_(x.flip(3))
            x = self.windows.index_select(0, self.crop_starts[batch] + self.image_starts)
        return self.data.normalise(x), self.data.y_train.index_select(0, idx)
