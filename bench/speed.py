"""Training speed of one IMP level: the engine against a hand-written loop and a DataLoader pipeline.

For each model, at the paper's batch size and optimiser, on its dataset's shape (the real dataset if
it is on disk, else synthetic data of the same shape and size), a pruned level (masks applied after
every step) is trained three ways:
- engine: `trainables.train.train`, as an IMP run trains (uint8 data on the device, batched
  augmentation, no host syncs), with the speed options given (--precision, --channels-last, --compile);
- plain: a hand-written loop, the ceiling: normalised (and padded) float tensors on the device, prepared
  once outside the timing, a permutation per epoch, `index_select`, the same augmentation written with advanced indexing, `w.mul_(mask)`;
- dataloader: the conventional pipeline: a torchvision-transforms Dataset (per-image crop, flip,
  normalise), `DataLoader` (shuffle, workers, pinned memory on CUDA), batches copied to the device.
Each is timed after a warm-up, alternating, the median of --repeats kept; images/s and the seconds one
level takes at the paper's training length are printed with the ratios, and appended to
bench/RESULTS.md with the device and date. On CUDA it also times 4 LeNet trials sharing the GPU
(4 processes, as `resources: {gpu: 0.25}` packs them) against one at a time.

    python bench/speed.py [--models lenet_300_100,conv6,resnet20,vgg19] [--repeats 3] [--device auto]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from trainables.config import Config, from_dict, to_iterations
from trainables.data import DatasetNotFoundError, load_dataset
from trainables.imp import resolve_device
from trainables.masks import Mask, prunable_layers
from trainables.models import build_model
from trainables.presets import PRESETS
from trainables.pruning import prune
from trainables.train import for_speed, make_optimizer, train

RESULTS = Path(__file__).with_name("RESULTS.md")
SIZES = {"mnist": (60_000, (1, 28, 28)), "cifar10": (50_000, (3, 32, 32))}  # training sets; 5K are held out
ITERATIONS = {"cpu": {"lenet_300_100": 600, "conv6": 30, "resnet20": 20, "vgg19": 6},  # per timing: ~5-30 s on CPU
              "cuda": {"lenet_300_100": 3000, "conv6": 600, "resnet20": 400, "vgg19": 200}}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_config(arch: str, args: argparse.Namespace) -> Config:
    """The preset's training settings on its real dataset if present, else synthetic data of the same shape."""
    raw = PRESETS.get(arch)
    cfg = from_dict({**raw, "runtime": {"device": args.device, "channels_last": args.channels_last,
                                        "compile": args.compile}}).with_updates({"train.precision": args.precision})
    try:
        load_dataset(cfg.data)
        return cfg
    except DatasetNotFoundError:
        size, shape = SIZES[cfg.data.dataset]
        augment = cfg.data.augment if cfg.data.augment is not None else cfg.data.dataset == "cifar10"
        return cfg.with_updates({"data.dataset": "synthetic", "data.shape": list(shape), "data.train_size": size,
                                 "data.test_size": 1000, "data.augment": augment})


def step(model, optimizer, pairs, x, y) -> None:
    """One hand-written SGD step with the masks re-applied."""
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        for weight, mask in pairs:
            weight.mul_(mask)


def prepared(data) -> torch.Tensor:
    """The hand-written loop's training images: normalised floats, padded for cropping (done once, untimed)."""
    x = data.normalise(data.x_train)
    return F.pad(x, (4, 4, 4, 4)) if data.augment else x


def plain_loop(model, data, x: torch.Tensor, iterations: int, cfg: Config, masks: dict, seed: int = 0) -> None:
    y = data.y_train
    optimizer = make_optimizer(model, cfg.train)
    pairs = [(model.get_submodule(n).weight, m.to(x.device, torch.float32)) for n, m in masks.items()]
    g = torch.Generator(device=x.device).manual_seed(seed)
    batch, (c, h, w) = cfg.train.batch_size, data.input_shape
    steps = len(x) // batch
    if data.augment:
        rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        image, channel = torch.arange(batch, device=x.device)[:, None, None, None], torch.arange(c, device=x.device)
    model.train()
    for it in range(iterations):
        if it % steps == 0:
            order = torch.randperm(len(x), generator=g, device=x.device)
        idx = order[(it % steps) * batch:(it % steps + 1) * batch]
        xb = x.index_select(0, idx)
        if data.augment:
            dy, dx, flip = torch.randint(0, 9, (3, batch), generator=g, device=x.device)
            xb = xb[image, channel[None, :, None, None], (dy[:, None] + rows)[:, None, :, None],
                    (dx[:, None] + cols)[:, None, None, :]]
            xb = torch.where((flip % 2 == 1)[:, None, None, None], xb.flip(3), xb)
        step(model, optimizer, pairs, xb, y.index_select(0, idx))


def dataloader_loop(model, data, iterations: int, cfg: Config, masks: dict, workers: int) -> None:
    from torch.utils.data import DataLoader, Dataset
    from torchvision.transforms import v2

    device = next(model.parameters()).device
    mean, std = data.mean, data.std
    steps = [v2.RandomCrop(data.input_shape[1:], padding=4), v2.RandomHorizontalFlip()] if data.augment else []
    transform = v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])

    class Images(Dataset):
        def __init__(self):
            self.x, self.y = data.x_train.cpu(), data.y_train.cpu()

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return transform(self.x[i]), self.y[i]

    loader = DataLoader(Images(), batch_size=cfg.train.batch_size, shuffle=True, drop_last=True, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    optimizer = make_optimizer(model, cfg.train)
    pairs = [(model.get_submodule(n).weight, m.to(device, torch.float32)) for n, m in masks.items()]
    model.train()
    it = 0
    while it < iterations:
        for xb, yb in loader:
            step(model, optimizer, pairs, xb.to(device, non_blocking=True), yb.to(device, non_blocking=True))
            it += 1
            if it == iterations:
                break


def bench_model(arch: str, args: argparse.Namespace, device: torch.device) -> dict:
    cfg = model_config(arch, args)
    data = load_dataset(cfg.data).to(device)
    iterations = args.iters or ITERATIONS["cuda" if device.type == "cuda" else "cpu"][arch]
    cfg = cfg.with_updates({"train.length": f"{iterations}it", "train.eval_every": f"{iterations}it"})
    template = build_model(cfg.model, data.input_shape, data.num_classes, 0)
    layers = prunable_layers(template, cfg.prune.exclude)
    weights = {l.name: template.get_submodule(l.name).weight.detach() for l in layers}
    mask = prune(Mask.dense(template, layers), layers, weights, weights, cfg.prune, 5, torch.Generator().manual_seed(0))

    def fresh():
        model = build_model(cfg.model, data.input_shape, data.num_classes, 0).to(device)
        return for_speed(model, cfg.train.precision, cfg.runtime.channels_last, cfg.runtime.compile)

    def engine():
        model = fresh()
        train(model, make_optimizer(model, cfg.train), data, cfg.train, data_seed=0, keep_mask=mask.applier(model))

    images = prepared(data)

    def plain():
        plain_loop(build_model(cfg.model, data.input_shape, data.num_classes, 0).to(device), data, images, iterations,
                   cfg, mask.tensors)

    def loader():
        dataloader_loop(build_model(cfg.model, data.input_shape, data.num_classes, 0).to(device), data, iterations,
                        cfg, mask.tensors, args.workers)

    def timed(fn) -> float:
        sync(device)
        tic = time.perf_counter()
        fn()
        sync(device)
        return iterations * cfg.train.batch_size / (time.perf_counter() - tic)

    ways = {"engine": engine, "plain": plain, "dataloader": loader}
    for fn in ways.values():
        timed(fn)  # warm-up: kernels, compilation, allocator, worker start
    runs = {name: [] for name in ways}
    for _ in range(args.repeats):
        for name, fn in ways.items():
            runs[name].append(timed(fn))
    speed = {name: statistics.median(values) for name, values in runs.items()}
    paper = PRESETS.get(arch)["train"]["length"]
    level_iters = to_iterations(paper, data.steps_per_epoch(cfg.train.batch_size))
    return {"arch": arch, "data": f"{cfg.data.dataset} {list(data.input_shape)}", "batch": cfg.train.batch_size,
            "remaining": mask.weights_remaining(), "iterations": iterations, **speed,
            "level_seconds": level_iters * cfg.train.batch_size / speed["engine"], "level_iters": level_iters}


def packed(args: argparse.Namespace) -> tuple[float, float]:
    """Images/s of 4 LeNet trainings in 4 processes sharing the GPU, and of one alone."""
    command = [sys.executable, __file__, "--models", "lenet_300_100", "--one-engine-run", "--device", args.device,
               "--precision", args.precision]

    def throughput(n: int) -> float:
        tic = time.perf_counter()
        procs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(n)]
        images = sum(float(p.communicate()[0].split()[-1]) for p in procs)
        return images / (time.perf_counter() - tic)

    return throughput(4), throughput(1)


def one_engine_run(args: argparse.Namespace, device: torch.device) -> None:
    """One process of the packing measurement: a LeNet level of 20,000 iterations; prints its images."""
    cfg = model_config("lenet_300_100", args).with_updates({"train.length": "20000it", "train.eval_every": "20000it"})
    data = load_dataset(cfg.data).to(device)
    model = build_model(cfg.model, data.input_shape, data.num_classes, 0).to(device)
    train(model, make_optimizer(model, cfg.train), data, cfg.train, data_seed=0)
    sync(device)
    print(20000 * cfg.train.batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet_300_100,conv6,resnet20,vgg19")
    parser.add_argument("--iters", type=int, help="iterations per timing (default: per model and device)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--workers", type=int, help="DataLoader workers (default: 4 on CUDA, 0 on CPU)")
    parser.add_argument("--no-write", action="store_true", help="do not append to bench/RESULTS.md")
    parser.add_argument("--one-engine-run", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.one_engine_run:
        return one_engine_run(args, device)
    if args.workers is None:
        args.workers = 4 if device.type == "cuda" else 0
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    options = f"precision {args.precision}, channels_last {args.channels_last}, compile {args.compile}"
    lines = [f"## {datetime.date.today()}: {name}, torch {torch.__version__}", "",
             f"Engine options: {options}; DataLoader workers: {args.workers}; median of {args.repeats}.", "",
             "| model | data | batch | remaining | engine img/s | plain img/s | DataLoader img/s | engine/plain | "
             "engine/DataLoader | s per level (paper's length) |", "|---|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines[:3]), flush=True)
    for arch in args.models.split(","):
        r = bench_model(arch, args, device)
        lines.append(f"| {arch} | {r['data']} | {r['batch']} | {r['remaining']:.1%} | {r['engine']:,.0f} | "
                     f"{r['plain']:,.0f} | {r['dataloader']:,.0f} | {r['engine'] / r['plain']:.2f} | "
                     f"{r['engine'] / r['dataloader']:.2f} | {r['level_seconds']:,.0f} ({r['level_iters']:,} it) |")
        print(lines[-1], flush=True)
    if device.type == "cuda":
        four, one = packed(args)
        lines += ["", f"Packed: 4 LeNet trials sharing the GPU {four:,.0f} img/s, one at a time {one:,.0f} img/s: "
                      f"**{four / one:.2f}x**"]
    else:
        lines += ["", "Packed trials: skipped (no CUDA device)."]
    print(lines[-1])
    if not args.no_write:
        with open(RESULTS, "a") as f:
            f.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
