"""Sparsity accounting of a mask on a network: nominal, effective, and in multiply-accumulates.

*Effective* weights (Vysogorets & Kempe 2021): a kept weight counts only if it lies on a path of kept
weights from an input to an output; a weight whose unit lost all its inputs, or all its outputs, computes
nothing. Biases are ignored for the count (a unit with no inputs still emits relu(bias), a constant the
next layer's bias could absorb). The paths are found exactly, skip connections included, by one forward
and backward pass of a copy of the network made *path-counting*: every kept weight 1, pruned weight 0,
biases 0, BatchNorm the identity, max-pooling replaced by average pooling (which passes every element on,
as a max may along some path), on an all-ones input in float64. Every activation is then the number of
paths reaching a unit and every gradient the number of paths leaving it, both >= 0, so a weight is on a
path exactly when the product of the two at its ends, d(sum of outputs)/dw, is positive.

*FLOPs remaining*: the multiply-accumulates of every conv and linear layer with its pruned weights
skipped, relative to the dense network's (conv: kept weights x output positions). The theoretical saving
of unstructured sparsity, which dense hardware kernels do not realise.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from trainables.masks import Mask

_LAYERS = (nn.Conv2d, nn.Linear)


def _path_counting(model: nn.Module, mask: Mask) -> nn.Module:
    net = copy.deepcopy(model).cpu().double().eval()
    for name, module in list(net.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.MaxPool2d):
                setattr(module, child_name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding,
                                                         child.ceil_mode))
    with torch.no_grad():
        for name, module in net.named_modules():
            if isinstance(module, _LAYERS):
                keep = mask.tensors.get(name)
                module.weight.copy_(torch.ones_like(module.weight) if keep is None else keep.double())
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.fill_(1.0), module.bias.zero_()
                module.running_mean.zero_(), module.running_var.fill_(1.0)
                module.eps = 0.0
    return net


def effective_mask(model: nn.Module, mask: Mask, input_shape: tuple[int, ...]) -> Mask:
    """The kept weights of `mask` that lie on an input-output path of `model` (whose own weights are unused)."""
    if not mask.tensors:
        return mask
    net = _path_counting(model, mask)
    weights = {name: m.weight for name, m in net.named_modules() if name in mask.tensors}
    net(torch.ones(1, *input_shape, dtype=torch.float64)).sum().backward()
    return Mask({name: (w.grad > 0).cpu() & mask.tensors[name] for name, w in weights.items()})


def effective_weights_remaining(model: nn.Module, mask: Mask, input_shape: tuple[int, ...]) -> float:
    """Kept fraction of the prunable weights that lie on an input-output path (biases ignored)."""
    return effective_mask(model, mask, input_shape).weights_remaining()


def positions(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Per conv or linear layer, how many times its weights are applied to one example (output positions)."""
    out: dict[str, int] = {}
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: out.__setitem__(
        name, o[0, 0].numel() if isinstance(m, nn.Conv2d) else 1))
        for name, m in model.named_modules() if isinstance(m, _LAYERS)]
    try:
        with torch.no_grad():
            copy.deepcopy(model).cpu().float().eval()(torch.zeros(1, *input_shape))
    finally:
        for hook in hooks:
            hook.remove()
    return out


def macs(model: nn.Module, mask: Mask, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(multiply-accumulates with pruned weights skipped, dense multiply-accumulates) of one example."""
    where = positions(model, input_shape)
    kept = mask.kept()
    layers = {name: m for name, m in model.named_modules() if isinstance(m, _LAYERS)}
    dense = sum(m.weight.numel() * where[name] for name, m in layers.items())
    masked = sum(kept.get(name, m.weight.numel()) * where[name] for name, m in layers.items())
    return masked, dense


def flops_remaining(model: nn.Module, mask: Mask, input_shape: tuple[int, ...]) -> float:
    masked, dense = macs(model, mask, input_shape)
    return masked / dense


def accounting(model: nn.Module, mask: Mask, input_shape: tuple[int, ...]) -> dict[str, float]:
    """The result-table columns: nominal, effective and FLOPs remaining of `mask` on `model`."""
    return {"weights_remaining": mask.weights_remaining(),
            "effective_weights_remaining": effective_weights_remaining(model, mask, input_shape),
            "flops_remaining": flops_remaining(model, mask, input_shape)}

