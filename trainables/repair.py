"""REPAIR (Jordan et al. 2023): undoing the variance collapse of an interpolated network.

The units of a network interpolated between two (aligned) ends have smaller spread than either end's.
REPAIR rescales every hidden unit of the interpolated network so that its pre-activation mean and standard
deviation over training data equal the interpolation of the two ends' (after the layer's BatchNorm where it
has one). Like the paper's implementation, each rescaling is a BatchNorm-like correction whose statistics
are averaged over training batches in one pass, the corrections upstream normalising by batch statistics
meanwhile, then held fixed for evaluation. Not to be confused with RESET (`stability.bn: recompute`), which
re-estimates the network's own BatchNorm statistics and changes nothing in networks without BatchNorm.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import Tensor, fx, nn

from trainables.alignment import describe

Batches = Callable[[int], tuple[Tensor, Tensor]]
Statistics = dict[str, tuple[Tensor, Tensor]]  # module name -> per-unit (mean, std)
_EPS = 1e-5  # as BatchNorm's


def correction_points(model: nn.Module) -> list[str]:
    """The modules whose outputs REPAIR rescales: every layer producing hidden units (those the permutation
    description moves), or its BatchNorm where the layer feeds one directly."""
    producers = {p for g in describe(model).groups for p in g.producers}
    modules = dict(model.named_modules())
    points = []
    for node in fx.symbolic_trace(model).graph.nodes:
        if node.op == "call_module" and node.target in producers:
            users = list(node.users)
            norm = users[0] if len(users) == 1 and users[0].op == "call_module" and isinstance(
                modules[users[0].target], nn.modules.batchnorm._BatchNorm) else None
            points.append(norm.target if norm is not None else node.target)
    return points


def _unit_dims(out: Tensor) -> tuple[list[int], tuple[int, ...]]:
    """The dimensions a unit's statistics average over (examples, positions), and the shape that broadcasts a
    per-unit vector against `out`."""
    return [0, *range(2, out.dim())], (1, -1, *[1] * (out.dim() - 2))


@torch.no_grad()
def statistics(model: nn.Module, state: Mapping[str, Tensor], points: list[str], batches: Batches,
               count: int) -> Statistics:
    """Per point, each unit's mean and std over training batches 0 .. count-1, `model` holding `state` (eval)."""
    model.load_state_dict(state)
    model.eval()
    sums: dict[str, list[Tensor]] = {}

    def record(name: str):
        def hook(module, inputs, out):
            dims, _ = _unit_dims(out)
            x = out.double()
            terms = [x.sum(dims), (x * x).sum(dims), torch.tensor(x.numel() / x.shape[1], dtype=torch.float64)]
            sums[name] = terms if name not in sums else [s + t for s, t in zip(sums[name], terms)]
        return hook

    handles = [model.get_submodule(p).register_forward_hook(record(p)) for p in points]
    try:
        for it in range(count):
            model(batches(it)[0])
    finally:
        for h in handles:
            h.remove()
    out = {}
    for name, (total, squares, n) in sums.items():
        mean = total / n
        out[name] = (mean.float(), (squares / n - mean ** 2).clamp_min(0).sqrt().float())
    return out


class _Correction:
    """A forward hook mapping a module's output to (out - mean) / std * target std + target mean per unit: the
    mean and std those of batches while estimating, their averages over the batches afterwards."""

    def __init__(self, mean: Tensor, std: Tensor):
        self.target = (mean, std)
        self.estimating, self.batches, self.sums = True, 0, [0.0, 0.0]

    def __call__(self, module: nn.Module, inputs, out: Tensor) -> Tensor:
        dims, shape = _unit_dims(out)
        x = out.float()
        if self.estimating:
            mean, var = x.mean(dims), x.var(dims, unbiased=False)
            self.sums = [self.sums[0] + mean, self.sums[1] + x.var(dims)]  # unbiased running variance, as BatchNorm
            self.batches += 1
        else:
            mean, var = self.sums[0] / self.batches, self.sums[1] / self.batches
        target_mean, target_std = (t.to(x.device) for t in self.target)
        scale = target_std / (var + _EPS).sqrt()
        return ((x - mean.view(shape)) * scale.view(shape) + target_mean.view(shape)).to(out.dtype)


class Repair:
    """REPAIR for the path between `ends`: their statistics are measured once; `__call__(model, alpha)` fits the
    corrections of `model` (already holding the interpolated state) and returns their hook handles. At alpha 0
    and 1 it does nothing: the network is an end, whose statistics are the targets, so the correction is the
    identity, and skipping it keeps the ends exactly as they are (not merely up to rounding)."""

    def __init__(self, model: nn.Module, ends: tuple[Mapping[str, Tensor], Mapping[str, Tensor]], batches: Batches,
                 count: int):
        self.points = correction_points(model)
        self.batches, self.count = batches, count
        self.ends = [statistics(model, end, self.points, batches, count) for end in ends]

    @torch.no_grad()
    def __call__(self, model: nn.Module, alpha: float) -> list:
        if alpha in (0, 1):
            return []
        handles, corrections = [], []
        for p in self.points:
            (mean_a, std_a), (mean_b, std_b) = self.ends[0][p], self.ends[1][p]
            corrections.append(_Correction(torch.lerp(mean_a, mean_b, alpha), torch.lerp(std_a, std_b, alpha)))
            handles.append(model.get_submodule(p).register_forward_hook(corrections[-1]))
        model.eval()
        for it in range(self.count):
            model(self.batches(it)[0])
        for c in corrections:
            c.estimating = False
        return handles
