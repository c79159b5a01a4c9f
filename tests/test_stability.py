"""Stability analysis (linear mode connectivity) on tiny synthetic tasks: twin training, the path, the barrier,
BatchNorm statistics, and the analysis directory (rows, resume, determinism)."""

import copy
import math

import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from trainables.config import ConfigError, config_hash, from_dict, stability_hash
from trainables.data import load_dataset
from trainables.imp import DenseRun, ImpRun, Reporter, Start, derive_seed
from trainables.masks import Mask, prunable_layers
from trainables.catalog import MODELS
from trainables.models import build_model
from trainables.results import STABILITY_PATH_SCHEMA, append_rows
from trainables.stability import (StabilityRun, alpha_grid, analyse, instability, interpolate, path_metrics,
                                  recompute_bn, train_twins)
from trainables.train import evaluate, make_optimizer, train

SPLITS = ("train", "test")
TIMES = ["finished_at", "train_seconds"]


def config(**updates):
    base = from_dict({
        "data": {"dataset": "synthetic", "shape": [1, 8, 8], "num_classes": 4, "train_size": 600, "test_size": 200},
        "train": {"length": "60it", "batch_size": 30, "eval_every": "20it"},
        "imp": {"rewind_iter": "10it"},
        "stability": {"alpha_points": 5, "replicates": 2},
        "runtime": {"device": "cpu"},
    })
    return base.with_updates(updates)


def dense_start(cfg, out, mask=None):
    dense = DenseRun(cfg, out)
    k = dense.iterations(cfg.imp.rewind_iter)
    dense.ensure([k])
    return dense, k, dense.state_at(k, mask)


def random_mask(model, keep):
    generator = torch.Generator().manual_seed(0)
    return Mask({l.name: torch.rand(model.get_submodule(l.name).weight.shape, generator=generator) < keep
                 for l in prunable_layers(model)})


def states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def max_difference(a, b):
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


class LogReg(nn.Module):
    """Multinomial logistic regression, by the model registry's conventions (the output layer is `fc`)."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.fc = nn.Linear(math.prod(input_shape), num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(x, 1))


# ---------------------------------------------------------------------------------------------
# the barrier


def test_instability_of_a_curve_by_either_barrier():
    a = alpha_grid(5)
    assert a == [0.0, 0.25, 0.5, 0.75, 1.0]
    errors = [0.1, 0.2, 0.4, 0.3, 0.3]
    assert instability(errors, a, "endpoints_mean") == pytest.approx(0.4 - 0.2)
    assert instability(errors, a, "linear") == pytest.approx(0.4 - 0.2)  # the line is 0.2 at alpha 0.5
    rising = [0.1, 0.15, 0.2, 0.25, 0.3]  # on the line between unequal ends: no barrier, but max > mean
    assert instability(rising, a, "linear") == pytest.approx(0, abs=1e-12)
    assert instability(rising, a, "endpoints_mean") == pytest.approx(0.1)


# ---------------------------------------------------------------------------------------------
# twin training


def test_same_noise_gives_identical_copies_and_zero_instability(tmp_path):
    cfg = config()
    dense, k, start = dense_start(cfg, tmp_path)
    same = analyse(start, dense.data, cfg, k, (7, 7))
    assert states_equal(*same.ends)
    for split in SPLITS:
        assert len(set(same.curve[f"{split}_error"])) == 1
        assert same.instability(split, "endpoints_mean") == 0.0 and same.instability(split, "linear") == 0.0
    other = analyse(start, dense.data, cfg, k, (7, 8))
    assert states_equal(other.ends[0], same.ends[0])  # a copy depends on its own seed only
    assert not torch.equal(other.ends[0]["fc1.weight"], other.ends[1]["fc1.weight"])


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_twins_equal_ordinary_training_from_the_same_start(tmp_path, optimizer):
    # Momentum/moments, weight decay, a warm-up and a milestone after k, and a mask: a dropped
    # optimiser state, a wrong schedule position or a missed mask shows up in the weights.
    cfg = config(**{"train.optimizer": optimizer, "train.lr": 0.05 if optimizer == "sgd" else 1e-3,
                    "train.weight_decay": 1e-3, "train.warmup": "30it", "train.milestones": ["45it"],
                    "imp.rewind_iter": "20it"})
    dense, k, _ = dense_start(cfg, tmp_path)
    mask = random_mask(dense.new_model(0), 0.7)
    start = dense.state_at(k, mask)
    model_before = copy.deepcopy(start.model.state_dict())
    optimizer_before = copy.deepcopy(start.optimizer.state_dict())
    ends = train_twins(start, dense.data, cfg.train, (5, 6), k)
    assert states_equal(start.model.state_dict(), model_before)  # the start is left as it was
    assert all(states_equal(s, optimizer_before["state"][i]) for i, s in start.optimizer.state_dict()["state"].items())
    for seed, end in zip((5, 6), ends):
        ordinary = dense.state_at(k, mask)
        train(ordinary.model, ordinary.optimizer, dense.data, cfg.train, data_seed=seed, start=k,
              keep_mask=mask.applier(ordinary.model))
        assert max_difference(ordinary.model.state_dict(), end) < 1e-5
    assert not states_equal(ends[0], model_before)


class Float64(nn.Module):
    """A network computing in float64. With BatchNorm over a few values (tiny inputs and batches),
    float32 rounding in the forward pass is amplified a thousandfold in the gradients, so which
    float32 kernels ran (grouped, batched or not; oneDNN or native) decides the third digit; in
    float64 the batched program and ordinary training can be compared tightly."""

    def __init__(self, net):
        super().__init__()
        self.net = net.double()

    def forward(self, x):
        return self.net(x.double())


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow) if a.startswith("vgg") else a
                                  for a in MODELS.names()])
def test_every_architecture_trains_as_twins_like_ordinary_training(arch):
    side = 16 if arch.startswith("vgg") else 8  # VGG pools four times
    cfg = config(**{"model.arch": arch, "data.shape": [3, side, side], "data.train_size": 200,
                    "train.batch_size": 8, "train.length": "2it", "train.optimizer": "sgd", "train.lr": 0.01})
    data = load_dataset(cfg.data)

    def start():
        model = Float64(build_model(cfg.model, data.input_shape, data.num_classes, 0))
        return Start(model, make_optimizer(model, cfg.train), Mask({}))

    ends = train_twins(start(), data, cfg.train, (1, 2), 0)
    for seed, end in zip((1, 2), ends):
        ordinary = start()
        train(ordinary.model, ordinary.optimizer, data, cfg.train, data_seed=seed)
        assert max_difference(ordinary.model.state_dict(), end) < 1e-9  # BatchNorm statistics included
    assert not states_equal(*ends)


# ---------------------------------------------------------------------------------------------
# the path


def test_a_convex_model_is_stable():
    # Strongly convex (weight decay) with large batches and a decaying rate: both copies end near
    # the one minimum, and the loss along the line is convex in alpha.
    cfg = config(**{"train.length": "200it", "train.batch_size": 270, "train.optimizer": "sgd", "train.lr": 0.5,
                    "train.weight_decay": 0.01, "train.milestones": ["100it", "150it"],
                    "stability.alpha_points": 11})
    data = load_dataset(cfg.data)
    torch.manual_seed(0)
    model = LogReg(data.input_shape, data.num_classes)
    pair = analyse(Start(model, make_optimizer(model, cfg.train), Mask({})), data, cfg, 0, (1, 2))
    assert not states_equal(*pair.ends)
    for split in SPLITS:
        assert pair.curve[f"{split}_error"][0] < 0.5  # it learned
        assert pair.instability(split, "endpoints_mean") < 0.005
        loss = pair.curve[f"{split}_loss"]
        assert all(value <= (1 - a) * loss[0] + a * loss[-1] + 1e-5 for a, value in zip(pair.alphas, loss))


def test_independently_initialised_networks_have_a_barrier():
    cfg = config(**{"train.length": "100it"})
    data = load_dataset(cfg.data)
    ends = []
    for seed in (0, 1):  # different initialisations and data orders: not a linearly connected pair
        model = build_model(cfg.model, data.input_shape, data.num_classes, seed)
        train(model, make_optimizer(model, cfg.train), data, cfg.train, data_seed=seed)
        ends.append(model.state_dict())
    points = alpha_grid(11)
    curve = path_metrics(build_model(cfg.model, data.input_shape, data.num_classes, 2), ends, data, points, SPLITS,
                         1000)
    for split in SPLITS:
        errors = curve[f"{split}_error"]
        assert instability(errors, points, "endpoints_mean") > 0.05
        assert instability(errors, points, "linear") > 0.05
        assert max(errors) > max(errors[0], errors[-1])  # the peak is inside the path
    assert max(curve["train_loss"]) > 2 * max(curve["train_loss"][0], curve["train_loss"][-1])


def test_pruned_weights_stay_zero_along_the_path(tmp_path):
    cfg = config()
    mask = random_mask(build_model(cfg.model, (1, 8, 8), 4, 0), 0.3)
    dense, k, start = dense_start(cfg, tmp_path, mask)
    ends = train_twins(start, dense.data, cfg.train, (1, 2), k)
    pruned = {f"{n}.weight": ~keep for n, keep in mask.tensors.items()}
    seen = []

    def check(module, inputs):  # every network evaluated along the path, as evaluated
        seen.append(all((module.get_parameter(n)[p] == 0).all() for n, p in pruned.items()))

    evaluated = dense.new_model(0)
    evaluated.register_forward_pre_hook(check)
    points = alpha_grid(7)
    path_metrics(evaluated, ends, dense.data, points, SPLITS, 1000)
    assert len(seen) == len(points) * len(SPLITS) and all(seen)
    for a in points:
        state = interpolate(*ends, a)
        assert all((state[n][p] == 0).all() for n, p in pruned.items())
        assert all((state[n][~p] != 0).float().mean() > 0.99 for n, p in pruned.items())  # survivors trained
    assert all(not torch.equal(ends[0][n][~p], ends[1][n][~p]) for n, p in pruned.items())


def bn_config(**updates):
    return config(**{"model.arch": "resnet20", "data.shape": [3, 8, 8], "train.length": "20it",
                     "train.optimizer": "sgd", "train.lr": 0.05, **updates})


def test_recompute_bn_is_the_average_of_batch_statistics():
    cfg = bn_config()
    data = load_dataset(cfg.data)
    model = build_model(cfg.model, data.input_shape, data.num_classes, 0)
    train(model, make_optimizer(model, cfg.train), data, cfg.train, data_seed=0)
    model.eval()
    bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    trained = {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in bns.items()}
    batches = data.train_batches(cfg.train.batch_size, 3)

    # By hand: each layer's input on each batch (train mode normalises by batch statistics, so
    # these do not depend on the running statistics), its per-channel mean and unbiased variance.
    inputs = {n: [] for n in bns}
    probe = copy.deepcopy(model).train()
    for n, m in probe.named_modules():
        if n in bns:
            m.register_forward_pre_hook(lambda module, args, n=n: inputs[n].append(args[0].detach()))
    with torch.no_grad():
        for it in range(4):
            probe(batches(it)[0])

    recompute_bn(model, batches, 4)
    assert not model.training  # mode restored
    for n, m in bns.items():
        mean = torch.stack([x.mean((0, 2, 3)) for x in inputs[n]]).mean(0)
        var = torch.stack([x.transpose(0, 1).flatten(1).var(1) for x in inputs[n]]).mean(0)
        assert torch.allclose(m.running_mean, mean, atol=1e-5, rtol=1e-4), n
        assert torch.allclose(m.running_var, var, atol=1e-5, rtol=1e-4), n
        assert not torch.allclose(m.running_var, trained[n][1], rtol=1e-3)  # the statistics changed
        assert m.momentum == 0.1 and m.num_batches_tracked == 4


@pytest.mark.slow
def test_bn_recompute_changes_the_path_not_the_copies(tmp_path):
    cfg = bn_config(**{"stability.alpha_points": 3})
    dense, k, start = dense_start(cfg, tmp_path)
    kept = analyse(start, dense.data, cfg, k, (1, 2))
    recomputed = analyse(start, dense.data, cfg.with_updates({"stability.bn": "recompute"}), k, (1, 2))
    assert all(states_equal(a, b) for a, b in zip(kept.ends, recomputed.ends))
    assert kept.bn_batches is None and recomputed.bn_batches == dense.data.steps_per_epoch(30)  # one epoch
    assert recomputed.curve["test_loss"] != kept.curve["test_loss"]
    # The midpoint evaluated by hand: interpolated weights, statistics re-estimated on the same batches.
    model = dense.new_model(0)
    model.load_state_dict(interpolate(*recomputed.ends, 0.5))
    batches = dense.data.train_batches(30, derive_seed(cfg.data_seed, "stability", "bn"))
    recompute_bn(model, batches, recomputed.bn_batches)
    assert evaluate(model, dense.data, ["test"], 1000)["test_loss"].item() == pytest.approx(
        recomputed.curve["test_loss"][1], rel=1e-5)


# ---------------------------------------------------------------------------------------------
# the analysis directory


class Recorder(Reporter):
    def __init__(self, stop_at_twins=None):
        self.twins, self.analysed_replicates, self.stop_at_twins = 0, [], stop_at_twins

    def training(self, level, variant, start, end, weights_remaining):
        if variant == "twins":
            self.twins += 1
            if self.twins == self.stop_at_twins:
                raise KeyboardInterrupt

    def committed(self, unit, rows):
        if "stability_summary.parquet" in rows:
            self.analysed_replicates.append(unit)


def tables(out):
    path = pq.read_table(out / "stability.parquet").to_pandas().drop(columns="finished_at")
    summary = pq.read_table(out / "stability_summary.parquet").to_pandas().drop(columns=TIMES)
    return (path.sort_values(["replicate", "alpha_index", "split"]).reset_index(drop=True),
            summary.sort_values(["replicate", "split"]).reset_index(drop=True))


@pytest.mark.parametrize("level", [0, 1])
def test_analysis_rows_resume_and_determinism(tmp_path, level):
    cfg = config(**{"stability.level": level})
    reporter = Recorder()
    run = StabilityRun(cfg, tmp_path / "a", reporter)
    summary = run.run().to_pandas()
    assert run.trainings == 1 + level + 2  # dense, the IMP levels, one per replicate
    assert reporter.twins == 2 and reporter.analysed_replicates == [0, 1]
    path, summary = tables(tmp_path / "a")
    assert len(path) == 2 * 5 * 2 and len(summary) == 2 * 2
    assert set(zip(summary.replicate, summary.split)) == {(r, s) for r in (0, 1) for s in SPLITS}
    assert (summary.rewind_iter == 10).all() and (summary.level == level).all()
    assert summary.stability_hash.eq(stability_hash(cfg)).all() and summary.config_hash.eq(config_hash(cfg)).all()
    if level:
        imp_mask = ImpRun(cfg.with_updates({"imp.levels": 1, "imp.controls": []}), tmp_path / "a/imp").mask(1)
        assert summary.weights_remaining.eq(imp_mask.weights_remaining()).all()
        assert 0.7 < imp_mask.weights_remaining() < 1
    else:
        assert summary.weights_remaining.eq(1.0).all()
    assert (summary.data_seed_1 != summary.data_seed_2).all() and summary.data_seed_1.nunique() == 2
    for row in summary.itertuples():  # the summary is the path's
        curve = path[(path.replicate == row.replicate) & (path.split == row.split)]
        errors = curve.error.tolist()
        assert curve.alpha.tolist() == alpha_grid(5)
        assert (row.error_1, row.error_2, row.max_error) == (errors[0], errors[-1], max(errors))
        assert row.instability == instability(errors, alpha_grid(5), "endpoints_mean")
        assert row.stable == (row.instability < 0.02) and row.barrier_kind == "endpoints_mean"
    assert summary.error_1.between(0, 0.6).all()

    again = StabilityRun(cfg, tmp_path / "a")
    again.run()
    assert again.trainings == 0
    twin = StabilityRun(cfg, tmp_path / "b")
    twin.run()
    for a, b in zip(tables(tmp_path / "a"), tables(tmp_path / "b")):
        assert a.equals(b)


def test_an_interrupted_analysis_resumes_where_it_stopped(tmp_path):
    cfg = config()
    StabilityRun(cfg, tmp_path / "whole", dense_dir=tmp_path / "dense").run()
    with pytest.raises(KeyboardInterrupt):
        StabilityRun(cfg, tmp_path / "cut", Recorder(stop_at_twins=2), dense_dir=tmp_path / "dense").run()
    resumed = StabilityRun(cfg, tmp_path / "cut", dense_dir=tmp_path / "dense")
    assert resumed.finished_replicates() == [0]
    # As if killed between the two writes: path rows of the uncommitted replicate are replaced.
    stale = pq.read_table(tmp_path / "cut/stability.parquet").to_pylist()
    append_rows(tmp_path / "cut/stability.parquet", STABILITY_PATH_SCHEMA,
                [row | {"replicate": 1, "error": 1.0} for row in stale])
    resumed.run()
    assert resumed.trainings == 1  # replicate 1; nothing else retrained
    for a, b in zip(tables(tmp_path / "cut"), tables(tmp_path / "whole")):
        assert a.equals(b)


def test_a_directory_of_another_analysis_is_refused(tmp_path):
    StabilityRun(config(), tmp_path)
    with pytest.raises(ConfigError, match="holds a different run"):
        StabilityRun(config(**{"stability.bn": "recompute"}), tmp_path)
    with pytest.raises(ConfigError, match="imp.rewind_iter: 60it is not before the end of training"):
        StabilityRun(config(**{"imp.rewind_iter": "60it"}), tmp_path / "late")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_an_analysis_on_cuda_keeps_pruned_weights_zero(tmp_path):
    cfg = config(**{"runtime.device": "cuda", "stability.level": 1, "stability.replicates": 1,
                    "stability.bn": "recompute"})
    run = StabilityRun(cfg, tmp_path)
    assert run.data.x_train.is_cuda
    summary = run.run().to_pandas()
    assert len(summary) == 2 and summary.instability.ge(0).all() and summary.error_1.between(0, 0.6).all()
    start = run.start()
    ends = train_twins(start, run.data, cfg.train, (1, 2), run.rewind_iter)
    for name, keep in start.mask.tensors.items():
        assert all((end[f"{name}.weight"][~keep.cuda()] == 0).all() for end in ends)
