"""The training loop, its schedule and evaluation.

The loop is deliberately bare: batches come from device-resident tensors, the learning rate
is a Python float, pruned weights are zeroed in place, and nothing reads a value back to the
host. Everything else (evaluation, rewind snapshots, progress) is a callback fired at
iterations it asks for, so a step with no event costs exactly what a hand-written loop does.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.config import TrainConfig, to_iterations
from trainables.data import Dataset


@dataclass(frozen=True)
class Schedule:
    """Iteration bounds and the learning-rate multiplier at each iteration."""

    end: int
    warmup: int
    milestones: tuple[int, ...]
    gamma: float
    eval_every: int

    @classmethod
    def of(cls, cfg: TrainConfig, steps_per_epoch: int) -> Schedule:
        it = lambda d: to_iterations(d, steps_per_epoch)  # noqa: E731
        return cls(it(cfg.length), it(cfg.warmup), tuple(sorted(map(it, cfg.milestones))), cfg.gamma,
                   it(cfg.eval_every))

    def lr_factor(self, it: int) -> float:
        """Linear warm-up from 0 over `warmup` iterations, then x gamma at every milestone passed."""
        warm = min(1.0, it / self.warmup) if self.warmup else 1.0
        return warm * self.gamma ** bisect.bisect_right(self.milestones, it)


def autocast(device: torch.device, precision: str):
    """bf16: matmuls and convolutions in bfloat16; fp32 (the papers'): nothing changes."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _float_input(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.float() for a in args)


def for_speed(model: nn.Module, precision: str, channels_last: bool, compile: bool) -> nn.Module:
    """`model` set up to run as configured: BatchNorm kept in fp32 under bf16 autocast, NHWC weights for
    conv nets, compiled in place (new instances of the same class reuse the compiled code, and masks
    applied in place between steps change no guard, so no level recompiles)."""
    if precision == "bf16":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.register_forward_pre_hook(_float_input)
    if channels_last and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model.to(memory_format=torch.channels_last)
    if compile:
        model.compile()
    return model


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return optimizer_for([p for p in model.parameters() if p.requires_grad], cfg)


def optimizer_for(params: list[Tensor], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The configured optimiser over `params`; both are elementwise, so over parameters stacked along a
    leading dimension it is exactly one independent optimiser per slice."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.nesterov)


class Callback(Protocol):
    def iterations(self, start: int, end: int) -> Iterable[int]:
        """Iterations (in [start, end]) after which to be called; `start` means before the first step."""

    def __call__(self, it: int) -> None: ...


def train(model: nn.Module, optimizer: torch.optim.Optimizer, data: Dataset, cfg: TrainConfig, *,
          data_seed: int, start: int = 0, stop: int | None = None, keep_mask: Callable[[], None] = lambda: None,
          callbacks: Iterable[Callback] = ()) -> None:
    """Train from iteration `start` (a rewind point keeps its schedule position) to the end of the
    schedule, or only up to `stop` (to recreate a state along the way)."""
    batches = data.train_batches(cfg.batch_size, data_seed)

    def loss(it: int) -> Tensor:
        x, y = batches(it)
        with autocast(x.device, cfg.precision):
            logits = model(x)
        return F.cross_entropy(logits.float(), y)

    model.train()
    run_steps(loss, optimizer, cfg, data.steps_per_epoch(cfg.batch_size), start=start, stop=stop,
              keep_mask=keep_mask, callbacks=callbacks)


def run_steps(loss: Callable[[int], Tensor], optimizer: torch.optim.Optimizer, cfg: TrainConfig,
              steps_per_epoch: int, *, start: int = 0, stop: int | None = None,
              keep_mask: Callable[[], None] = lambda: None, callbacks: Iterable[Callback] = ()) -> None:
    """The loop itself: `loss(it)` is iteration `it`'s loss (model, batch and all), stepped on the schedule."""
    schedule = Schedule.of(cfg, steps_per_epoch)
    end = schedule.end if stop is None else stop
    events: dict[int, list[Callback]] = {}
    for cb in callbacks:
        for it in sorted(set(cb.iterations(start, end))):
            events.setdefault(it, []).append(cb)
    groups = optimizer.param_groups
    keep_mask()
    for cb in events.get(start, ()):
        cb(start)
    factor = None
    for it in range(start, end):
        if (new := schedule.lr_factor(it)) != factor:
            factor = new
            for group in groups:
                group["lr"] = cfg.lr * factor
        value = loss(it)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        keep_mask()
        for cb in events.get(it + 1, ()):
            cb(it + 1)


@dataclass
class Evaluation:
    iteration: int
    metrics: dict[str, Tensor]  # "{split}_loss", "{split}_accuracy": device scalars until read


@dataclass
class Evaluator:
    """Loss and accuracy on the validation and test sets every `every` iterations.

    Results stay on the device; `history()` reads them back once, so evaluation never forces
    a host sync of its own. The early-stop iteration is the one with the lowest validation loss.
    """

    model: nn.Module
    data: Dataset
    every: int
    batch_size: int
    splits: tuple[str, ...] = ("val", "test")
    precision: str = "fp32"
    records: list[Evaluation] = field(default_factory=list)
    on_record: Callable[[Evaluation], None] | None = None
    lr: Callable[[int], float] | None = None  # the schedule's learning rate for the step at an iteration; recorded

    def iterations(self, start: int, end: int) -> Iterable[int]:
        return [start, *range(start - start % self.every + self.every, end, self.every), end]

    def __call__(self, it: int) -> None:
        self.records.append(Evaluation(it, evaluate(self.model, self.data, self.splits, self.batch_size,
                                                    self.precision)))
        if self.on_record:
            self.on_record(self.records[-1])

    def history(self) -> list[dict[str, float]]:
        values = torch.stack([torch.stack(list(r.metrics.values())) for r in self.records]).tolist()
        keys = list(self.records[0].metrics)
        rate = {} if self.lr is None else {"lr": self.lr}
        return [{"iteration": r.iteration, **dict(zip(keys, v)), **{k: f(r.iteration) for k, f in rate.items()}}
                for r, v in zip(self.records, values)]


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, splits: Iterable[str], batch_size: int,
             precision: str = "fp32") -> dict[str, Tensor]:
    """"{split}_loss" and "{split}_accuracy" of `model` in eval mode, as device scalars (no host sync)."""
    was_training = model.training
    model.eval()
    metrics = {}
    for split in splits:
        loss = correct = count = 0
        for x, y in data.eval_batches(split, batch_size):
            with autocast(x.device, precision):
                logits = model(x).float()
            loss = loss + F.cross_entropy(logits, y, reduction="sum")
            correct = correct + (logits.argmax(1) == y).sum()
            count += len(y)
        metrics[f"{split}_loss"] = loss / count
        metrics[f"{split}_accuracy"] = correct / count
    model.train(was_training)
    return metrics


def summarize(history: list[dict[str, float]]) -> dict[str, float]:
    """Final test metrics and the early-stop point (minimum validation loss, first on ties)."""
    final = history[-1]
    best = min(history, key=lambda h: h["val_loss"])
    return {"test_accuracy": final["test_accuracy"], "test_loss": final["test_loss"],
            "val_accuracy": final["val_accuracy"], "val_loss": final["val_loss"], "early_stop_iter": best["iteration"],
            "early_stop_accuracy": best["test_accuracy"], "early_stop_val_loss": best["val_loss"]}
