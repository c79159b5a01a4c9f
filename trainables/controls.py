"""Controls (registered in `trainables.catalog.CONTROLS`): what a ticket is compared with at each level.

A control takes the IMP run, the level and the ticket's mask, and returns the network, optimiser and
mask its training starts from; it draws its randomness from a seed of its own (never the ticket's).
"""

from __future__ import annotations

import torch

from trainables.imp import ImpRun, Start, derive_seed
from trainables.masks import Mask
from trainables.pruning import random_like
from trainables.train import make_optimizer


def reinit(run: ImpRun, level: int, mask: Mask) -> Start:
    """Same mask, fresh random weights, trained from the rewind iteration with a fresh optimiser under either
    `imp.rewind_optimizer` (the dense run's momentum belongs to other weights)."""
    model = run.new_model(derive_seed(run.cfg.seed, "reinit", level))
    return Start(model, make_optimizer(model, run.cfg.train), mask)


def random_mask(run: ImpRun, level: int, mask: Mask) -> Start:
    """Random positions with the ticket's per-layer counts, the rewound weights, and the optimiser the ticket
    starts with (`imp.rewind_optimizer`)."""
    generator = torch.Generator().manual_seed(derive_seed(run.cfg.seed, "random_mask", level))
    return run.rewound(random_like(mask, generator))
