import pytest

from trainables.catalog import check, load_config
from trainables.config import (Config, ConfigError, config_hash, dense_hash, from_dict, non_default, run_name,
                               stability_hash, to_dict, to_iterations)
from trainables.presets import PRESETS


def problems_of(raw) -> list[str]:
    with pytest.raises(ConfigError) as info:
        check(raw, "test.yaml")
    assert "test.yaml" in str(info.value)
    return info.value.problems


def test_round_trip_and_defaults_are_empty():
    cfg = Config()
    assert from_dict(to_dict(cfg)) == cfg
    assert non_default(cfg) == {}
    tweaked = cfg.with_updates({"train.lr": 0.01, "imp.controls": ["reinit"]})
    assert from_dict(to_dict(tweaked)) == tweaked
    assert non_default(tweaked) == {"train": {"lr": 0.01}, "imp": {"controls": ["reinit"]}}


# These hashes name run directories and shared dense runs on users' storage: changing one
# orphans every stored run. Update them only with a migration note.
LATE_REWIND = {"model": {"arch": "resnet20"}, "data": {"dataset": "cifar10"},
               "train": {"optimizer": "sgd", "lr": 0.03, "warmup": "20000it", "milestones": ["20000it", "25000it"]},
               "prune": {"scope": "global", "exclude": ["fc", "*shortcut*"]},
               "imp": {"rewind_iter": "500it", "controls": ["reinit"]}, "seed": 2}


def test_hashes_are_pinned():
    assert (config_hash(Config()), dense_hash(Config())) == ("44136fa355b3", "44136fa355b3")
    late = from_dict(LATE_REWIND)
    assert (config_hash(late), dense_hash(late)) == ("0d54a43262a0", "149ef12dc46e")
    assert run_name(late) == f"resnet20-cifar10-{config_hash(late)}"


def test_a_stability_analysis_never_renames_the_run_it_analyses():
    analysis = from_dict({**LATE_REWIND, "stability": {"level": 3, "bn": "recompute"}})
    late = from_dict(LATE_REWIND)
    assert (config_hash(analysis), dense_hash(analysis)) == (config_hash(late), dense_hash(late))
    assert stability_hash(analysis) == "66f57c7f9f7f"  # names analysis directories: pinned like the others
    assert stability_hash(analysis.with_updates({"runtime.device": "cpu"})) == stability_hash(analysis)
    for change in ({"stability.threshold": 0.01}, {"imp.rewind_iter": "1000it"}, {"train.lr": 0.01}):
        assert stability_hash(analysis.with_updates(change)) != stability_hash(analysis)


def test_hash_ignores_runtime_and_dense_hash_ignores_what_follows_dense_training():
    base = load_config(preset="quickstart")
    assert config_hash(base.with_updates({"runtime.device": "cpu"})) == config_hash(base)
    after_dense = base.with_updates({"prune.rate": 0.5, "imp.rewind_iter": 100, "imp.levels": 9,
                                     "imp.controls": []})
    assert dense_hash(after_dense) == dense_hash(base)
    assert config_hash(after_dense) != config_hash(base)
    for change in ({"train.lr": 0.01}, {"seed": 1}, {"model.init": "kaiming_normal"}, {"data.val_size": 400}):
        assert dense_hash(base.with_updates(change)) != dense_hash(base)
    assert run_name(base).startswith("lenet_300_100-mnist5k-")


def test_every_problem_is_reported_with_its_key():
    problems = problems_of({
        "trian": {},
        "model": {"arch": "resnet18"},
        "train": {"lr": "fast", "batch_size": 1.5, "length": "10 epochs", "optimizer": "adamw"},
        "prune": {"rate": 1.5},
    })
    text = "\n".join(problems)
    assert "trian: unknown key (did you mean 'train'?)" in text
    assert "model.arch: unknown architecture 'resnet18'" in text and "resnet20" in text
    assert "train.lr: expected a number, got 'fast'" in text
    assert "train.batch_size: expected an integer" in text
    assert "train.length: expected a duration such as '30000it' or '160ep'" in text
    assert "train.optimizer: expected one of 'sgd', 'adam', got 'adamw' (did you mean 'adam'?)" in text
    assert "prune.rate: must be in [0, 1)" in text
    assert len(problems) == 7


@pytest.mark.parametrize("raw, key", [
    ({"data": {"dataset": "imagenet"}}, "data.dataset: unknown dataset 'imagenet'"),
    ({"data": {"shape": [3, 8, 8]}}, "data.shape: applies to dataset 'synthetic' only"),
    ({"imp": {"controls": ["permute"]}}, "imp.controls: unknown control 'permute'"),
    ({"imp": {"controls": ["random_mask(start=middle)"]}},
     "imp.controls: 'random_mask(start=middle)': start must be one of rewind, init, end"),
    ({"imp": {"controls": ["reinit(begin=init)"]}},
     "imp.controls: 'reinit(begin=init)': control 'reinit' has no parameter 'begin'"),
    ({"imp": {"controls": ["random_mask", "random_mask(start=rewind)"]}}, "imp.controls: lists the same control twice"),
    ({"imp": {"retrain": "rewinding"}}, "imp.retrain: expected one of 'rewind', 'lr_rewind', 'finetune'"),
    ({"prune": {"strategy": "smallest"}}, "prune.strategy: unknown pruning strategy 'smallest'"),
    ({"train": {"momentum": 1.0}}, "train.momentum: must be in [0, 1)"),
    ({"train": {"nesterov": True}}, "train.nesterov: applies to optimizer 'sgd' only"),
    ({"runtime": {"device": "gpu"}}, "runtime.device: expected auto, cpu"),
    ({"seed": "one"}, "seed: expected an integer"),
    ({"train": 3}, "train: expected a mapping"),
    ({"stability": {"alpha_points": 1}}, "stability.alpha_points: must be at least 2"),
    ({"stability": {"barrier": "max"}}, "stability.barrier: expected one of 'endpoints_mean', 'linear'"),
    ({"stability": {"bn_batches": 100}}, "stability.bn_batches: applies to bn 'recompute' only"),
    ({"stability": {"splits": ["training"]}}, "stability.splits: expected distinct splits"),
    ({"stability": {"level": -1}}, "stability.level: must be >= 0"),
])
def test_bad_values_name_their_field(raw, key):
    assert any(p.startswith(key) for p in problems_of(raw)), problems_of(raw)


def test_coercions_and_durations():
    cfg = from_dict({"train": {"lr": "1e-3", "length": 500, "milestones": ["2ep", 300]}})
    assert cfg.train.lr == 1e-3 and cfg.train.length == "500it" and cfg.train.milestones == ("2ep", "300it")
    assert to_iterations("2ep", 70) == 140 and to_iterations("300it", 70) == 300


def test_load_order_defaults_preset_file_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("preset: quickstart\ntrain:\n  lr: 0.002\nimp:\n  levels: 2\n")
    cfg = load_config(path, overrides=["imp.levels=3", "imp.controls=[reinit]"])
    assert cfg.data.dataset == "mnist5k"  # from the preset
    assert cfg.train.lr == 0.002  # file over preset
    assert cfg.imp.levels == 3 and cfg.imp.controls == ("reinit",)  # overrides over file
    path.write_text("train: [1, 2]\n")
    with pytest.raises(ConfigError, match="train: expected a mapping"):
        load_config(path)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="unknown preset 'lenet'"):
        load_config(preset="lenet")
    load_config(preset="quickstart", overrides=["train.lr=0.5"])
    assert load_config(preset="quickstart").train.lr == 1.2e-3  # overrides never leak into the preset


def test_presets_match_the_papers():
    def preset(name):
        return load_config(preset=name)

    lenet = preset("lenet_300_100")
    assert (lenet.train.optimizer, lenet.train.lr, lenet.train.batch_size) == ("adam", 1.2e-3, 60)
    assert (lenet.prune.rate_for("linear"), lenet.prune.rate_for("output"), lenet.prune.scope) == (
        0.2, 0.1, "layerwise")
    for name, lr, conv_rate, length in [("conv2", 2e-4, 0.1, "20000it"), ("conv4", 3e-4, 0.1, "25000it"),
                                        ("conv6", 3e-4, 0.15, "30000it")]:
        c = preset(name)
        assert (c.train.optimizer, c.train.lr, c.train.length, c.prune.rate_for("conv")) == (
            "adam", lr, length, conv_rate)
        assert (c.prune.rate_for("linear"), c.prune.rate_for("output")) == (0.2, 0.1)
    r = preset("resnet20")
    assert (r.train.optimizer, r.train.lr, r.train.momentum, r.train.weight_decay, r.train.batch_size) == (
        "sgd", 0.1, 0.9, 1e-4, 128)
    assert (r.train.length, r.train.milestones, r.prune.scope, r.prune.rate) == (
        "30000it", ("20000it", "25000it"), "global", 0.2)
    assert set(r.prune.exclude) == {"fc", "*shortcut*"}
    v = preset("vgg19")
    assert (v.train.optimizer, v.train.length, v.train.milestones, v.train.batch_size, v.train.weight_decay) == (
        "sgd", "160ep", ("80ep", "120ep"), 64, 1e-4)
    assert (v.prune.scope, v.prune.rate, v.prune.exclude) == ("global", 0.2, ("fc",))
    for entry in PRESETS:  # each names its source
        assert entry.description and load_config(preset=entry.name)
