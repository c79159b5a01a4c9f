import pytest
import torch
from torch import nn

from trainables.config import PruneConfig
from trainables.masks import Mask, prunable_layers
from trainables.pruning import prune, random_like, target_kept


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.shortcut = nn.Conv2d(3, 8, 1, bias=False)
        self.hidden = nn.Linear(72, 50)
        self.fc = nn.Linear(50, 10)


def weights(model):
    return {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def run_levels(model, cfg, levels, trained=None):
    layers = prunable_layers(model, cfg.exclude)
    mask = Mask.dense(model, layers)
    w = trained or weights(model)
    masks = [mask]
    for level in range(1, levels + 1):
        mask = prune(mask, layers, w, w, cfg, level, torch.Generator().manual_seed(0))
        masks.append(mask)
    return layers, masks


def test_prunable_layers_kinds_and_exclusion():
    net = Net()
    layers = prunable_layers(net)
    assert [(l.name, l.kind) for l in layers] == [("conv", "conv"), ("shortcut", "conv"), ("hidden", "linear"),
                                                   ("fc", "output")]
    assert [l.name for l in prunable_layers(net, ["*short*", "fc"])] == ["conv", "hidden"]
    with pytest.raises(ValueError, match=r"prune.exclude: \['classifier'\] match no layer"):
        prunable_layers(net, ["classifier"])


def test_layerwise_rates_are_exact_per_kind_and_never_accumulate_rounding():
    torch.manual_seed(0)
    net = Net()
    cfg = PruneConfig(rate=0.2, conv_rate=0.15)  # output defaults to half the fc rate
    layers, masks = run_levels(net, cfg, 12)
    rates = {"conv": 0.15, "linear": 0.2, "output": 0.1}
    for level, mask in enumerate(masks):
        kept = mask.kept()
        for layer in layers:
            exact = layer.numel * (1 - rates[layer.kind]) ** level
            assert abs(kept[layer.name] - exact) <= 0.5 + 1e-9, (level, layer)
            assert kept[layer.name] == target_kept(layer.numel, rates[layer.kind], level)
    for before, after in zip(masks, masks[1:]):  # pruned weights stay pruned
        for name in before.tensors:
            assert not (after.tensors[name] & ~before.tensors[name]).any()


def test_magnitude_keeps_the_largest_and_breaks_ties_by_position():
    net = Net()
    w = weights(net)
    w["hidden"] = torch.arange(w["hidden"].numel(), dtype=torch.float).view_as(w["hidden"]) - 1000
    _, masks = run_levels(net, PruneConfig(rate=0.5), 1, trained=w)
    kept = masks[1].tensors["hidden"].ravel()
    magnitude = w["hidden"].abs().ravel()
    assert magnitude[kept].min() >= magnitude[~kept].max()
    w["hidden"] = torch.ones_like(w["hidden"])  # all tied: the first positions win, every time
    _, masks = run_levels(net, PruneConfig(rate=0.5), 1, trained=w)
    kept = masks[1].tensors["hidden"].ravel()
    assert kept[: kept.sum()].all() and not kept[kept.sum():].any()


def test_global_pools_layers_of_a_kind():
    net = Net()
    w = weights(net)
    w["conv"] = torch.full_like(w["conv"], 10.0)  # every conv weight beats every shortcut weight
    w["shortcut"] = torch.full_like(w["shortcut"], 0.01)
    cfg = PruneConfig(scope="global", rate=0.2, conv_rate=0.05, output_rate=0.0)
    layers, masks = run_levels(net, cfg, 1, trained=w)
    kept = masks[1].kept()
    conv_total = w["conv"].numel() + w["shortcut"].numel()
    assert kept["conv"] + kept["shortcut"] == round(conv_total * 0.95)
    assert kept["conv"] == w["conv"].numel()  # all pruning fell on the small-magnitude layer
    assert kept["fc"] == w["fc"].numel()  # a rate of 0 prunes nothing
    assert kept["hidden"] == round(w["hidden"].numel() * 0.8)


def test_strategies_use_the_right_weights():
    net = Net()
    trained = weights(net)
    rewound = {n: torch.randn_like(t) for n, t in trained.items()}
    layers = prunable_layers(net)
    dense = Mask.dense(net, layers)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    by_init = prune(dense, layers, trained, rewound, PruneConfig(strategy="large_init", rate=0.5), 1, g())
    keep = by_init.tensors["hidden"]
    assert rewound["hidden"].abs()[keep].min() >= rewound["hidden"].abs()[~keep].max()
    first = prune(dense, layers, trained, rewound, PruneConfig(strategy="random", rate=0.5), 1, g())
    again = prune(dense, layers, trained, rewound, PruneConfig(strategy="random", rate=0.5), 1, g())
    assert first.equal(again) and not first.equal(by_init)


def test_random_mask_control_matches_per_layer_counts():
    net = Net()
    _, masks = run_levels(net, PruneConfig(rate=0.5), 2)
    ticket = masks[2]
    control = random_like(ticket, torch.Generator().manual_seed(1))
    assert control.kept() == ticket.kept()
    assert not control.equal(ticket)
    assert control.equal(random_like(ticket, torch.Generator().manual_seed(1)))


def test_mask_applier_and_packed_state():
    net = Net()
    layers, masks = run_levels(net, PruneConfig(rate=0.5), 3)
    mask = masks[3]
    mask.applier(net)()
    for name, keep in mask.tensors.items():
        assert (dict(net.named_modules())[name].weight[~keep] == 0).all()
    restored = Mask.from_state(mask.state())
    assert restored.equal(mask)
    assert mask.weights_remaining() == pytest.approx(sum(mask.kept().values()) / sum(l.numel for l in layers))
