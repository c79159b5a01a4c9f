"""Controls (registered in `trainables.catalog.CONTROLS`): what a ticket is compared with at each level.

A control takes a `trainables.retrain.Setting` (the run, the level, the level's trained ticket, where it
starts) and returns the network, optimiser and mask its training starts from; it draws its randomness from
a seed of its own, tagged by its variant name (never the ticket's). Where its training's schedule starts is
the retraining mode's business (`trainables.retrain.schedule`), not the control's.
"""

from __future__ import annotations

import torch

from trainables.imp import derive_seed
from trainables.pruning import random_global_like, random_like
from trainables.retrain import Setting, Start
from trainables.train import make_optimizer


def _seed(s: Setting) -> int:
    return derive_seed(s.run.cfg.seed, s.variant, s.level)


def _weights(start: Start) -> dict[str, torch.Tensor]:
    """The masked layers' weight tensors of `start`'s model, by layer name."""
    params = dict(start.model.named_parameters())
    return {name: params[f"{name}.weight"] for name in start.mask.tensors}


def _fresh_optimizer(start: Start, s: Setting) -> Start:
    """`start` with a fresh optimiser: momentum gathered by other weights does not belong to these."""
    return Start(start.model, make_optimizer(start.model, s.run.cfg.train), start.mask)


def reinit(s: Setting) -> Start:
    """Same mask, fresh random weights and a fresh optimiser under either `imp.rewind_optimizer`."""
    model = s.run.new_model(_seed(s))
    return Start(model, make_optimizer(model, s.run.cfg.train), s.ticket.mask)


def random_mask(s: Setting) -> Start:
    """Random positions with the ticket's per-layer counts, the weights at start (at k: the optimiser the ticket
    starts with, `imp.rewind_optimizer`)."""
    return s.weights(random_like(s.ticket.mask, torch.Generator().manual_seed(_seed(s))))


def random_mask_global(s: Setting) -> Start:
    """Random positions with the ticket's total count across all prunable layers, the weights at start."""
    return s.weights(random_global_like(s.ticket.mask, torch.Generator().manual_seed(_seed(s))))


@torch.no_grad()
def reinit_sign(s: Setting) -> Start:
    """The ticket's mask; each weight a fresh draw's magnitude with the sign of its weight at start."""
    start = s.weights(s.ticket.mask)
    fresh = dict(s.run.new_model(_seed(s)).named_parameters())
    for name, w in _weights(start).items():
        w.copy_(fresh[f"{name}.weight"].abs() * w.sign())
    return _fresh_optimizer(start, s)


@torch.no_grad()
def signed_constant(s: Setting) -> Start:
    """The ticket's mask; each weight +-sigma with the sign of its weight at start, sigma the standard deviation
    of its layer's initial weights (all of them: an estimate of the init distribution's, as Zhou et al. use)."""
    start = s.weights(s.ticket.mask)
    init = s.run.dense.state(0)["model"]
    for name, w in _weights(start).items():
        w.copy_(w.sign() * init[f"{name}.weight"].float().std().to(w))
    return _fresh_optimizer(start, s)


@torch.no_grad()
def shuffle(s: Setting) -> Start:
    """The ticket's mask; its surviving weights at start permuted among its surviving positions, layer by layer."""
    start = s.weights(s.ticket.mask)
    generator = torch.Generator().manual_seed(_seed(s))
    for name, w in _weights(start).items():
        alive = s.ticket.mask.tensors[name].to(w.device).ravel().nonzero().squeeze(1)
        flat = w.reshape(-1).clone()  # a copy in logical order, as the mask is (whatever the memory format)
        flat[alive] = flat[alive][torch.randperm(alive.numel(), generator=generator).to(w.device)]
        w.copy_(flat.view_as(w))
    return _fresh_optimizer(start, s)

