"""Protocols that do not bias the answer: fresh SGD noise per training, the optimiser at the rewind point,
BatchNorm initialisation, and old run folders never continued under a changed protocol."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

import trainables.imp
from orchestrator import sweep_folder
from orchestrator.cli import main
from orchestrator.workflows.stability import find_mask
from tests.test_workflows import _stored_trial
from trainables.catalog import load_config, steps_per_epoch
from trainables.config import ConfigError, ModelConfig, from_dict, to_iterations
from trainables.data import load_dataset
from trainables.imp import ImpRun, Reporter, derive_seed
from trainables.layout import write_manifest
from trainables.models import build_model
from trainables.presets import PRESETS

BASE = {"data": {"dataset": "synthetic", "shape": [1, 8, 8], "num_classes": 4, "train_size": 600, "test_size": 200},
        "train": {"optimizer": "sgd", "lr": 0.05, "length": "60it", "batch_size": 30, "eval_every": "20it"},
        "imp": {"levels": 2, "rewind_iter": "20it", "controls": ["reinit", "random_mask"]},
        "runtime": {"device": "cpu"}}


def config(**updates):
    return from_dict(BASE).with_updates(updates)


class Trainings(Reporter):
    """Each training's (level, variant), its data seed, first iteration, first batch and optimiser state."""

    def __init__(self, monkeypatch):
        self.seen: list[tuple[int, str]] = []
        self.calls: list[dict] = []
        real = trainables.imp.train

        def spy(model, optimizer, data, cfg, *, data_seed, start=0, **kwargs):
            self.calls.append({"seed": data_seed, "start": start, "labels": data.train_batches(
                cfg.batch_size, data_seed)(start)[1].clone(), "state": copy.deepcopy(optimizer.state_dict()["state"])})
            return real(model, optimizer, data, cfg, data_seed=data_seed, start=start, **kwargs)

        monkeypatch.setattr(trainables.imp, "train", spy)

    def training(self, level, variant, start, end, weights_remaining):
        self.seen.append((level, variant))

    def by_variant(self) -> dict[tuple[int, str], dict]:
        return dict(zip(self.seen, self.calls))


def dense_batch(cfg, iteration: int):
    return load_dataset(cfg.data).train_batches(cfg.train.batch_size, cfg.data_seed)(iteration)[1]


@pytest.mark.slow
def test_fresh_order_gives_every_training_its_own_noise_and_reruns_reproduce_it(tmp_path, monkeypatch):
    cfg = config()
    runs = []
    for name in ("a", "b"):
        recorder = Trainings(monkeypatch)
        table = ImpRun(cfg, tmp_path / name, recorder).run().to_pandas()
        runs.append((recorder.by_variant(), table))
    (first, table), (again, rerun) = runs
    assert list(first) == [(0, "dense"), *[(level, v) for level in (1, 2) for v in ("ticket", "reinit", "random_mask")]]
    assert first[(0, "dense")]["seed"] == cfg.data_seed  # the dense run keeps its order (stored ones stay valid)
    seeds = [c["seed"] for c in first.values()]
    assert len(set(seeds)) == len(seeds)  # two levels, a ticket and its controls: all different noise
    at_k = dense_batch(cfg, 20)
    pruned = [c["labels"] for key, c in first.items() if key[0] > 0]
    assert not any(torch.equal(labels, at_k) for labels in pruned)  # nobody retraces the dense run after k
    assert not torch.equal(pruned[0], pruned[1])
    assert [c["seed"] for c in again.values()] == seeds  # deterministic
    columns = ["level", "variant", "order_seed", "test_accuracy", "val_accuracy", "test_loss", "early_stop_iter"]
    assert table[columns].equals(rerun[columns]) and set(table.data_order) == {"fresh"}
    assert table.set_index(["level", "variant"]).order_seed.to_dict() == {
        key: c["seed"] for key, c in first.items()}


@pytest.mark.slow
def test_replayed_order_gives_every_training_the_dense_runs_batches(tmp_path, monkeypatch):
    cfg = config(**{"train.data_order": "replay"})
    recorder = Trainings(monkeypatch)
    ImpRun(cfg, tmp_path, recorder).run()
    at_k = dense_batch(cfg, 20)
    for (level, variant), call in recorder.by_variant().items():
        assert call["seed"] == cfg.data_seed
        if level:
            assert call["start"] == 20 and torch.equal(call["labels"], at_k)


@pytest.mark.slow
@pytest.mark.parametrize("rewind_optimizer", ["reset", "restore"])
def test_every_variant_starts_at_k_with_the_same_optimiser_treatment(tmp_path, monkeypatch, rewind_optimizer):
    cfg = config(**{"imp.rewind_optimizer": rewind_optimizer})
    recorder = Trainings(monkeypatch)
    ImpRun(cfg, tmp_path, recorder).run()
    dense_state = torch.load(tmp_path / "dense/rewind/it_0000020.pt")["optimizer"]["state"]
    assert dense_state  # momentum at k = 20: there is something to restore
    for (level, variant), call in recorder.by_variant().items():
        if level == 0:
            continue
        assert call["start"] == 20  # the schedule resumes at k in both
        if rewind_optimizer == "reset" or variant == "reinit":  # reinit's weights are new: never the dense momentum
            assert call["state"] == {}, (level, variant)
        else:
            assert all(torch.equal(call["state"][i]["momentum_buffer"], dense_state[i]["momentum_buffer"])
                       for i in dense_state), (level, variant)


@pytest.mark.slow
def test_stability_copies_draw_their_own_noise_under_both_orders(tmp_path):
    from trainables.stability import StabilityRun

    rows = {}
    for order in ("fresh", "replay"):
        cfg = config(**{"train.data_order": order, "stability.replicates": 1, "imp.levels": 0})
        rows[order] = StabilityRun(cfg, tmp_path / order).run().to_pylist()[0]
    fresh, replay = rows["fresh"], rows["replay"]
    assert fresh["data_seed_1"] != fresh["data_seed_2"]
    assert (fresh["data_seed_1"], fresh["data_seed_2"]) == (replay["data_seed_1"], replay["data_seed_2"])
    assert fresh["data_seed_1"] == derive_seed(config().data_seed, "stability", 0, 1)
    assert fresh["instability"] == replay["instability"]  # the dense network at k: the order key changes nothing


def _interrupted_old_folder(tmp_path):
    """A run folder as the version before 2026-12 left it: replayed order, restored optimiser, its config
    written without the two keys, interrupted after level 1."""
    class Stop(Reporter):
        def training(self, level, variant, start, end, weights_remaining):
            if level == 2:
                raise KeyboardInterrupt

    old = config(**{"train.data_order": "replay", "imp.rewind_optimizer": "restore"})
    with pytest.raises(KeyboardInterrupt):
        ImpRun(old, tmp_path / "run", Stop()).run()
    path = tmp_path / "run" / "config.yaml"
    raw = yaml.safe_load(path.read_text())
    del raw["train"]["data_order"], raw["imp"]["rewind_optimizer"]
    path.write_text(yaml.safe_dump(raw))
    return old


@pytest.mark.slow
def test_an_old_run_folder_is_refused_under_the_new_protocol_and_resumes_as_it_was_made(tmp_path, capsys):
    old = _interrupted_old_folder(tmp_path)
    with pytest.raises(ConfigError) as info:
        ImpRun(config(), tmp_path / "run")
    message = str(info.value)
    assert "made before train.data_order and imp.rewind_optimizer existed" in message
    assert "--set train.data_order=replay --set imp.rewind_optimizer=restore" in message
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(BASE))
    assert main(["imp", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run")]) == 2
    assert "--set train.data_order=replay --set imp.rewind_optimizer=restore" in capsys.readouterr().err
    assert main(["imp", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run"), "--set",
                 "train.data_order=replay", "--set", "imp.rewind_optimizer=restore"]) == 0
    assert ImpRun(old, tmp_path / "run").finished_levels() == [0, 1, 2]


def test_a_mask_made_under_another_protocol_is_not_reused(tmp_path):
    sweep_folder.write_record(str(tmp_path), {"manifests": True})
    reset = load_config(preset="quickstart", overrides={"imp.rewind_iter": "100it", "stability.level": 1})
    restore = reset.with_updates({"imp.rewind_optimizer": "restore"})
    _stored_trial(tmp_path, "restore", restore, 2)
    assert find_mask(str(tmp_path), reset, 1) is None
    assert find_mask(str(tmp_path), restore, 1)[0] == "restore"
    # A trial of an IMP sweep made before the key existed was made under `restore`: only a restore sweep reuses it.
    old = tmp_path / "trial_restore" / "checkpoint_000001" / "config.yaml"
    raw = yaml.safe_load(old.read_text())
    del raw["imp"]["rewind_optimizer"]
    old.write_text(yaml.safe_dump(raw))
    write_manifest(old.parent)
    assert find_mask(str(tmp_path), reset, 1) is None
    assert find_mask(str(tmp_path), restore, 1)[0] == "restore"


def test_uniform_batchnorm_init_draws_weights_in_the_unit_interval():
    ones = build_model(ModelConfig(arch="vgg11"), (3, 32, 32), 10, seed=0)
    uniform = build_model(ModelConfig(arch="vgg11", bn_init="uniform"), (3, 32, 32), 10, seed=0)
    bn = [m for m in uniform.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    weights = torch.cat([m.weight.detach() for m in bn])
    assert (weights >= 0).all() and (weights < 1).all() and weights.std() > 0.2  # U[0, 1): std 0.29
    assert all((m.weight == 1).all() and (m.bias == 0).all() for m in ones.modules()
               if isinstance(m, torch.nn.BatchNorm2d))
    again = build_model(ModelConfig(arch="vgg11", bn_init="uniform"), (3, 32, 32), 10, seed=0)
    assert torch.equal(weights, torch.cat([m.weight.detach() for m in again.modules()
                                           if isinstance(m, torch.nn.BatchNorm2d)]))  # seeded


def test_lmc_presets_and_early_stop_resolution():
    vgg16 = load_config(preset="vgg16")
    steps = steps_per_epoch(vgg16.data, vgg16.train.batch_size)
    assert to_iterations(vgg16.train.length, steps) == 62_400  # 160 epochs of the paper's 50K images
    assert [to_iterations(m, steps) for m in vgg16.train.milestones] == [31_200, 46_800]
    assert (vgg16.model.init, vgg16.model.bn_init) == ("kaiming_normal", "uniform")
    assert load_config(preset="vgg19").model.bn_init == "ones"  # the LTH-2019 presets stay as they were
    for entry in PRESETS:
        if entry.name == "quickstart":  # a demo, coarser on purpose (README says so)
            continue
        cfg = load_config(preset=entry.name)
        steps = steps_per_epoch(cfg.data, cfg.train.batch_size)
        every, length = to_iterations(cfg.train.eval_every, steps), to_iterations(cfg.train.length, steps)
        assert every <= length / 100, entry.name  # the early-stop iteration to 1% of training or better
