"""Pruning at initialisation (trainables.at_init): exact counts, ERK by hand, data-free SynFlow, seeded
SNIP and GraSP, refusals in one line."""

import pytest
import torch
from torch import nn

from trainables.at_init import AtInitError, choose, erk_densities, plan
from trainables.catalog import METHODS, load_config
from trainables.config import ConfigError, PruneConfig
from trainables.masks import prunable_layers
from trainables.pruning import target_kept

METHOD_NAMES = [n for n in METHODS.names() if METHODS.meta(n).get("at_init")]


class Net(nn.Module):
    """conv (8x3x3x3) -> bn -> relu -> pool -> hidden (50x8) -> fc (10x50)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.hidden = nn.Linear(8, 50)
        self.fc = nn.Linear(50, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x))).mean((2, 3))
        return self.fc(torch.relu(self.hidden(x)))


SHAPE = (3, 6, 6)


def setup(scope="layerwise", level=3):
    torch.manual_seed(0)
    net = Net()
    layers = prunable_layers(net)
    shapes = {l.name: tuple(dict(net.named_modules())[l.name].weight.shape) for l in layers}
    return net, layers, shapes, PruneConfig(scope=scope, rate=0.5)


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, *SHAPE, generator=g), torch.randint(0, 10, (16,), generator=g)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_method_keeps_exactly_its_targets(method):
    net, layers, shapes, cfg = setup()
    densities = METHODS.meta(method)["densities"]
    for scope in ("layerwise", "global"):
        cfg = PruneConfig(scope=scope, rate=0.5)
        counts = plan(layers, shapes, cfg, 3, densities)
        mask = choose(method, net, layers, counts, SHAPE, batch(), torch.Generator().manual_seed(1))
        kept = mask.kept()
        for group, count in counts:
            assert sum(kept[l.name] for l in group) == count
        if densities != "erk":  # IMP's count at level 3, per layer or per layer kind
            assert sum(kept.values()) == sum(target_kept(sum(l.numel for l in g), cfg.rate_for(g[0].kind), 3)
                                             for g, _ in counts)
        if densities == "uniform" or scope == "layerwise" and densities == "scope":
            assert [len(g) for g, _ in counts] == [1, 1, 1]


def test_global_scope_pools_each_layer_kind():
    net, layers, shapes, _ = setup()
    counts = plan(layers, shapes, PruneConfig(scope="global", rate=0.5), 2, "scope")
    assert [([l.name for l in g], c) for g, c in counts] == [(["conv"], 54), (["hidden"], 100), (["fc"], 281)]


def test_erk_densities_by_hand():
    # (4 + 10) / 40 = 0.35 and (2 + 4) / 8 = 0.75; 12 kept: eps * (0.35 * 40 + 0.75 * 8) = 12, eps = 0.6
    assert erk_densities({"a": (4, 10), "b": (2, 4)}, 12) == pytest.approx({"a": 0.21, "b": 0.45})
    # 44 kept: eps = 2.2 would give b 1.65 > 1, so b is dense and a keeps the other 36 of its 40
    assert erk_densities({"a": (4, 10), "b": (2, 4)}, 44) == pytest.approx({"a": 0.9, "b": 1.0})
    # conv: (out + in + kh + kw) / (out * in * kh * kw)
    d = erk_densities({"c": (8, 3, 3, 3), "l": (10, 50)}, 100)
    eps = 100 / (17 + 60)
    assert d == pytest.approx({"c": eps * 17 / 216, "l": eps * 60 / 500})


def test_erk_counts_are_exact_and_follow_the_formula():
    net, layers, shapes, cfg = setup()
    counts = plan(layers, shapes, cfg, 3, "erk")
    total = sum(target_kept(l.numel, cfg.rate_for(l.kind), 3) for l in layers)
    assert sum(c for _, c in counts) == total
    densities = erk_densities(shapes, total)
    for (group, count) in counts:
        assert abs(count - densities[group[0].name] * group[0].numel) < 1


def test_synflow_reads_no_data():
    net, layers, shapes, cfg = setup()
    counts = plan(layers, shapes, cfg, 2, "scope")
    mask = choose("synflow", net, layers, counts, SHAPE, None, torch.Generator().manual_seed(0))
    assert {n: k for n, k in mask.kept().items()} == {l.name: c for (g, c), l in zip(counts, layers)}


@pytest.mark.parametrize("method", ["snip", "grasp"])
def test_data_methods_are_seeded_and_reproducible(method):
    net, layers, shapes, cfg = setup(scope="global")
    counts = plan(layers, shapes, cfg, 2, "scope")
    one = choose(method, net, layers, counts, SHAPE, batch(0), torch.Generator().manual_seed(0))
    assert one.equal(choose(method, net, layers, counts, SHAPE, batch(0), torch.Generator().manual_seed(0)))
    assert not one.equal(choose(method, net, layers, counts, SHAPE, batch(5), torch.Generator().manual_seed(0)))
    with pytest.raises(AtInitError, match="reads a training batch"):
        choose(method, net, layers, counts, SHAPE, None, torch.Generator())


def test_methods_differ_from_each_other():
    net, layers, shapes, cfg = setup(scope="global")
    counts = plan(layers, shapes, cfg, 2, "scope")
    masks = [choose(m, net, layers, counts, SHAPE, batch(), torch.Generator().manual_seed(0))
             for m in ("snip", "grasp", "synflow", "magnitude_init")]
    assert all(not a.equal(b) for i, a in enumerate(masks) for b in masks[i + 1:])


def test_refusals_are_one_line_and_before_anything_runs():
    with pytest.raises(ConfigError, match="prune.method") as info:
        load_config(preset="quickstart", overrides=["prune.method=snipp"])
    assert "snip" in str(info.value)  # did you mean
    net, layers, shapes, cfg = setup()
    too_many = [([layers[0]], layers[0].numel + 1)]
    with pytest.raises(AtInitError) as info:
        choose("snip", net, layers[:1], too_many, SHAPE, batch(), torch.Generator())
    assert len(str(info.value).splitlines()) == 1 and "hold 216" in str(info.value)
    with pytest.raises(AtInitError, match="between 0 and 1"):
        erk_densities({"a": (4, 10)}, 41)
    with pytest.raises(AtInitError, match="not a method at initialisation"):
        choose("imp", net, layers, [], SHAPE, None, torch.Generator())


def test_the_imp_kind_refuses_a_method_at_initialisation(tmp_path):
    from orchestrator.workflows import workflow

    cfg = load_config(preset="quickstart", overrides=["prune.method=synflow"])
    with pytest.raises(ConfigError, match="kind: pruning_at_init"):
        workflow("imp").make_run(cfg, tmp_path, None, None, None)
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_a_run_at_initialisation_shares_imps_dense_run_grid_and_table(tmp_path):
    """Every method's levels sit at IMP's weights remaining, beside IMP's rows, on a tiny synthetic task."""
    import pyarrow.parquet as pq

    from orchestrator.workflows import workflow
    from tests.test_imp import config

    flow, dense = workflow("pruning_at_init"), tmp_path / "dense"
    rows = {}
    for method in ("imp", "synflow", "random_erk"):
        cfg = config(**{"prune.method": method, "prune.scope": "global", "imp.controls": [],
                        "train.length": "20it", "train.eval_every": "20it"})
        flow.make_run(cfg, tmp_path / method, None, dense, None).run()
        rows[method] = pq.read_table(tmp_path / method / "results.parquet").to_pandas().sort_values(
            ["level", "variant"])
    imp = rows["imp"]
    assert set(imp["method"]) == {"imp"}
    for method in ("synflow", "random_erk"):
        table = rows[method]
        assert set(table["method"]) == {method} and list(table["variant"]) == list(imp["variant"])
        assert table["weights_remaining"].tolist() == pytest.approx(imp["weights_remaining"].tolist())
        assert table[table["level"] == 0]["test_accuracy"].tolist() == imp[imp["level"] == 0]["test_accuracy"].tolist()
    for table in rows.values():
        assert (table["effective_weights_remaining"] <= table["weights_remaining"] + 1e-12).all()
        assert table["flops_remaining"].between(0, 1).all()
