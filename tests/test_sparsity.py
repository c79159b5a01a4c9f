"""Effective weights and FLOPs remaining (trainables.sparsity), counted by hand."""

import pytest
import torch
from torch import nn

from trainables.config import ModelConfig
from trainables.masks import Mask, prunable_layers
from trainables.models import build_model
from trainables.sparsity import accounting, effective_mask, macs


def mlp():
    """4 inputs -> 3 hidden units -> 2 outputs: 12 + 6 = 18 weights."""
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def full():
    return {"0": torch.ones(3, 4, dtype=torch.bool), "2": torch.ones(2, 3, dtype=torch.bool)}


def test_a_mask_without_dead_paths_is_as_effective_as_nominal():
    tensors = full()
    tensors["0"][0, :2] = False  # hidden unit 0 keeps two inputs
    tensors["2"][1, 2] = False
    out = accounting(mlp(), Mask(tensors), (4,))
    assert out["effective_weights_remaining"] == pytest.approx(out["weights_remaining"]) == pytest.approx(15 / 18)
    assert accounting(mlp(), Mask(full()), (4,)) == {"weights_remaining": 1.0, "effective_weights_remaining": 1.0,
                                                       "flops_remaining": 1.0}


def test_a_unit_without_inputs_loses_its_outputs():
    tensors = full()
    tensors["0"][0] = False  # hidden unit 0: no inputs, so its 2 outgoing weights compute nothing
    out = accounting(mlp(), Mask(tensors), (4,))
    assert out["weights_remaining"] == pytest.approx(14 / 18)
    assert out["effective_weights_remaining"] == pytest.approx((14 - 2) / 18)
    assert not effective_mask(mlp(), Mask(tensors), (4,)).tensors["2"][:, 0].any()


def test_a_unit_without_outputs_loses_its_inputs():
    tensors = full()
    tensors["2"][:, 1] = False  # hidden unit 1: no outputs, so its 4 incoming weights compute nothing
    out = accounting(mlp(), Mask(tensors), (4,))
    assert out["weights_remaining"] == pytest.approx(16 / 18)
    assert out["effective_weights_remaining"] == pytest.approx((16 - 4) / 18)


def _dense(arch, shape):
    model = build_model(ModelConfig(arch=arch), shape, 10, 0)
    return model, Mask.dense(model, prunable_layers(model))


def test_flops_of_lenet_and_conv2_match_a_hand_count():
    model, mask = _dense("lenet_300_100", (1, 28, 28))
    assert macs(model, mask, (1, 28, 28)) == (266_200, 784 * 300 + 300 * 100 + 100 * 10)
    model, mask = _dense("conv2", (3, 32, 32))
    conv = 3 * 64 * 9 * 32 * 32 + 64 * 64 * 9 * 32 * 32  # padding 1: every one of 32 x 32 positions
    fc = 64 * 16 * 16 * 256 + 256 * 256 + 256 * 10  # after one 2x2 max-pool
    assert macs(model, mask, (3, 32, 32))[1] == conv + fc == 43_780_608
    mask.tensors["features.2"][:32] = False  # half the second conv's filters
    masked, dense = macs(model, mask, (3, 32, 32))
    assert dense - masked == 32 * 64 * 9 * 32 * 32
    out = accounting(model, mask, (3, 32, 32))
    assert out["flops_remaining"] == pytest.approx(masked / dense)
    # those filters' outputs feed fc1 through zeroed channels only: fc1's weights on them are dead
    assert out["effective_weights_remaining"] < out["weights_remaining"]


def test_resnet_skip_connections_keep_a_block_alive_around_a_dead_conv():
    model, mask = _dense("resnet20", (3, 32, 32))
    name, second = "blocks.0.conv1", "blocks.0.conv2"
    mask.tensors[name][:] = False  # the block's first conv: its second conv has no input left
    out = effective_mask(model, mask, (3, 32, 32))
    assert not out.tensors[second].any()
    # every other kept weight is still on a path, through the identity shortcut
    assert all(out.tensors[n].all() for n in mask.tensors if n not in (name, second))
