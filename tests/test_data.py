"""Datasets, the validation split and the deterministic, resumable training batches."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from trainables.catalog import DATASETS, data_root
from trainables.config import ConfigError, DataConfig
from trainables.data import Dataset, DatasetNotFoundError, download_dataset, load_dataset

MNIST5K = DataConfig(dataset="mnist5k")


def fresh(cfg: DataConfig) -> Dataset:
    """Bypasses load_dataset's cache, to check that loading twice gives the same data."""
    return DATASETS.get(cfg.dataset)(cfg)


def rows(x: torch.Tensor) -> set[bytes]:
    return {bytes(r) for r in x.flatten(1).numpy()}


def toy(x: torch.Tensor, augment: bool = False) -> Dataset:
    """Training data `x` labelled 0..N-1, so a batch's labels say which examples it holds;
    mean 0, std 1/255 make normalised pixels equal the raw uint8 values."""
    c = x.shape[1]
    y = torch.arange(len(x))
    return Dataset("toy", x, y, x[:1], y[:1], x[:1], y[:1], (0.0,) * c, (1 / 255,) * c, augment, len(x))


def test_registry_names_every_dataset():
    assert set(DATASETS.names()) == {"mnist", "fashion_mnist", "cifar10", "cifar100", "mnist5k", "synthetic"}
    assert all(entry.description for entry in DATASETS)


@pytest.mark.slow
def test_mnist5k_shapes_split_and_stratification():
    data = load_dataset(MNIST5K)
    assert load_dataset(MNIST5K) is data  # memoised
    assert (data.x_train.shape, data.x_val.shape, data.x_test.shape) == (
        (3500, 1, 28, 28), (500, 1, 28, 28), (1000, 1, 28, 28))
    for x, y in ((data.x_train, data.y_train), (data.x_val, data.y_val), (data.x_test, data.y_test)):
        assert x.dtype == torch.uint8 and x.is_contiguous() and y.dtype == torch.int64 and len(x) == len(y)
    assert data.y_test.bincount().tolist() == [100] * 10
    assert torch.cat([data.y_train, data.y_val]).bincount().tolist() == [400] * 10
    assert (data.input_shape, data.num_classes, data.augment) == ((1, 28, 28), 10, False)
    assert (data.mean, data.std) == ((0.1307,), (0.3081,))
    torch.manual_seed(123)  # the global RNG plays no part
    again = fresh(MNIST5K)
    for split in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(data, split), getattr(again, split))


@pytest.mark.slow
def test_validation_split_is_disjoint_and_fixed():
    data = load_dataset(MNIST5K)
    train, val, test = rows(data.x_train), rows(data.x_val), rows(data.x_test)
    assert len(train) == len(data.x_train) and len(val) == len(data.x_val)  # the digits are distinct
    assert not train & val and not train & test and not val & test
    larger = fresh(DataConfig(dataset="mnist5k", val_size=800))
    assert len(larger.x_val) == 800 and len(larger.x_train) == 3200
    assert rows(larger.x_train) | rows(larger.x_val) == train | val  # held out from the same 4,000


def test_val_size_too_large_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"data\.val_size: 100 leaves no training data.*'synthetic' has 100 training"):
        fresh(DataConfig(dataset="synthetic", train_size=100, val_size=100))


def test_synthetic_any_shape_and_deterministic():
    cfg = DataConfig(dataset="synthetic", shape=(3, 16, 16), num_classes=5, train_size=300, test_size=70)
    data = fresh(cfg)
    assert (data.x_train.shape, data.x_val.shape, data.x_test.shape) == (
        (270, 3, 16, 16), (30, 3, 16, 16), (70, 3, 16, 16))
    assert data.x_train.dtype == torch.uint8 and data.y_train.dtype == torch.int64
    assert (data.num_classes, data.augment, len(data.mean), len(data.std)) == (5, False, 3, 3)
    assert torch.cat([data.y_train, data.y_val]).bincount().tolist() == [60] * 5
    again = fresh(cfg)
    assert torch.equal(data.x_train, again.x_train) and torch.equal(data.x_test, again.x_test)
    assert fresh(DataConfig(dataset="synthetic", shape=(2, 5, 3), num_classes=3)).input_shape == (2, 5, 3)


def test_synthetic_is_learnable_but_not_trivial():
    data = fresh(DataConfig(dataset="synthetic"))
    train, test = data.x_train.flatten(1).float(), data.x_test.flatten(1).float()
    centroids = torch.stack([train[data.y_train == c].mean(0) for c in range(data.num_classes)])
    accuracy = (torch.cdist(test, centroids).argmin(1) == data.y_test).float().mean()
    assert 0.4 < accuracy < 0.9  # chance is 0.1


@pytest.mark.slow
def test_normalisation_gives_zero_mean_unit_std():
    data = load_dataset(MNIST5K)
    x = torch.cat([x for x, _ in data.eval_batches("train", 1000)])
    assert x.dtype == torch.float32 and x.shape == data.x_train.shape
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05
    indexed = Dataset("indexed", data.x_train, torch.arange(len(data.x_train)), data.x_val, data.y_val,
                      data.x_test, data.y_test, data.mean, data.std, False, len(data.x_train))
    batch, idx = indexed.train_batches(60, seed=0)(7)
    assert batch.shape == (60, 1, 28, 28) and batch.dtype == torch.float32 and idx.dtype == torch.int64
    assert torch.allclose(batch, (data.x_train[idx] / 255 - 0.1307) / 0.3081, atol=1e-5)


def test_eval_batches_are_in_order_and_complete():
    data = toy(torch.randint(0, 256, (10, 1, 4, 4), dtype=torch.uint8))
    batches = list(data.eval_batches("train", 4))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([y for _, y in batches]), torch.arange(10))
    assert torch.equal(torch.cat([x for x, _ in batches]).round().to(torch.uint8), data.x_train)
    with pytest.raises(ValueError, match="split"):
        next(data.eval_batches("validation", 4))


def test_train_batches_are_a_pure_function_of_seed_and_iteration():
    data = toy(torch.randint(0, 256, (103, 1, 6, 6), dtype=torch.uint8), augment=True)
    assert data.steps_per_epoch(10) == 10 and data.steps_per_epoch(500) == 1
    run = data.train_batches(10, seed=3)
    continued = [run(it) for it in range(35)]
    resumed = data.train_batches(10, seed=3)
    for it in (27, 20, 34, 5):  # out of order: each call draws its own epoch
        x, y = resumed(it)
        assert torch.equal(x, continued[it][0]) and torch.equal(y, continued[it][1])
    other = data.train_batches(10, seed=4)
    assert not all(torch.equal(other(it)[1], continued[it][1]) for it in range(10))
    assert not torch.equal(continued[0][1], continued[10][1])  # a new order every epoch


def test_one_epoch_visits_every_example_once():
    data = toy(torch.zeros(120, 1, 2, 2, dtype=torch.uint8))
    batches = data.train_batches(8, seed=0)
    for epoch in range(3):
        seen = torch.cat([batches(epoch * 15 + pos)[1] for pos in range(15)])
        assert torch.equal(seen.sort().values, torch.arange(120))


def check_augmentation(device: str) -> None:
    c, h, w, pad = 3, 8, 10, 4
    image = torch.arange(1, c * h * w + 1, dtype=torch.uint8).view(c, h, w)  # distinct, none black
    x = torch.stack([image, 255 - image] * 200)  # two images, so pixels from another example would show
    data = toy(x, augment=True).to(device)
    padded = torch.nn.functional.pad(x[:2], (pad,) * 4)
    # torchvision RandomCrop(padding=4) then RandomHorizontalFlip, by explicit slicing
    references = {}
    for i in range(2 * pad + 1):
        for j in range(2 * pad + 1):
            crop = padded[:, :, i:i + h, j:j + w]
            references[i, j, False], references[i, j, True] = crop, crop.flip(-1)
    batches = data.train_batches(50, seed=0)
    used = set()
    for it in range(data.steps_per_epoch(50)):
        batch, labels = batches(it)
        for example, label in zip(batch.round().to(torch.uint8).cpu(), labels.tolist()):
            matches = [key for key, ref in references.items() if torch.equal(example, ref[label % 2])]
            assert len(matches) == 1
            used.update(matches)
    assert len(used) > 150  # of the 162 crops and flips, over 400 draws


def test_augmentation_only_shifts_and_flips():
    check_augmentation("cpu")


def test_dataset_to_device_keeps_everything():
    data = fresh(DataConfig(dataset="synthetic", train_size=50, test_size=10))
    moved = data.to("cpu")
    assert (moved.name, moved.mean, moved.augment, moved.num_classes) == (
        data.name, data.mean, data.augment, data.num_classes)
    assert all(torch.equal(getattr(moved, f"{k}_{s}"), getattr(data, f"{k}_{s}"))
               for k in "xy" for s in ("train", "val", "test"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_train_batches_on_cuda():
    data = toy(torch.randint(0, 256, (103, 3, 8, 8), dtype=torch.uint8), augment=True).to("cuda")
    batches = data.train_batches(10, seed=1)
    x, y = batches(13)
    assert x.device.type == "cuda" and y.device.type == "cuda"
    assert torch.equal(data.train_batches(10, seed=1)(13)[0], x)
    assert len(set(torch.cat([batches(pos)[1] for pos in range(10)]).tolist())) == 100
    check_augmentation("cuda")


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST/raw"), ("fashion_mnist", "FashionMNIST/raw"),
                                          ("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_missing_torchvision_dataset_says_where_and_how_to_fix(tmp_path, name, folder):
    with pytest.raises(DatasetNotFoundError) as err:
        fresh(DataConfig(dataset=name, root=str(tmp_path)))
    message = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert str(tmp_path / folder) in message and f"lth data download {name}" in message
    assert list(tmp_path.iterdir()) == []  # nothing downloaded


def _write_idx(path, magic: int, array: np.ndarray) -> None:
    path.write_bytes(struct.pack(">" + "i" * (1 + array.ndim), magic, *array.shape) + array.tobytes())


def test_mnist_from_torchvision_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 12)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", 2051, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", 2049, rng.integers(0, 10, n, dtype=np.uint8))
    data = fresh(DataConfig(dataset="mnist", root=str(tmp_path), val_size=6))
    assert (data.x_train.shape, data.x_val.shape, data.x_test.shape) == (
        (24, 1, 28, 28), (6, 1, 28, 28), (12, 1, 28, 28))
    assert data.x_train.dtype == torch.uint8 and data.y_train.dtype == torch.int64
    assert (data.augment, data.mean, data.num_classes) == (False, (0.1307,), 10)
    with pytest.raises(ValueError, match="has 30 training examples"):
        fresh(DataConfig(dataset="mnist", root=str(tmp_path)))  # the default 5,000 would leave nothing


def test_cifar_layout_and_augment_default(monkeypatch):
    import torchvision.datasets

    images = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)

    class FakeCIFAR10:  # torchvision's in-memory layout: numpy (N, H, W, C), list targets
        def __init__(self, root, train, download):
            self.data, self.targets = images, list(range(10)) * 2

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    data = fresh(DataConfig(dataset="cifar10", val_size=5))
    assert data.input_shape == (3, 32, 32) and data.augment and data.x_test.is_contiguous()
    assert torch.equal(data.x_test, torch.from_numpy(images).permute(0, 3, 1, 2))
    assert not fresh(DataConfig(dataset="cifar10", val_size=5, augment=False)).augment


def test_data_root_and_download_of_offline_sets(monkeypatch, tmp_path):
    monkeypatch.setenv("LTH_DATA_ROOT", str(tmp_path))
    assert str(data_root("/explicit")) == "/explicit"
    assert data_root(None) == tmp_path
    monkeypatch.delenv("LTH_DATA_ROOT")
    assert data_root(None).parts[-3:] == (".cache", "lth-sweeps", "data")
    with pytest.raises(ValueError, match="needs no download"):
        download_dataset("mnist5k", str(tmp_path))
