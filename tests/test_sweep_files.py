"""Every sweep file under sweeps/ loads, says how to launch it, and holds the papers' numbers.

Fast and offline: only `orchestrator.spec` (no Ray); iteration counts come from the known dataset
sizes, so no dataset is read.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.spec import SweepSpec, load_sweep, total_iterations
from trainables.config import Config, to_iterations
from trainables.catalog import steps_per_epoch

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"
FILES = sorted(SWEEPS.glob("*.yaml"))


def _load(name: str) -> SweepSpec:
    return load_sweep(SWEEPS / name)


def _iterations(cfg: Config, value: str) -> int:
    return to_iterations(value, steps_per_epoch(cfg.data, cfg.train.batch_size))


def _configs(spec: SweepSpec) -> list[Config]:
    trials = spec.grid()
    assert trials is not None, "a grid sweep"
    return [spec.trial_config(t) for t in trials]


def test_there_are_sweep_files():
    names = {f.name for f in FILES}
    assert {"quickstart.yaml", "lenet_mnist.yaml", "lr_sensitivity_vgg19.yaml", "lr_sensitivity_resnet20.yaml",
            "rewind_sweep.yaml", "optuna_search.yaml", "stability_lenet.yaml", "stability_resnet20.yaml",
            "lr_sensitivity_small.yaml"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_sweep_file_loads_and_opens_with_its_launch_command(path):
    spec = load_sweep(path)  # raises ConfigError listing every problem
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    assert header, f"{path.name}: open with a comment block giving the launch command and what it reproduces"
    assert f"lth sweep run sweeps/{path.name}" in "\n".join(header)
    trials = spec.grid() or [{}]
    iterations, dense, trainings = total_iterations(spec, trials)
    assert iterations > 0 and dense >= 1 and trainings >= 1


def test_lenet_mnist_is_the_2019_lenet_study():
    spec = _load("lenet_mnist.yaml")
    configs = _configs(spec)
    assert sorted(c.seed for c in configs) == [0, 1, 2, 3, 4]
    for cfg in configs:
        assert (cfg.model.arch, cfg.data.dataset) == ("lenet_300_100", "mnist")
        assert (cfg.train.optimizer, cfg.train.lr, cfg.train.batch_size) == ("adam", 1.2e-3, 60)
        assert _iterations(cfg, cfg.train.length) == 50_000
        assert cfg.prune.scope == "layerwise"
        assert (cfg.prune.rate_for("linear"), cfg.prune.rate_for("output")) == (0.2, 0.1)
        assert cfg.imp.rewind_iter == "0it" and set(cfg.imp.controls) == {"reinit", "random_mask"}
        assert 0.8 ** cfg.imp.levels < 0.036  # reaches past the paper's 3.6%


def test_vgg19_lr_sensitivity_has_the_three_settings_of_section_4():
    spec = _load("lr_sensitivity_vgg19.yaml")
    assert len(spec.cases) == 3
    configs = _configs(spec)
    assert [(c.train.lr, _iterations(c, c.train.warmup)) for c in configs] == [
        (0.1, 0), (0.01, 0), (0.1, 10_000)]
    for cfg in configs:
        assert (cfg.model.arch, cfg.data.dataset) == ("vgg19", "cifar10")
        assert (cfg.train.optimizer, cfg.train.momentum, cfg.train.batch_size) == ("sgd", 0.9, 64)
        assert cfg.train.weight_decay == 1e-4 and cfg.train.gamma == 0.1
        assert _iterations(cfg, cfg.train.length) == 112_480  # 160 epochs of 45K images
        assert [_iterations(cfg, m) for m in cfg.train.milestones] == [56_240, 84_360]  # epochs 80, 120
        assert (cfg.prune.scope, cfg.prune.rate_for("conv"), cfg.prune.exclude) == ("global", 0.2, ("fc",))
        assert cfg.imp.rewind_iter == "0it" and "reinit" in cfg.imp.controls
        assert 0.8 ** cfg.imp.levels < 0.015  # reaches past the warm-up case's 1.5%


def test_resnet20_lr_sensitivity_has_the_three_settings_of_section_4():
    spec = _load("lr_sensitivity_resnet20.yaml")
    assert len(spec.cases) == 3
    configs = _configs(spec)
    assert [(c.train.lr, _iterations(c, c.train.warmup)) for c in configs] == [
        (0.1, 0), (0.01, 0), (0.03, 20_000)]
    for cfg in configs:
        assert (cfg.model.arch, cfg.data.dataset) == ("resnet20", "cifar10")
        assert (cfg.train.optimizer, cfg.train.momentum, cfg.train.batch_size) == ("sgd", 0.9, 128)
        assert cfg.train.weight_decay == 1e-4
        assert _iterations(cfg, cfg.train.length) == 30_000
        assert [_iterations(cfg, m) for m in cfg.train.milestones] == [20_000, 25_000]
        assert (cfg.prune.scope, cfg.prune.rate_for("conv")) == ("global", 0.2)
        assert set(cfg.prune.exclude) == {"fc", "*shortcut*"}
        assert cfg.imp.rewind_iter == "0it" and "reinit" in cfg.imp.controls
        assert 0.8 ** cfg.imp.levels < 0.118  # reaches past the warm-up case's 11.8%


def test_the_small_lr_study_is_an_offline_cpu_analogue_of_section_4_and_says_so():
    spec = _load("lr_sensitivity_small.yaml")
    configs = _configs(spec)
    settings = {(c.train.lr, _iterations(c, c.train.warmup)) for c in configs}
    assert len({lr for lr, _ in settings}) >= 3 and {w > 0 for _, w in settings} == {True, False}
    assert (0.1, 0) in settings and any(w > 0 and lr == 0.1 for lr, w in settings)  # high lr with and without
    assert sorted({c.seed for c in configs}) == [0, 1, 2]  # matching needs a std over seeds
    for cfg in configs:
        assert cfg.data.dataset == "mnist5k" and cfg.train.optimizer == "sgd"  # offline data, SGD as in §4
        assert cfg.imp.rewind_iter == "0it" and "reinit" in cfg.imp.controls
    header = (SWEEPS / "lr_sensitivity_small.yaml").read_text().split("\nname:")[0]
    assert "SCALED-DOWN ANALOGUE" in header and "docs/reproduce_lr_sensitivity.md" in header
    # The budget: under 30 minutes on one 2-core machine, at the quickstart's measured ~4 core-seconds per
    # 1,500-iteration LeNet training on mnist5k.
    iterations, dense, trainings = total_iterations(spec, spec.grid())
    assert (dense + trainings) * 4.0 / 2 < 25 * 60


def test_rewind_sweep_rewinds_resnet20_to_the_lmc_points_and_shares_dense_runs():
    spec = _load("rewind_sweep.yaml")
    configs = _configs(spec)
    points = [0, 100, 500, 1000, 2000, 5000]
    assert sorted({_iterations(c, c.imp.rewind_iter) for c in configs}) == points
    assert sorted({c.seed for c in configs}) == [0, 1, 2] and len(configs) == 18
    for cfg in configs:
        assert (cfg.model.arch, cfg.data.dataset) == ("resnet20", "cifar10")
        assert (cfg.train.optimizer, cfg.train.lr, cfg.train.momentum) == ("sgd", 0.1, 0.9)
        assert (cfg.train.batch_size, cfg.train.weight_decay, _iterations(cfg, cfg.train.warmup)) == (128, 1e-4, 0)
        end = _iterations(cfg, cfg.train.length)
        assert 62_000 <= end <= 63_000  # the LMC paper's 160 epochs (~63K it)
        assert [_iterations(cfg, m) for m in cfg.train.milestones] == [end // 2, end * 3 // 4]  # epochs 80, 120
        assert (cfg.prune.scope, cfg.prune.rate_for("conv")) == ("global", 0.2)
    # one dense run per seed, keeping every rewind point
    shared = spec.rewind_points()
    assert len(shared) == 3
    assert all(sorted(int(p[:-2]) for p in kept) == points for kept in shared.values())
    assert total_iterations(spec, spec.grid())[1] == 3


def test_optuna_search_samples_lr_warmup_and_rate():
    spec = _load("optuna_search.yaml")
    assert spec.search.algorithm == "optuna" and spec.search.num_samples > 1
    assert spec.grid() is None
    assert (spec.search.metric, spec.search.mode) == ("ticket_accuracy", "max")
    target = spec.search.at_weights_remaining
    assert target is not None and 0 < target < 1
    space = dict(spec.space)
    assert space["train.lr"].kind == "loguniform" and space["train.warmup"].kind == "choice"
    assert space["prune.rate"].kind == "uniform"
    low, high = space["prune.rate"].values
    assert (1 - low) ** spec.base.imp.levels <= target * 1.2  # the slowest sampled rate still reaches the target
    lo_lr, hi_lr = space["train.lr"].values
    assert lo_lr < spec.base.train.lr < hi_lr  # the paper's rate is inside the range
    assert spec.base.model.arch == "lenet_300_100" and spec.base.train.optimizer == "adam"


def _stability_common(spec: SweepSpec) -> list[Config]:
    assert spec.kind == "stability"
    configs = _configs(spec)
    assert sorted({c.seed for c in configs}) == [0, 1, 2]
    for cfg in configs:
        st = cfg.stability
        assert (st.alpha_points, st.threshold, st.barrier, st.replicates) == (30, 0.02, "endpoints_mean", 3)
        assert set(st.splits) == {"train", "test"}
    assert total_iterations(spec, spec.grid())[1] == 3  # one dense run per seed, keeping every k
    return configs


def test_stability_lenet_is_the_lmc_papers_lenet_setting():
    configs = _stability_common(_load("stability_lenet.yaml"))
    assert sorted({_iterations(c, c.imp.rewind_iter) for c in configs})[0] == 0  # k from 0
    assert {c.stability.level for c in configs} == {0, 15}
    for cfg in configs:
        assert (cfg.model.arch, cfg.data.dataset) == ("lenet_300_100", "mnist")
        assert (cfg.train.optimizer, cfg.train.lr, cfg.train.batch_size) == ("adam", 1.2e-3, 60)
        assert _iterations(cfg, cfg.train.length) == 24_000
        assert 0.034 < 0.8 ** max(c.stability.level for c in configs) < 0.036  # the paper's 3.5%


def test_stability_resnet20_is_the_lmc_papers_resnet20_setting():
    configs = _stability_common(_load("stability_resnet20.yaml"))
    assert sorted({_iterations(c, c.imp.rewind_iter) for c in configs}) == [0, 100, 500, 2000, 5000]
    assert {c.stability.level for c in configs} == {0, 8}  # dense; 0.8^8 = 16.8%, the paper's sparsity
    for cfg in configs:
        assert (cfg.model.arch, cfg.data.dataset) == ("resnet20", "cifar10")
        assert (cfg.train.optimizer, cfg.train.lr, cfg.train.momentum) == ("sgd", 0.1, 0.9)
        assert (cfg.train.batch_size, cfg.train.weight_decay, cfg.train.gamma) == (128, 1e-4, 0.1)
        assert _iterations(cfg, cfg.train.length) == 160 * 390  # 160 epochs of the paper's 50K images
        assert [_iterations(cfg, m) for m in cfg.train.milestones] == [80 * 390, 120 * 390]
        assert (cfg.prune.scope, cfg.prune.rate_for("conv")) == ("global", 0.2)


def test_the_lr_guide_quotes_the_paper_and_the_shipped_files_iterations():
    guide = (SWEEPS.parent / "docs" / "reproduce_lr_sensitivity.md").read_text()
    for claim in ("no winning tickets", "down to 1.5% remaining", "down to 11.8%", "90.5% at 27.1%",
                  "Estimated, not measured"):
        assert claim in guide
    for name in ("lr_sensitivity_vgg19", "lr_sensitivity_resnet20", "lr_sensitivity_small"):
        assert f"lth sweep run sweeps/{name}.yaml" in guide
        spec = _load(f"{name}.yaml")
        iterations, dense, trainings = total_iterations(spec, spec.grid())
        assert f"{dense + trainings} trainings" in guide or f"| {dense + trainings} | {iterations:,} |" in guide
