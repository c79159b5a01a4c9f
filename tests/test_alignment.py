"""Permutation symmetry (trainables.alignment): every architecture family's description, applying it, and weight
and activation matching recovering a random permutation exactly; refusal of models it does not cover."""

import copy
import functools
import math

import pytest
import torch
from torch import nn

from trainables.alignment import (NotCoveredError, activation_matching, describe, permute, permute_mask,
                                  random_permutation, weight_matching)
from orchestrator.workflows.stability import STABILITY
from trainables.catalog import MODELS
from trainables.config import ConfigError, ModelConfig
from trainables.data import load_dataset
from trainables.layout import AnalysisLayout
from trainables.masks import Mask
from trainables.models import build_model
from trainables.registry import Entry
from trainables.repair import Repair, statistics
from trainables.stability import StabilityRun, alpha_grid, instability, interpolate, path_metrics
from trainables.train import make_optimizer, train
from tests.test_stability import SPLITS, config, random_mask

FAMILIES = {"lenet_300_100": (1, 8, 8), "conv4": (3, 8, 8), "vgg11": (3, 16, 16), "resnet20": (3, 8, 8)}


def network(arch, seed=0):
    return copy.deepcopy(_network(arch, seed))


@functools.lru_cache
def _network(arch, seed):
    """A small network of the family whose weights are not the initial ones (every bias and BatchNorm weight
    distinct) and whose units all fire on some inputs: each layer's biases, or its BatchNorm's statistics, are
    set from a batch so every unit is positive on about half of it."""
    model = build_model(ModelConfig(arch=arch, width=0.25), FAMILIES[arch], 4, seed).eval()
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(32, *FAMILIES[arch], generator=generator)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point() and "running" not in name:
                t.add_(torch.randn(t.shape, generator=generator) * 0.1)
        norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        for module in norms or [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][:-1]:
            seen = []
            handle = module.register_forward_hook(lambda m, i, out: seen.append((i[0], out)))
            model(x)
            handle.remove()
            (inputs, out), = seen
            if norms:
                module.running_mean.copy_(inputs.mean((0, 2, 3)))
                module.running_var.copy_(inputs.var((0, 2, 3)))
                module.bias.zero_()
            else:
                module.bias.sub_(out.transpose(0, 1).flatten(1).median(1).values)
    return model


def permuted_copy(arch):
    model = network(arch)
    spec = describe(model)
    perms = random_permutation(spec, torch.Generator().manual_seed(7))
    moved = network(arch)
    moved.load_state_dict(permute(model.state_dict(), spec, perms))
    return model, moved, spec, perms


@pytest.mark.parametrize("arch", FAMILIES)
def test_a_permuted_copy_computes_the_same_function(arch):
    model, moved, spec, perms = permuted_copy(arch)
    assert all(not torch.equal(p, torch.arange(len(p))) for p in perms.values())
    assert not torch.equal(model.state_dict()[f"{spec.groups[0].name}.weight"],
                           moved.state_dict()[f"{spec.groups[0].name}.weight"])
    x = torch.randn(5, *FAMILIES[arch])
    with torch.no_grad():
        assert torch.allclose(model(x), moved(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", FAMILIES)
def test_weight_matching_recovers_the_permutation_exactly(arch):
    model, moved, spec, perms = permuted_copy(arch)
    found = weight_matching(model.state_dict(), moved.state_dict(), spec)
    assert all(torch.equal(found[name], torch.argsort(p)) for name, p in perms.items())
    aligned = permute(moved.state_dict(), spec, found)
    assert all(torch.equal(aligned[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("arch", FAMILIES)
def test_activation_matching_recovers_the_permutation_exactly(arch):
    model, moved, spec, perms = permuted_copy(arch)
    generator = torch.Generator().manual_seed(3)
    inputs = [torch.randn(16, *FAMILIES[arch], generator=generator) for _ in range(2)]
    found = activation_matching(network(arch), model.state_dict(), moved.state_dict(), spec,
                                lambda it: (inputs[it], None), 2)
    assert all(torch.equal(found[name], torch.argsort(p)) for name, p in perms.items())


def test_residual_streams_are_one_group_per_stage_and_flattened_channels_move_as_blocks():
    spec = describe(network("resnet20"))
    stream = next(g for g in spec.groups if g.name == "conv")
    tensors = {a.tensor for a in stream.axes}
    assert {"bn.weight", "blocks.0.conv2.weight", "blocks.2.bn2.running_var", "blocks.3.shortcut.0.weight"} <= tensors
    assert "blocks.3.conv2.weight" not in tensors  # the next stage's stream
    assert len(spec.groups) == 3 + 9  # three streams, one inner group per block
    conv = describe(network("conv4"))
    fc1 = [a for g in conv.groups for a in g.axes if a.tensor == "fc1.weight" and a.dim == 1]
    assert [a.repeat for a in fc1] == [4]  # 2x2 positions per channel after two pools of an 8x8 input


def test_the_barrier_to_an_aligned_permuted_copy_is_zero():
    cfg = config(**{"model.arch": "conv4", "model.width": 0.25, "data.shape": [3, 8, 8]})
    data = load_dataset(cfg.data)
    model = build_model(cfg.model, data.input_shape, data.num_classes, 0)
    spec = describe(model)
    state = model.state_dict()
    moved = permute(state, spec, random_permutation(spec, torch.Generator().manual_seed(1)))
    points = alpha_grid(5)
    aligned = permute(moved, spec, weight_matching(state, moved, spec))
    raw = path_metrics(build_model(cfg.model, data.input_shape, data.num_classes, 1), [state, moved], data, points,
                       ("train",), 1000)
    curve = path_metrics(build_model(cfg.model, data.input_shape, data.num_classes, 1), [state, aligned], data,
                         points, ("train",), 1000)
    assert instability(curve["train_error"], points, "endpoints_mean") == 0
    assert len(set(curve["train_loss"])) == 1
    assert len(set(raw["train_loss"])) > 1  # unaligned, the path leaves the function


def test_masks_move_with_their_weights():
    model, moved, spec, perms = permuted_copy("conv4")
    mask = random_mask(model, 0.5)
    moved = permute_mask(mask, spec, perms)
    state = model.state_dict()
    after = permute({k: v * mask.tensors[k[:-7]] if k[:-7] in mask.tensors else v for k, v in state.items()},
                    spec, perms)
    assert all(torch.equal(after[f"{n}.weight"] != 0, m) for n, m in moved.tensors.items())
    assert isinstance(moved, Mask) and moved.weights_remaining() == mask.weights_remaining()


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(torch.tanh(self.fc1(x)))


class Branching(Gated):
    def forward(self, x):
        return self.fc(self.fc1(x)) if x.sum() > 0 else self.fc(x)


@pytest.mark.parametrize("model, what", [(Gated(), "tanh"), (Branching(), "cannot be traced")])
def test_a_model_the_description_does_not_cover_is_refused_in_one_line(model, what):
    with pytest.raises(NotCoveredError) as error:
        describe(model)
    assert what in str(error.value) and "stability.align: none" in str(error.value)
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------------------------------------
# REPAIR and the stability analysis


def trained_pair(cfg):
    data = load_dataset(cfg.data)
    ends = []
    for seed in (0, 1):
        model = build_model(cfg.model, data.input_shape, data.num_classes, seed)
        train(model, make_optimizer(model, cfg.train), data, cfg.train, data_seed=seed)
        ends.append(model.state_dict())
    return data, ends


@pytest.mark.parametrize("arch", ["lenet_300_100", "resnet20"])
def test_repair_leaves_the_ends_exactly_and_gives_the_middle_the_interpolated_statistics(arch):
    cfg = config(**{"model.arch": arch, "model.width": 0.25, "data.shape": [3, 8, 8], "train.length": "20it"})
    data, ends = trained_pair(cfg)
    model = build_model(cfg.model, data.input_shape, data.num_classes, 2)
    batches = data.train_batches(150, 5)  # large batches: averaged batch statistics near the pooled ones
    repair = Repair(model, ends, batches, 3)
    points = alpha_grid(3)
    plain = path_metrics(model, ends, data, points, SPLITS, 1000)
    repaired = path_metrics(model, ends, data, points, SPLITS, 1000, repair)
    for key in plain:
        assert (repaired[key][0], repaired[key][-1]) == (plain[key][0], plain[key][-1])  # exactly
        assert repaired[key][1] != plain[key][1]
    model.load_state_dict(interpolate(*ends, 0.5))
    hooks = repair(model, 0.5)
    seen = statistics(model, model.state_dict(), repair.points, batches, 3)  # measured with the corrections on
    for hook in hooks:
        hook.remove()
    for point in repair.points:
        (mean_a, std_a), (mean_b, std_b) = repair.ends[0][point], repair.ends[1][point]
        mean, std = seen[point]
        assert torch.allclose(mean, (mean_a + mean_b) / 2, atol=0.05 * std.max().item())
        assert torch.allclose(std, (std_a + std_b) / 2, rtol=0.08, atol=1e-3)
    assert len(repair.points) == (2 if arch.startswith("lenet") else 21)  # hidden layers, BatchNorm outputs
    assert all(p.split(".")[-1].startswith("bn") or "shortcut" in p or not arch.startswith("res")
               for p in repair.points)


def gated(input_shape, num_classes, width=1.0):
    model = Gated()
    model.fc1, model.fc = nn.Linear(math.prod(input_shape), 8), nn.Linear(8, num_classes)
    return model


def test_aligning_a_model_the_description_does_not_cover_is_refused_before_anything_trains(tmp_path, monkeypatch):
    monkeypatch.setitem(MODELS._entries, "gated", Entry("gated", "tanh MLP", gated, {}))
    cfg = config(**{"model.arch": "gated", "stability.align": "weights"})
    with pytest.raises(NotCoveredError, match="Gated: call_function tanh at 'tanh' is not covered"):
        StabilityRun(cfg, tmp_path)
    assert not AnalysisLayout(tmp_path).dense.trained()
    StabilityRun(cfg.with_updates({"stability.align": "none"}), tmp_path / "plain")  # not aligned: accepted


def test_the_new_keys_check_their_values():
    assert config(**{"stability.bn": "repair", "stability.bn_batches": 4}).stability.bn_batches == 4
    for key, value, message in [("stability.bn_batches", 4, "applies to bn 'recompute' only, or 'repair'"),
                                ("stability.pair", "twins", "expected one of 'sgd_noise', 'independent'"),
                                ("stability.align", "yes", "expected one of 'none', 'weights', 'activations'"),
                                ("model.width", 0, "must be positive")]:
        with pytest.raises(ConfigError, match=message):
            config(**{key: value})


@pytest.mark.slow
def test_independent_tickets_aligned_and_repaired_end_to_end(tmp_path):
    cfg = config(**{"stability.level": 1, "stability.pair": "independent", "stability.align": "weights",
                    "stability.bn": "repair", "stability.replicates": 1, "prune.rate": 0.5, "model.width": 0.5})
    run = StabilityRun(cfg, tmp_path)
    rows = run.run().to_pylist()
    assert run.trainings == 2 * 2 + 1  # each network: dense run, one IMP level; then the pair
    layout = AnalysisLayout(tmp_path)
    assert layout.partner.dense.trained() and layout.partner.imp.finished_levels() == [0, 1]
    mine, theirs = (Mask.from_state(torch.load(l.imp.mask(1), weights_only=True)) for l in (layout, layout.partner))
    assert not mine.equal(theirs)  # each network its own ticket
    for row in rows:
        assert (row["pair"], row["align"], row["width"], row["bn"]) == ("independent", "weights", 0.5, "repair")
        assert row["weights_remaining"] < row["union_remaining"] < 1  # the union of two different masks
    assert STABILITY.trainings(cfg, 60, 50) == (run.trainings, 4 * 50 + 60)
