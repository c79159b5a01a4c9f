"""Training-loop throughput: the engine's `train()` against a plain hand-written PyTorch loop.

Both train LeNet-300-100 with Adam on the same device-resident MNIST-shaped tensors (55,000
synthetic images, batch 60), dense and at a pruned level (masks applied after every step).
The plain loop is what a researcher would write by hand: normalised float tensors, one
permutation per epoch, `index_select` (10x faster than `x[idx]` on CPU), forward/backward/step,
`w.mul_(mask)`. Each measurement is
repeated, alternating engine and plain, and the median is kept.

    python bench/loop_speed.py [--iters 3000] [--repeats 5] [--device auto]

Prints iterations/s for both and their ratio (target: engine >= 0.9x plain).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from trainables.config import from_dict
from trainables.data import load_dataset
from trainables.imp import resolve_device
from trainables.masks import Mask, prunable_layers
from trainables.models import build_model
from trainables.pruning import prune
from trainables.train import make_optimizer, train


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(model, data, iterations: int, batch_size: int, lr: float, masks: dict, seed: int) -> None:
    x = ((data.x_train.float() / 255 - data.mean[0]) / data.std[0])
    y = data.y_train
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    modules = dict(model.named_modules())
    pairs = [(modules[n].weight, m.to(x.device, torch.float32)) for n, m in masks.items()]
    g = torch.Generator(device=x.device).manual_seed(seed)
    steps = len(x) // batch_size
    model.train()
    for it in range(iterations):
        if it % steps == 0:
            order = torch.randperm(len(x), generator=g, device=x.device)
        idx = order[(it % steps) * batch_size:(it % steps + 1) * batch_size]
        loss = F.cross_entropy(model(x.index_select(0, idx)), y.index_select(0, idx))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for w, m in pairs:
                w.mul_(m)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.set_num_threads(torch.get_num_threads())

    cfg = from_dict({"data": {"dataset": "synthetic", "shape": [1, 28, 28], "train_size": 60000, "test_size": 1000},
                     "train": {"length": f"{args.iters}it", "eval_every": f"{args.iters}it"}})
    data = load_dataset(cfg.data).to(device)
    template = build_model(cfg.model, data.input_shape, data.num_classes, 0)
    layers = prunable_layers(template)
    dense = Mask.dense(template, layers)
    weights = {l.name: template.get_submodule(l.name).weight.detach() for l in layers}
    pruned = prune(dense, layers, weights, weights, cfg.prune, 7, torch.Generator().manual_seed(0))

    def fresh():
        return build_model(cfg.model, data.input_shape, data.num_classes, 0).to(device)

    def engine(mask: Mask) -> None:
        model = fresh()
        train(model, make_optimizer(model, cfg.train), data, cfg.train, data_seed=0,
              keep_mask=mask.applier(model))

    def plain(mask: Mask) -> None:
        plain_loop(fresh(), data, args.iters, cfg.train.batch_size, cfg.train.lr, mask.tensors, 0)

    def timed(fn, mask) -> float:
        sync(device)
        tic = time.perf_counter()
        fn(mask)
        sync(device)
        return args.iters / (time.perf_counter() - tic)

    print(f"LeNet-300-100, batch {cfg.train.batch_size}, {args.iters} iterations x {args.repeats} repeats "
          f"on {device} ({torch.get_num_threads()} threads), torch {torch.__version__}")
    print(f"{'level':<24}{'engine it/s':>12}{'plain it/s':>12}{'ratio':>8}")
    for name, mask in [("dense", dense), (f"pruned ({pruned.weights_remaining():.1%} left)", pruned)]:
        timed(engine, mask), timed(plain, mask)  # warm-up
        runs = [(timed(engine, mask), timed(plain, mask)) for _ in range(args.repeats)]
        e, p = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        print(f"{name:<24}{e:>12.0f}{p:>12.0f}{e / p:>8.2f}")


if __name__ == "__main__":
    main()
