"""Retraining modes (`imp.retrain`, Renda et al. 2020): where each level's ticket starts and which schedule
it follows, and where a control starts (its `start` parameter, open_lth's meaning).

- rewind: the ticket's surviving weights and the schedule go back to k (Frankle & Carbin 2019; Frankle et
  al. 2020).
- lr_rewind: the previous level's trained weights under the new mask; the learning-rate schedule is
  replayed from k to the end.
- finetune: the previous level's trained weights, trained at the schedule's final rate for as many
  iterations as from k to the end.

Under lr_rewind and finetune every control trains on the ticket's schedule; under rewind a control that
starts at `init` or `end` trains the whole schedule from 0 (open_lth's branches).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trainables.catalog import from_zero
from trainables.config import TrainConfig
from trainables.masks import Mask
from trainables.train import Schedule, make_optimizer


@dataclass
class Start:
    """What one training run of a level begins from."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    mask: Mask


@dataclass
class Setting:
    """What a control is given: the run, the level, the level's trained ticket (its mask, and its weights for
    start=end), where it starts, and its variant name (the tag of its own seeds)."""

    run: Any  # trainables.imp.ImpRun (which imports this module)
    level: int
    ticket: Start
    start: str
    variant: str

    def weights(self, mask: Mask) -> Start:
        return weights_at(self.run, self.start, mask, self.ticket)


def final_rate(train: TrainConfig, steps_per_epoch: int) -> TrainConfig:
    """`train` at a constant rate: the schedule's at its last step, warm-up and milestones passed."""
    schedule = Schedule.of(train, steps_per_epoch)
    return dataclasses.replace(train, lr=train.lr * schedule.lr_factor(schedule.end - 1), milestones=(),
                               warmup="0it")


def schedule(run: Any, start: str) -> tuple[int, TrainConfig]:
    """(first iteration, recipe) of a training that starts at `start` (the ticket's: rewind)."""
    mode, train = run.cfg.imp.retrain, run.cfg.train
    if mode == "finetune":
        return run.rewind_iter, final_rate(train, run.data.steps_per_epoch(train.batch_size))
    return (0 if from_zero(mode, start) else run.rewind_iter), train


def _loaded(run: Any, state: dict[str, torch.Tensor], mask: Mask) -> Start:
    model = run.new_model(run.cfg.seed)
    model.load_state_dict(state)
    return Start(model, make_optimizer(model, run.cfg.train), mask)


def ticket_start(run: Any, level: int, mask: Mask) -> Start:
    """The ticket of `level` under `mask`: rewound (rewind), or the previous level's trained weights with a fresh
    optimiser (lr_rewind, finetune)."""
    if run.cfg.imp.retrain == "rewind":
        return run.rewound(mask)
    return _loaded(run, run.trained(level - 1), mask)


def weights_at(run: Any, start: str, mask: Mask, ticket: Start) -> Start:
    """The network at `start` under `mask`: the dense network's weights at iteration 0 (init) or k (rewind, with
    the optimiser `imp.rewind_optimizer` gives the ticket), or the level's trained ticket (end, a fresh optimiser)."""
    if start == "end":
        return _loaded(run, ticket.model.state_dict(), mask)
    restore = start == "rewind" and run.cfg.imp.rewind_optimizer == "restore"
    return run.dense.state_at(0 if start == "init" else run.rewind_iter, mask, restore)
