"""Twin training for stability analysis: both copies batched (vmapped) against two ordinary `train()` runs.

Both start from the same state (a dense network at iteration 0 with its optimiser) and train the two
copies with data seeds 1 and 2 to the end: `train_twins` in one batched program, or `train()` twice,
one copy after the other. LeNet-300-100 with Adam on MNIST-shaped synthetic data (55,000 images,
batch 60), and a small conv net (Conv-2 on CIFAR-shaped data, 3x32x32, or `--conv` another
registered net). Each measurement is repeated, alternating batched and sequential, and the median
is kept.

    python bench/stability_speed.py [--iters 500] [--conv-iters 50] [--repeats 3] [--device auto] [--threads N]

Prints iterations/s (of both copies together) for both and their ratio (batched / sequential).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from trainables.config import from_dict
from trainables.data import load_dataset
from trainables.imp import Start, resolve_device
from trainables.masks import Mask
from trainables.models import build_model
from trainables.stability import train_twins
from trainables.train import make_optimizer, train

SEEDS = (1, 2)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(arch: str, shape: list[int], iters: int, repeats: int, device: torch.device) -> None:
    cfg = from_dict({"model": {"arch": arch},
                     "data": {"dataset": "synthetic", "shape": shape, "train_size": 60000, "test_size": 1000},
                     "train": {"length": f"{iters}it", "eval_every": f"{iters}it"}})
    data = load_dataset(cfg.data).to(device)

    def start() -> Start:
        model = build_model(cfg.model, data.input_shape, data.num_classes, 0).to(device)
        return Start(model, make_optimizer(model, cfg.train), Mask({}))

    def batched() -> None:
        train_twins(start(), data, cfg.train, SEEDS, 0)

    def sequential() -> None:
        for seed in SEEDS:
            s = start()
            train(s.model, s.optimizer, data, cfg.train, data_seed=seed)

    def timed(fn) -> float:
        sync(device)
        tic = time.perf_counter()
        fn()
        sync(device)
        return iters / (time.perf_counter() - tic)

    timed(batched), timed(sequential)  # warm-up
    runs = [(timed(batched), timed(sequential)) for _ in range(repeats)]
    b, s = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
    name = f"{arch} {'x'.join(map(str, shape))}"
    print(f"{name:<28}{iters:>7}{b:>14.1f}{s:>16.1f}{b / s:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=500, help="LeNet iterations per copy")
    parser.add_argument("--conv-iters", type=int, default=50, help="conv net iterations per copy")
    parser.add_argument("--conv", default="conv2", help="the conv net (a registered architecture)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads (intra-op)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    print(f"two copies, batch 60, Adam, {args.repeats} repeats on {device} ({torch.get_num_threads()} threads), "
          f"torch {torch.__version__}")
    print(f"{'network':<28}{'iters':>7}{'batched it/s':>14}{'sequential it/s':>16}{'ratio':>8}")
    bench("lenet_300_100", [1, 28, 28], args.iters, args.repeats, device)
    bench(args.conv, [3, 32, 32], args.conv_iters, args.repeats, device)


if __name__ == "__main__":
    main()
