"""What evaluating often costs: per paper preset, the time of one evaluation (validation + test split) against
the time of the `eval_every` training steps between two evaluations, at the preset's `eval_every` and at
the coarser one presets used before (1,000 iterations for Conv-N, 2,000 for ResNet and VGG).

The early-stop iteration (minimum validation loss) is only as fine as the evaluations: presets now evaluate
at least every 1% of training. This script measures what that costs on this machine's device, with
synthetic data of each dataset's real shape and split sizes (an evaluation is timed on a slice and scaled to
the whole validation and test splits), and prints the overhead as a fraction of training time.

    python bench/eval_cost.py [--presets lenet_300_100,resnet20] [--eval-images 1000] [--steps 5]
"""

from __future__ import annotations

import argparse
import time

import torch

from trainables.catalog import load_config, split_sizes, steps_per_epoch
from trainables.config import to_iterations
from trainables.data import load_dataset
from trainables.imp import resolve_device
from trainables.models import build_model
from trainables.train import evaluate, make_optimizer, train

OLD_EVAL_EVERY = {"lenet_300_100": 100, "conv2": 1000, "conv4": 1000, "conv6": 1000, "resnet20": 2000,
                  "resnet56": 2000, "vgg11": 2000, "vgg16": 2000, "vgg19": 2000}
TEST_IMAGES = 10_000  # MNIST and CIFAR test sets


def measure(name: str, eval_images: int, steps: int) -> dict:
    cfg = load_config(preset=name)
    real = cfg.data
    shape = (1, 28, 28) if real.dataset.endswith("mnist") else (3, 32, 32)
    cfg = cfg.with_updates({"data.dataset": "synthetic", "data.shape": list(shape), "data.train_size": 2000,
                            "data.test_size": eval_images, "runtime.device": "auto"})
    device = resolve_device(cfg.runtime.device)
    data = load_dataset(cfg.data).to(device)
    model = build_model(cfg.model, data.input_shape, data.num_classes, 0).to(device)
    optimizer = make_optimizer(model, cfg.train)
    train(model, optimizer, data, cfg.train, data_seed=0, stop=2)  # warm-up: allocations, kernels
    tic = time.perf_counter()
    train(model, optimizer, data, cfg.train, data_seed=0, start=2, stop=2 + steps)
    step = (time.perf_counter() - tic) / steps
    tic = time.perf_counter()
    float(evaluate(model, data, ("test",), cfg.runtime.eval_batch_size)["test_loss"])
    per_image = (time.perf_counter() - tic) / eval_images
    evaluation = per_image * (split_sizes(real)[1] + TEST_IMAGES)
    every = to_iterations(cfg.train.eval_every, steps_per_epoch(real, cfg.train.batch_size))
    return {"preset": name, "device": device.type, "step": step, "evaluation": evaluation, "every": every,
            "old_every": OLD_EVAL_EVERY[name], "overhead": evaluation / (every * step),
            "old_overhead": evaluation / (OLD_EVAL_EVERY[name] * step)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=",".join(OLD_EVAL_EVERY))
    parser.add_argument("--eval-images", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'preset':<15}{'device':>7}{'step (s)':>10}{'eval (s)':>10}{'every':>7}{'overhead':>10}"
          f"{'old every':>11}{'old overhead':>14}")
    for name in args.presets.split(","):
        r = measure(name, args.eval_images, args.steps)
        print(f"{r['preset']:<15}{r['device']:>7}{r['step']:>10.3f}{r['evaluation']:>10.1f}{r['every']:>7}"
              f"{r['overhead']:>10.1%}{r['old_every']:>11}{r['old_overhead']:>14.1%}", flush=True)


if __name__ == "__main__":
    main()
