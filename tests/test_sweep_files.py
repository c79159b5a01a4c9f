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
            "lr_sensitivity_small.yaml", "pruning_at_init_lenet.yaml", "pruning_at_init_resnet20.yaml"} <= names


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


class Each(list):
    """Per trial, in the grid's order (the sweep's cases), instead of one value for every trial."""


def _get(cfg: Config, key: str):
    """A dotted config key, or a derived quantity: `it:<key>` (a duration in iterations), `it:<key>[]` (a list of
    them), `rate:<kind>` (the per-level rate of a layer kind)."""
    if key.startswith("rate:"):
        return cfg.prune.rate_for(key[5:])
    if key.startswith("it:"):
        value = _get(cfg, key[3:].rstrip("[]"))
        return [_iterations(cfg, v) for v in value] if key.endswith("[]") else _iterations(cfg, value)
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return list(node) if isinstance(node, tuple) else node


SGD_CIFAR = {"data.dataset": "cifar10", "train.optimizer": "sgd", "train.momentum": 0.9, "train.weight_decay": 1e-4,
             "train.gamma": 0.1, "prune.scope": "global", "rate:conv": 0.2}
LMC_INIT = {"model.init": "kaiming_normal", "model.bn_init": "uniform"}  # the LMC paper's code (open_lth)
LMC_STABILITY = {"stability.alpha_points": 30, "stability.threshold": 0.02, "stability.barrier": "endpoints_mean",
                 "stability.replicates": 3, "stability.splits": ["train", "test"]}
# What the papers ran (../shared/reference/papers.md), by sweep file: every trial holds these values.
PAPER_VALUES = {
    "lenet_mnist.yaml": {  # Frankle & Carbin 2019, Fig. 2: LeNet-300-100
        "model.arch": "lenet_300_100", "data.dataset": "mnist", "train.optimizer": "adam", "train.lr": 1.2e-3,
        "train.batch_size": 60, "it:train.length": 50_000, "prune.scope": "layerwise", "rate:linear": 0.2,
        "rate:output": 0.1, "imp.rewind_iter": "0it", "imp.controls": ["reinit", "random_mask"]},
    "lr_sensitivity_vgg19.yaml": {  # F&C 2019 §4: VGG-19 at 0.1, 0.01, 0.1 + 10K warm-up; 160 epochs of 45K
        **SGD_CIFAR, "model.arch": "vgg19", "train.batch_size": 64, "it:train.length": 112_480,
        "it:train.milestones[]": [56_240, 84_360], "prune.exclude": ["fc"], "imp.rewind_iter": "0it",
        "train.lr": Each([0.1, 0.01, 0.1]), "it:train.warmup": Each([0, 0, 10_000])},
    "lr_sensitivity_resnet20.yaml": {  # F&C 2019 §4: "Resnet-18" at 0.1, 0.01, 0.03 + 20K warm-up
        **SGD_CIFAR, "model.arch": "resnet20", "train.batch_size": 128, "it:train.length": 30_000,
        "it:train.milestones[]": [20_000, 25_000], "prune.exclude": ["fc", "*shortcut*"], "imp.rewind_iter": "0it",
        "train.lr": Each([0.1, 0.01, 0.03]), "it:train.warmup": Each([0, 0, 20_000])},
    "rewind_sweep.yaml": {  # Frankle et al. 2020 (LMC): ResNet-20, 160 epochs of 50K, k up to 5K
        **SGD_CIFAR, **LMC_INIT, "model.arch": "resnet20", "train.lr": 0.1, "train.batch_size": 128, "it:train.warmup": 0,
        "it:train.length": 62_400, "it:train.milestones[]": [31_200, 46_800]},
    "stability_lenet.yaml": {  # LMC: LeNet-300-100, Adam 1.2e-3, batch 60, 24K it
        **LMC_STABILITY, "model.arch": "lenet_300_100", "model.init": "kaiming_normal", "data.dataset": "mnist",
        "train.optimizer": "adam",
        "train.lr": 1.2e-3, "train.batch_size": 60, "it:train.length": 24_000},
    "stability_resnet20.yaml": {  # LMC: ResNet-20, 160 epochs of 50K images
        **LMC_STABILITY, **SGD_CIFAR, **LMC_INIT, "model.arch": "resnet20", "train.lr": 0.1, "train.batch_size": 128,
        "it:train.length": 62_400, "it:train.milestones[]": [31_200, 46_800]},
    "pruning_at_init_resnet20.yaml": {  # Frankle et al. 2021 on the LMC paper's ResNet-20 recipe
        **SGD_CIFAR, **LMC_INIT, "model.arch": "resnet20", "train.lr": 0.1, "train.batch_size": 128,
        "it:train.length": 62_400, "it:train.milestones[]": [31_200, 46_800], "prune.exclude": ["fc", "*shortcut*"],
        "prune.method": Each(["imp", "snip", "grasp", "synflow", "magnitude_init", "random_uniform", "random_erk"]),
        "it:imp.rewind_iter": Each([2000, 0, 0, 0, 0, 0, 0])},
}
# ... and across its trials: the seeds, the rewind points, the analysed levels, and how far IMP prunes.
PAPER_SWEEPS = {
    "lenet_mnist.yaml": {"seed": [0, 1, 2, 3, 4], "below": 0.036},  # past the paper's 3.6%
    "lr_sensitivity_vgg19.yaml": {"seed": [0, 1, 2], "below": 0.015},  # past the warm-up case's 1.5%
    "lr_sensitivity_resnet20.yaml": {"seed": [0, 1, 2], "below": 0.118},  # past the warm-up case's 11.8%
    "rewind_sweep.yaml": {"seed": [0, 1, 2], "it:imp.rewind_iter": [0, 100, 500, 1000, 2000, 5000]},
    "stability_lenet.yaml": {"seed": [0, 1, 2], "stability.level": [0, 15], "it:imp.rewind_iter": [0, 100, 500, 2000]},
    "stability_resnet20.yaml": {"seed": [0, 1, 2], "stability.level": [0, 8],
                                "it:imp.rewind_iter": [0, 100, 500, 2000, 5000]},
    "pruning_at_init_resnet20.yaml": {"seed": [0, 1, 2], "below": 0.03},
}


@pytest.mark.parametrize("name", sorted(PAPER_VALUES))
def test_sweep_files_hold_the_papers_values(name):
    spec = _load(name)
    configs = _configs(spec)
    for key, expected in PAPER_VALUES[name].items():
        found = [_get(cfg, key) for cfg in configs]
        if isinstance(expected, Each):
            assert found == expected * (len(found) // len(expected)), (name, key)
        else:
            assert all(value == expected for value in found), (name, key, found)
    across = PAPER_SWEEPS[name]
    for key, expected in across.items():
        if key != "below":
            assert sorted({_get(cfg, key) for cfg in configs}) == expected, (name, key)
    if "below" in across:
        assert all(0.8 ** cfg.imp.levels < across["below"] for cfg in configs)


def test_shared_dense_runs_keep_every_rewind_point():
    for name in ("rewind_sweep.yaml", "stability_lenet.yaml", "stability_resnet20.yaml"):
        spec = _load(name)
        shared = spec.rewind_points()
        assert len(shared) == 3 and total_iterations(spec, spec.grid())[1] == 3  # one dense run per seed
        points = sorted({_iterations(c, c.imp.rewind_iter) for c in _configs(spec)})
        assert all(sorted(int(p[:-2]) for p in kept) == points for kept in shared.values())


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


def test_optuna_search_samples_lr_warmup_and_rate():
    spec = _load("optuna_search.yaml")
    assert spec.search.algorithm == "optuna" and spec.search.num_samples > 1
    assert spec.grid() is None
    assert (spec.search.metric, spec.search.mode) == ("ticket_val_accuracy", "max")  # validation selects
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


def test_the_small_pruning_at_init_study_compares_imp_with_every_method_and_says_so():
    from trainables.catalog import METHODS

    spec = _load("pruning_at_init_lenet.yaml")
    configs = _configs(spec)
    assert spec.kind == "pruning_at_init" and spec.workflow.name == "pruning_at_init"
    assert sorted({c.prune.method for c in configs}) == sorted(METHODS.names())  # IMP and every method
    assert {c.seed for c in configs} == {0, 1} and {c.imp.levels for c in configs} == {4}
    assert {(c.data.dataset, c.model.arch, c.prune.scope, c.imp.rewind_iter) for c in configs} == {
        ("mnist5k", "lenet_300_100", "global", "0it")}
    _, dense, trainings = total_iterations(spec, spec.grid())
    assert dense == 2 and trainings == 14 * 4  # beyond one dense run per seed
    assert "SCALED-DOWN" in (SWEEPS / "pruning_at_init_lenet.yaml").read_text()


def test_the_ablation_study_crosses_retraining_modes_and_controls_on_a_decaying_schedule():
    spec = _load("ablations_lenet.yaml")
    configs = _configs(spec)
    assert sorted({c.imp.retrain for c in configs}) == ["finetune", "lr_rewind", "rewind"]
    assert sorted({c.seed for c in configs}) == [0, 1] and len(configs) == 6
    for cfg in configs:
        assert cfg.model.arch == "lenet_300_100" and cfg.data.dataset == "mnist5k"
        assert cfg.train.optimizer == "sgd" and cfg.train.milestones and cfg.train.gamma < 1  # lr_rewind != finetune
        assert {"reinit", "random_mask", "reinit_sign", "signed_constant", "shuffle"} <= set(cfg.imp.controls)
    header = (SWEEPS / "ablations_lenet.yaml").read_text().split("\nname:")[0]
    assert "SCALED-DOWN" in header and "constant" in header and "docs/ablations.md" in header
    # Under 15 minutes on 2 cores at ~4 core-seconds per 1,500-iteration LeNet training on mnist5k.
    iterations, dense, trainings = total_iterations(spec, spec.grid())
    assert (dense + trainings) * 4.0 / 2 < 15 * 60


def test_the_alignment_sweeps_compare_alignments_across_widths():
    lenet, resnet = (_configs(_load(f"alignment_{n}.yaml")) for n in ("lenet", "resnet20"))
    for configs, widths in ((lenet, [1, 2, 4]), (resnet, [1, 2, 4, 8])):
        assert sorted({c.model.width for c in configs}) == widths
        assert {c.stability.align for c in configs if c.stability.pair == "independent"} == {
            "none", "weights", "activations"}
        assert all(c.imp.rewind_iter == "0it" and c.stability.level == 0 for c in configs)
    assert {(c.stability.pair, c.stability.align) for c in lenet} >= {("sgd_noise", "none"), ("independent", "none")}
    assert sorted({c.seed for c in lenet}) == [0, 1] and {c.data.dataset for c in lenet} == {"mnist5k"}
    header = (SWEEPS / "alignment_lenet.yaml").read_text().split("\nname:")[0]
    assert "SCALED-DOWN CPU ANALOGUE" in header and "docs/alignment.md" in header
    # Under 20 minutes on 2 cores at ~4 core-seconds per 1,500 LeNet iterations, a training's cost growing at
    # most with the square of the width (the 300 x 100 layer).
    spec = _load("alignment_lenet.yaml")
    cost = sum(total_iterations(spec, [t])[0] * spec.trial_config(t).model.width ** 2 for t in spec.grid())
    assert cost * 4.0 / 1500 / 2 < 20 * 60
    resnet_values = {**SGD_CIFAR, **LMC_INIT, **LMC_STABILITY, "stability.replicates": 1, "model.arch": "resnet20",
                     "train.lr": 0.1, "train.batch_size": 128, "it:train.length": 62_400,
                     "it:train.milestones[]": [31_200, 46_800], "stability.pair": "independent"}
    for key, expected in resnet_values.items():
        assert all(_get(c, key) == expected for c in resnet), key
    assert {c.stability.bn for c in resnet} == {"interpolate", "recompute", "repair"}
