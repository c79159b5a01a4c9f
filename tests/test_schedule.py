"""The learning-rate schedule and the early-stop record, value by value (fast tier)."""

from __future__ import annotations

import pytest

from trainables.config import TrainConfig
from trainables.train import Schedule, summarize


def test_warmup_ramps_linearly_from_zero_then_milestones_multiply_by_gamma():
    cfg = TrainConfig(lr=0.1, length="100it", warmup="10it", milestones=("2ep", "80it"), gamma=0.5)
    schedule = Schedule.of(cfg, steps_per_epoch=25)  # 2ep = iteration 50
    assert (schedule.end, schedule.warmup, schedule.milestones) == (100, 10, (50, 80))
    factors = [schedule.lr_factor(it) for it in range(100)]
    assert factors[:11] == pytest.approx([i / 10 for i in range(11)])  # 0 at the first step, 1 from iteration 10
    assert set(factors[10:50]) == {1.0}
    assert factors[49:52] == [1.0, 0.5, 0.5]  # the drop applies from the milestone's iteration on
    assert set(factors[80:]) == {0.25}


def test_warmup_longer_than_a_milestone_multiplies_both():
    schedule = Schedule.of(TrainConfig(length="40it", warmup="20it", milestones=("10it",), gamma=0.1), 10)
    assert schedule.lr_factor(15) == pytest.approx(0.75 * 0.1)
    assert Schedule.of(TrainConfig(length="40it"), 10).lr_factor(0) == 1.0  # no warm-up: full rate at once


def test_early_stop_is_the_first_minimum_of_the_validation_loss():
    history = [{"iteration": i, "val_loss": loss, "test_accuracy": acc, "test_loss": 1.0, "val_accuracy": acc}
               for i, (loss, acc) in enumerate([(0.9, 0.5), (0.4, 0.7), (0.6, 0.8), (0.4, 0.9), (0.5, 0.95)])]
    summary = summarize(history)
    assert (summary["early_stop_iter"], summary["early_stop_accuracy"]) == (1, 0.7)  # tie at 0.4: the earlier
    assert (summary["test_accuracy"], summary["val_loss"]) == (0.95, 0.5)  # the end of training
