"""Pruning strategies (registered in `trainables.catalog.STRATEGIES`): score the surviving weights, keep
the best, with exact per-level sparsity."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from trainables.catalog import STRATEGIES
from trainables.config import PruneConfig
from trainables.masks import Layer, Mask

# A strategy scores each weight from its trained value and its value at the rewind point (and may draw
# from the seeded generator); the highest scores are kept.


def magnitude(trained: Tensor, rewound: Tensor, g: torch.Generator) -> Tensor:
    return trained.abs()


def large_init(trained: Tensor, rewound: Tensor, g: torch.Generator) -> Tensor:
    return rewound.abs()


def _rank(values: Tensor) -> Tensor:
    """Each entry's rank among its tensor's entries, as a fraction in [0, 1) (ties by index)."""
    flat = values.ravel()
    ranks = torch.empty(flat.numel())
    ranks[torch.argsort(flat, stable=True)] = torch.arange(flat.numel(), dtype=torch.float32)
    return (ranks / flat.numel()).view_as(values)


def large_init_large_final(trained: Tensor, rewound: Tensor, g: torch.Generator) -> Tensor:
    """Zhou et al. keep the intersection of the top-p sets by |w_trained| and by |w_rewound|, which holds fewer than
    p of the weights. Scoring by the lower of the two ranks keeps the intersection of the top-q sets instead, q
    (>= p) chosen so that it holds exactly the level's count. Ranks are fractions of the layer, so in global scope
    layers of different sizes compare."""
    return torch.minimum(_rank(trained.abs()), _rank(rewound.abs()))


def magnitude_increase(trained: Tensor, rewound: Tensor, g: torch.Generator) -> Tensor:
    return trained.abs() - rewound.abs()


def movement(trained: Tensor, rewound: Tensor, g: torch.Generator) -> Tensor:
    return (trained - rewound).abs()


def random(trained: Tensor, rewound: Tensor, g: torch.Generator) -> Tensor:
    return torch.rand(trained.shape, generator=g)


def target_kept(numel: int, rate: float, level: int) -> int:
    """Weights left after `level` levels of removing `rate` of the remainder.

    Computed from the original count, not level by level, so rounding never accumulates:
    every level is within one weight of numel * (1 - rate) ** level.
    """
    return round(numel * (1 - rate) ** level)


def _keep_top(scores: Tensor, alive: Tensor, count: int) -> Tensor:
    """The `count` best-scoring alive entries; ties go to the lower index, so masks are reproducible. Only the
    alive entries are sorted (SynFlow's rounds sort ever fewer), in float64 (exact for its scores)."""
    candidates = alive.nonzero().squeeze(1)
    order = torch.sort(scores[candidates].double(), descending=True, stable=True).indices
    keep = torch.zeros_like(alive)
    keep[candidates[order[:count]]] = True
    return keep


def prune(mask: Mask, layers: list[Layer], trained: Mapping[str, Tensor], rewound: Mapping[str, Tensor],
          cfg: PruneConfig, level: int, generator: torch.Generator) -> Mask:
    """The level-`level` mask: prune the survivors of `mask` down to their per-kind targets.

    `layerwise` gives each layer its own target; `global` pools each kind's layers (conv,
    linear, output) and lets magnitudes compete across layers within the kind.
    """
    score = STRATEGIES.get(cfg.strategy)
    flat = {l.name: score(trained[l.name].detach().cpu().float(), rewound[l.name].detach().cpu().float(),
                          generator).ravel() for l in layers}
    groups = [[l] for l in layers] if cfg.scope == "layerwise" else [
        [l for l in layers if l.kind == kind] for kind in ("conv", "linear", "output")]
    out = {}
    for group in filter(None, groups):
        names = [l.name for l in group]
        alive = torch.cat([mask.tensors[n].ravel() for n in names])
        count = target_kept(alive.numel(), cfg.rate_for(group[0].kind), level)
        keep = _keep_top(torch.cat([flat[n] for n in names]), alive, min(count, int(alive.sum())))
        for n, part in zip(names, keep.split([l.numel for l in group])):
            out[n] = part.view_as(mask.tensors[n])
    return Mask(out)


def random_global_like(mask: Mask, generator: torch.Generator) -> Mask:
    """Random positions across all layers together, with the same total number kept (open_lth's global random
    pruning): a layer may keep more or fewer than before."""
    names = list(mask.tensors)
    sizes = [mask.tensors[n].numel() for n in names]
    keep = torch.zeros(sum(sizes), dtype=torch.bool)
    keep[torch.randperm(sum(sizes), generator=generator)[: sum(int(t.sum()) for t in mask.tensors.values())]] = True
    return Mask({n: part.view_as(mask.tensors[n]) for n, part in zip(names, keep.split(sizes))})


def random_like(mask: Mask, generator: torch.Generator) -> Mask:
    """Random positions with the same number kept in every layer (the random-pruning control)."""
    out = {}
    for name, t in mask.tensors.items():
        keep = torch.zeros(t.numel(), dtype=torch.bool)
        keep[torch.randperm(t.numel(), generator=generator)[: int(t.sum())]] = True
        out[name] = keep.view_as(t)
    return Mask(out)
