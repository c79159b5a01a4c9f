"""Pruning at initialisation (registered in `trainables.catalog.METHODS`): a mask chosen before any training,
trained like an IMP ticket (Frankle et al. 2021, "Pruning neural networks at initialization: why are we
missing the mark?").

A method scores every prunable weight of the network at the rewind point (k = 0: its initialisation) and
keeps the highest scores. Level L keeps the count IMP's level L keeps (`pruning.target_kept`), spread over
layers as the method's `densities` says: as `prune.scope` (each layer its own target, or each layer kind's
layers competing for the kind's target), `uniform` (each layer its own target, whatever the scope) or `erk`
(IMP's total at level L, spread by Erdos-Renyi-Kernel densities). Counts are exact. A method with several
`rounds` (SynFlow) prunes to the density target^(r / rounds) in round r, rescoring the survivors each time.
Scores are computed on a float64 copy (SynFlow's products of |w| underflow in float32) on the run's device.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.catalog import METHODS
from trainables.config import Config, ConfigError, PruneConfig, UserError
from trainables.data import Dataset
from trainables.imp import ImpRun, Reporter, derive_seed
from trainables.masks import Layer, Mask
from trainables.models import build_model
from trainables.pruning import _keep_top, target_kept

Batch = tuple[Tensor, Tensor] | None  # one training batch (inputs, labels); None for data-free methods
Plan = list[tuple[list[Layer], int]]  # groups of layers competing for a count of kept weights


class AtInitError(ValueError, UserError):
    """A method or a density that cannot be used; the message names the fix."""


GRASP_TEMPERATURE = 200.0  # Wang et al. 2020, App.: logits divided by T = 200 for the gradient flow


# ---------------------------------------------------------------------------------------------
# scores: (network with the current mask applied, float64, on the run's device; its prunable weights by name; batch;
# input shape; generator) -> scores by name, the highest kept


def snip(net: nn.Module, weights: dict[str, Tensor], batch: Batch, shape: tuple[int, ...],
         g: torch.Generator) -> dict[str, Tensor]:
    """Lee et al. 2019: connection sensitivity |dL/dw * w| on one batch."""
    x, y = batch
    grads = torch.autograd.grad(F.cross_entropy(net(x), y), list(weights.values()))
    return {n: (gr * w).abs() for (n, w), gr in zip(weights.items(), grads)}


def grasp(net: nn.Module, weights: dict[str, Tensor], batch: Batch, shape: tuple[int, ...],
          g: torch.Generator) -> dict[str, Tensor]:
    """Wang et al. 2020: Hg, the Hessian of the loss times its gradient g; GraSP removes the largest -w * Hg
    (those whose removal reduces gradient flow least), so the largest w * Hg are kept."""
    x, y = batch
    params = list(weights.values())
    first = torch.autograd.grad(F.cross_entropy(net(x) / GRASP_TEMPERATURE, y), params)
    again = torch.autograd.grad(F.cross_entropy(net(x) / GRASP_TEMPERATURE, y), params, create_graph=True)
    hg = torch.autograd.grad(sum((a * f.detach()).sum() for a, f in zip(again, first)), params)
    return {n: w.detach() * h for (n, w), h in zip(weights.items(), hg)}


def synflow(net: nn.Module, weights: dict[str, Tensor], batch: Batch, shape: tuple[int, ...],
            g: torch.Generator) -> dict[str, Tensor]:
    """Tanaka et al. 2020: R = sum of the outputs of the network with every parameter made |p| on an all-ones
    input (BatchNorm in eval mode); the score is |w * dR/dw|. Reads no data: `batch` is None."""
    with torch.no_grad():
        for tensor in [*net.parameters(), *net.buffers()]:
            if tensor.is_floating_point():
                tensor.abs_()
    grads = torch.autograd.grad(net.eval()(torch.ones(1, *shape, dtype=torch.float64)).sum(), list(weights.values()))
    return {n: (gr * w).abs().detach() for (n, w), gr in zip(weights.items(), grads)}


def magnitude_init(net: nn.Module, weights: dict[str, Tensor], batch: Batch, shape: tuple[int, ...],
                   g: torch.Generator) -> dict[str, Tensor]:
    return {n: w.detach().abs() for n, w in weights.items()}


def random(net: nn.Module, weights: dict[str, Tensor], batch: Batch, shape: tuple[int, ...],
           g: torch.Generator) -> dict[str, Tensor]:
    return {n: torch.rand(w.shape, generator=g, dtype=torch.float64) for n, w in weights.items()}


# ---------------------------------------------------------------------------------------------
# how many weights each layer keeps


def erk_densities(shapes: dict[str, tuple[int, ...]], total: int) -> dict[str, float]:
    """Evci et al. 2020 (RigL), Erdos-Renyi-Kernel: layer l's density is eps * sum(dims_l) / prod(dims_l), eps
    chosen so the layers keep `total` weights together; a layer the formula would give more than all its
    weights is kept dense and eps recomputed for the rest."""
    numel = {n: math.prod(s) for n, s in shapes.items()}
    if not 0 <= total <= sum(numel.values()):
        raise AtInitError(f"ERK: {total} weights to keep, but the layers hold {sum(numel.values())}; "
                          "choose a density between 0 and 1")
    raw = {n: sum(s) / math.prod(s) for n, s in shapes.items()}
    dense: set[str] = set()
    while True:
        rest = [n for n in shapes if n not in dense]
        budget = total - sum(numel[n] for n in dense)
        eps = budget / sum(raw[n] * numel[n] for n in rest) if rest else 0.0
        over = {n for n in rest if eps * raw[n] > 1}
        if not over:
            return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}
        dense |= over


def _exact(shares: dict[str, float], total: int) -> dict[str, int]:
    """Counts proportional to `shares` (each at most its layer's size) summing to `total`: largest remainders."""
    floors = {n: math.floor(v) for n, v in shares.items()}
    order = sorted(shares, key=lambda n: floors[n] - shares[n])  # largest remainder first; stable on ties
    for n in order[:total - sum(floors.values())]:
        floors[n] += 1
    return floors


def plan(layers: Sequence[Layer], shapes: dict[str, tuple[int, ...]], cfg: PruneConfig, level: int,
         densities: str) -> Plan:
    """The groups of layers and the count of weights each keeps at `level` (IMP's count at that level)."""
    per_layer = [([l], target_kept(l.numel, cfg.rate_for(l.kind), level)) for l in layers]
    if densities == "uniform" or (densities == "scope" and cfg.scope == "layerwise"):
        return per_layer
    if densities == "scope":
        kinds = [[l for l in layers if l.kind == kind] for kind in ("conv", "linear", "output")]
        return [(group, target_kept(sum(l.numel for l in group), cfg.rate_for(group[0].kind), level))
                for group in kinds if group]
    total = sum(count for _, count in per_layer)
    shares = {n: d * math.prod(shapes[n]) for n, d in erk_densities({l.name: shapes[l.name] for l in layers},
                                                                     total).items()}
    counts = _exact(shares, total)
    return [([l], counts[l.name]) for l in layers]


# ---------------------------------------------------------------------------------------------
# choosing a mask


def choose(method: str, model: nn.Module, layers: Sequence[Layer], counts: Plan, input_shape: tuple[int, ...],
           batch: Batch, generator: torch.Generator, device: torch.device | str = "cpu") -> Mask:
    """The mask `method` chooses on `model` (unchanged; scored on a float64 copy on `device`) keeping exactly
    each group's count; `batch` is handed only to methods that read data."""
    meta = METHODS.meta(method)
    if not meta.get("at_init"):
        raise AtInitError(f"prune.method: {method!r} is not a method at initialisation; choose one of "
                          f"{', '.join(at_init_methods())}")
    for group, count in counts:
        held = sum(l.numel for l in group)
        if not 0 <= count <= held:
            raise AtInitError(f"{method}: {count} weights to keep in {', '.join(l.name for l in group)}, which hold "
                              f"{held}; choose a density between 0 and 1")
    score: Callable = METHODS.get(method)
    modules = dict(model.named_modules())
    mask = Mask({l.name: torch.ones_like(modules[l.name].weight, dtype=torch.bool, device="cpu") for l in layers})
    rounds = meta["rounds"]
    x = tuple(t.to(device) for t in batch) if meta["data"] and batch is not None else None
    if meta["data"] and x is None:
        raise AtInitError(f"{method} reads a training batch; none was given")
    if x is not None:
        x = (x[0].double(), x[1])
    net = copy.deepcopy(model).to(device).double().train()
    found = dict(net.named_modules())
    weights = {l.name: found[l.name].weight for l in layers}
    initial = {n: w.detach().clone() for n, w in weights.items()}
    for r in range(1, rounds + 1):
        with torch.no_grad():  # each round scores the survivors of the last
            for n, w in weights.items():
                w.copy_(initial[n]).mul_(mask.tensors[n].to(device))
        scores = score(net, weights, x, tuple(input_shape), generator)
        out = {}
        for group, count in counts:
            names = [l.name for l in group]
            held = sum(l.numel for l in group)
            keep_now = count if r == rounds else round(held * (count / held) ** (r / rounds)) if held else 0
            alive = torch.cat([mask.tensors[n].ravel() for n in names])
            keep = _keep_top(torch.cat([scores[n].detach().cpu().ravel() for n in names]), alive, keep_now)
            out |= {n: part.view_as(mask.tensors[n]) for n, part in zip(names, keep.split([l.numel for l in group]))}
        mask = Mask(out)
    return mask


class AtInitRun(ImpRun):
    """An IMP run whose level-L mask is chosen by `prune.method` on the network at the rewind point instead of by
    pruning level L-1's trained ticket: the same dense run (level 0), weights-remaining grid, training from the
    rewind point, seeds and controls; masks and results are kept and resumed as an IMP run's are."""

    def __init__(self, cfg: Config, out: str | Path, reporter: Reporter | None = None,
                 dense_dir: str | Path | None = None, data: Dataset | None = None):
        if not METHODS.meta(cfg.prune.method).get("at_init"):
            raise ConfigError("prune.method", [f"{cfg.prune.method!r} is not a method at initialisation; choose one "
                                               f"of {', '.join(at_init_methods())}"])
        super().__init__(cfg, out, reporter, dense_dir, data)

    def _prune(self, level: int) -> Mask:
        cfg, method = self.cfg, self.cfg.prune.method
        model = build_model(cfg.model, self.data.input_shape, self.data.num_classes, cfg.seed)
        model.load_state_dict(self.dense.state(self.rewind_iter)["model"])
        modules = dict(model.named_modules())
        counts = plan(self.layers, {l.name: tuple(modules[l.name].weight.shape) for l in self.layers}, cfg.prune,
                      level, METHODS.meta(method)["densities"])
        # One batch for every level, from a seed of its own: a method's levels differ in their density alone.
        batch = self.data.train_batches(cfg.train.batch_size, derive_seed(cfg.data_seed, "at_init"))(0) \
            if METHODS.meta(method)["data"] else None
        generator = torch.Generator().manual_seed(derive_seed(cfg.seed, "at_init", method, level))
        return choose(method, model, self.layers, counts, self.data.input_shape, batch, generator, self.device)


def at_init_methods() -> list[str]:
    return [n for n in METHODS.names() if METHODS.meta(n).get("at_init")]
