"""Permutation symmetry: which units move together, permuting a network, and aligning one network to another.

Permuting the hidden units of a network (a layer's outputs, with its bias and BatchNorm, and the next
layers' inputs) leaves its function unchanged. `describe` derives, from the model's traced graph, the
groups of units that must move together: each group lists every tensor axis it indexes. A residual
addition ties its two operands into one group (a ResNet stage's stream, across its blocks); a flatten
makes each channel a block of consecutive inputs of the next linear layer. The input and the output
never move. The description is the model's, not the alignment's: structured pruning removes the same
slices. A model with an operation the description does not know is refused in one line.

`weight_matching` and `activation_matching` find the permutation that aligns a network b with a (Git
Re-Basin, Ainsworth et al. 2023): per group, a linear assignment (scipy's `linear_sum_assignment`) on the
inner products of the weights (coordinate descent over groups until none changes) or on the correlations
of the two networks' activations over training batches.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, fx, nn

from trainables.config import UserError
from trainables.masks import Mask

State = Mapping[str, Tensor]
Permutation = dict[str, Tensor]  # group name -> index tensor: aligned b's unit i is b's unit perm[i]


class NotCoveredError(ValueError, UserError):
    """A model whose permutation symmetry `describe` cannot derive; the message names the operation and the fix."""


@dataclass(frozen=True)
class Axis:
    tensor: str  # a state-dict key, e.g. "blocks.0.conv1.weight"
    dim: int  # the dimension the group's units index
    repeat: int = 1  # consecutive entries per unit: a flattened channel's H x W inputs of a linear layer


@dataclass(frozen=True)
class Group:
    """Units that move together: the outputs of `producers` (summed where a residual joins them)."""

    name: str  # the first producer
    size: int
    axes: tuple[Axis, ...]
    producers: tuple[str, ...]  # conv / linear modules whose outputs these units are
    activations: tuple[str, ...]  # traced nodes holding the units after a ReLU: what activation matching compares


@dataclass(frozen=True)
class PermutationSpec:
    groups: tuple[Group, ...]

    def axes_of(self, tensor: str) -> list[tuple[Group, Axis]]:
        return [(g, a) for g in self.groups for a in g.axes if a.tensor == tensor]


_SAME = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Identity, nn.Dropout)
_SAME_FUNCTIONS = (F.relu, torch.relu, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d)
_RELU = (F.relu, torch.relu, "relu")


@dataclass
class _Space:
    """A set of units flowing through the graph; spaces joined by an addition share one root."""

    size: int | None
    producer: str | None
    axes: list[Axis] = field(default_factory=list)
    activations: list[str] = field(default_factory=list)
    parent: _Space | None = None
    fixed: bool = False

    def root(self) -> _Space:
        return self if self.parent is None else self.parent.root()


def describe(model: nn.Module) -> PermutationSpec:
    """The permutation groups of `model`, derived from its traced graph; NotCoveredError if it has an operation
    whose effect on units is unknown here."""
    arch = type(model).__name__
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as exc:  # tracing raises many types for data-dependent control flow
        raise NotCoveredError(f"{arch} cannot be traced ({type(exc).__name__}); permutation alignment covers "
                              "LeNet/MLPs, Conv-N, VGG and ResNet: use stability.align: none") from None
    modules = dict(model.named_modules())
    spaces: list[_Space] = []
    values: dict[fx.Node, tuple[_Space, bool]] = {}  # node -> (its units' space, flattened)

    def refuse(node: fx.Node, what: str) -> NotCoveredError:
        return NotCoveredError(f"{arch}: {what} at {node.name!r} is not covered by the permutation description "
                               "(Linear, Conv2d, BatchNorm, ReLU, pooling, flatten, residual addition); use "
                               "stability.align: none")

    def new(size: int | None, producer: str | None = None, fixed: bool = False) -> _Space:
        spaces.append(_Space(size, producer, fixed=fixed))
        return spaces[-1]

    for node in graph.nodes:
        args = [a for a in node.args if isinstance(a, fx.Node)]
        if node.op == "placeholder":
            values[node] = (new(None, fixed=True), False)
        elif node.op == "output":
            for arg in args:
                values[arg][0].root().fixed = True
        elif node.op == "call_module" and isinstance(modules[node.target], (nn.Linear, nn.Conv2d)):
            layer, (space, flat) = modules[node.target], values[args[0]]
            if getattr(layer, "groups", 1) != 1:
                raise refuse(node, "a grouped convolution")
            inputs = layer.weight.shape[1]
            size = space.root().size or space.size
            if size and inputs % size:
                raise refuse(node, f"{inputs} inputs over {size} units")
            space.axes.append(Axis(f"{node.target}.weight", 1, inputs // size if flat and size else 1))
            out = new(layer.weight.shape[0], node.target)
            out.axes += [Axis(f"{node.target}.{p}", 0) for p in ("weight", "bias") if getattr(layer, p) is not None]
            values[node] = (out, False)
        elif node.op == "call_module" and isinstance(modules[node.target], nn.modules.batchnorm._BatchNorm):
            space, flat = values[args[0]]
            names = [n for n, _ in [*modules[node.target].named_parameters(), *modules[node.target].named_buffers()]
                     if n != "num_batches_tracked"]
            space.axes += [Axis(f"{node.target}.{n}", 0) for n in names]
            values[node] = (space, flat)
        elif (node.op == "call_module" and isinstance(modules[node.target], _SAME)) or (
                node.op == "call_function" and node.target in _SAME_FUNCTIONS) or (
                node.op == "call_method" and node.target == "relu"):
            space, flat = values[args[0]]
            if node.target in _RELU or isinstance(modules.get(node.target), nn.ReLU):
                space.activations.append(node.name)
            values[node] = (space, flat)
        elif (node.op == "call_function" and node.target is torch.flatten) or (
                node.op == "call_method" and node.target == "flatten") or (
                node.op == "call_module" and isinstance(modules[node.target], nn.Flatten)):
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 1)
            if start != 1:
                raise refuse(node, f"a flatten from dimension {start}")
            values[node] = (values[args[0]][0], True)
        elif node.op == "call_function" and node.target in (operator.add, torch.add) and len(args) == 2:
            (a, flat_a), (b, flat_b) = values[args[0]], values[args[1]]
            ra, rb = a.root(), b.root()
            if flat_a != flat_b:
                raise refuse(node, "an addition of a flattened and an unflattened tensor")
            if ra is not rb:
                rb.parent, ra.fixed = ra, ra.fixed or rb.fixed
                ra.size = ra.size or rb.size
            values[node] = (a, flat_a)
        else:
            raise refuse(node, f"{node.op} {getattr(node.target, '__name__', node.target)}")
    groups = []
    for root in [s for s in spaces if s.parent is None and not s.fixed]:
        members = [s for s in spaces if s.root() is root]
        groups.append(Group(next(s.producer for s in members if s.producer), root.size,
                            tuple(a for s in members for a in s.axes), tuple(s.producer for s in members if s.producer),
                            tuple(n for s in members for n in s.activations)))
    return PermutationSpec(tuple(groups))


# ---------------------------------------------------------------------------------------------
# applying a permutation


def _index(perm: Tensor, axis: Axis) -> Tensor:
    if axis.repeat == 1:
        return perm
    return (perm[:, None] * axis.repeat + torch.arange(axis.repeat, device=perm.device)).flatten()


def _take(tensor: Tensor, axis: Axis, perm: Tensor) -> Tensor:
    return tensor.index_select(axis.dim, _index(perm.to(tensor.device), axis))


def permute(state: State, spec: PermutationSpec, perms: Permutation) -> dict[str, Tensor]:
    """`state` with every group's units reordered by its permutation (groups without one stay); `state` may hold
    some of the tensors only (a mask's)."""
    out = dict(state)
    for group in spec.groups:
        for axis in group.axes:
            if group.name in perms and axis.tensor in out:
                out[axis.tensor] = _take(out[axis.tensor], axis, perms[group.name])
    return out


def permute_mask(mask: Mask, spec: PermutationSpec, perms: Permutation) -> Mask:
    """`mask` moved with the weights it masks."""
    moved = permute({f"{name}.weight": t for name, t in mask.tensors.items()}, spec, perms)
    return Mask({name: moved[f"{name}.weight"] for name in mask.tensors})


def random_permutation(spec: PermutationSpec, generator: torch.Generator) -> Permutation:
    return {g.name: torch.randperm(g.size, generator=generator) for g in spec.groups}


# ---------------------------------------------------------------------------------------------
# matching


def _assign(similarity: Tensor) -> Tensor:
    """The permutation maximising the summed similarity of a's unit i with b's unit perm[i]."""
    _, columns = linear_sum_assignment(similarity.cpu().double().numpy(), maximize=True)
    return torch.from_numpy(columns).long()


def _units(tensor: Tensor, axis: Axis, size: int) -> Tensor:
    return tensor.movedim(axis.dim, 0).reshape(size, -1)


def weight_matching(a: State, b: State, spec: PermutationSpec, seed: int = 0, max_rounds: int = 100) -> Permutation:
    """Git Re-Basin weight matching: per group, maximise the sum of <a's weights, aligned b's weights> over every
    tensor the group indexes, the other groups' permutations held; groups in a seeded random order, rounds
    until no group's assignment improves."""
    perms = {g.name: torch.arange(g.size) for g in spec.groups}
    generator = torch.Generator().manual_seed(seed)
    for _ in range(max_rounds):
        improved = False
        for i in torch.randperm(len(spec.groups), generator=generator).tolist():
            group = spec.groups[i]
            similarity = 0
            for axis in group.axes:
                wb = b[axis.tensor].double()
                for other, other_axis in spec.axes_of(axis.tensor):
                    if other_axis.dim != axis.dim:
                        wb = _take(wb, other_axis, perms[other.name])
                wa = _units(a[axis.tensor].double(), axis, group.size)
                similarity = similarity + wa @ _units(wb, axis, group.size).T
            new, old = _assign(similarity), perms[group.name]
            rows = torch.arange(group.size)
            gain = (similarity[rows, new.to(similarity.device)] - similarity[rows, old.to(similarity.device)]).sum()
            improved |= bool(gain > 1e-9 * similarity.abs().max())
            perms[group.name] = new
        if not improved:
            break
    return perms


class _Recorder(fx.Interpreter):
    """Runs a traced model, keeping the outputs of the named nodes."""

    def __init__(self, module: fx.GraphModule, names: set[str]):
        super().__init__(module)
        self.names, self.kept = names, {}

    def run_node(self, node: fx.Node) -> Any:
        out = super().run_node(node)
        if node.name in self.names:
            self.kept[node.name] = out
        return out


def _as_rows(activation: Tensor) -> Tensor:
    """(examples x positions, units): each spatial position of each example is one sample of every channel."""
    return activation.movedim(1, -1).reshape(-1, activation.shape[1]).double()


@torch.no_grad()
def activation_matching(model: nn.Module, a: State, b: State, spec: PermutationSpec,
                        batches: Callable[[int], tuple[Tensor, Tensor]], count: int) -> Permutation:
    """Git Re-Basin activation matching: per group, the assignment maximising the summed correlation of a's and
    b's post-ReLU activations over training batches 0 .. count-1 (both networks in eval mode). `model` (any
    network of the same structure) is overwritten."""
    names = {n for g in spec.groups for n in g.activations}
    sums: dict[str, list[Tensor]] = {}
    traced = fx.symbolic_trace(model.eval())
    for it in range(count):
        x = batches(it)[0]
        kept = []
        for state in (a, b):
            model.load_state_dict(state)
            recorder = _Recorder(traced, names)
            recorder.run(x)
            kept.append(recorder.kept)
        for name in names:
            xa, xb = _as_rows(kept[0][name]), _as_rows(kept[1][name])
            terms = [xa.sum(0), xb.sum(0), (xa * xa).sum(0), (xb * xb).sum(0), xa.T @ xb,
                     torch.tensor(float(len(xa)), dtype=torch.float64, device=xa.device)]
            sums[name] = terms if name not in sums else [s + t for s, t in zip(sums[name], terms)]
    perms = {}
    for group in spec.groups:
        if not group.activations:
            raise NotCoveredError(f"group {group.name!r} has no ReLU output to match activations on; use "
                                  "stability.align: weights")
        similarity = 0
        for name in group.activations:
            sa, sb, saa, sbb, sab, n = sums[name]
            mean_a, mean_b = sa / n, sb / n
            std_a = (saa / n - mean_a ** 2).clamp_min(0).sqrt()
            std_b = (sbb / n - mean_b ** 2).clamp_min(0).sqrt()
            # A dead unit has no spread: its correlation counts as 0, so it pairs with whatever is left over.
            similarity = similarity + (sab / n - torch.outer(mean_a, mean_b)) / (torch.outer(std_a, std_b) + 1e-12)
        perms[group.name] = _assign(similarity)
    return perms
