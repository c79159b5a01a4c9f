"""IMP on a tiny synthetic task: rewinding, controls, sparsity, determinism, resume."""

import pyarrow.parquet as pq
import pytest
import torch

from trainables.config import ConfigError, config_hash, dense_hash, from_dict
from trainables.data import load_dataset
from trainables.imp import CheckpointError, DenseRun, ImpRun, Reporter
from trainables.masks import Mask
from trainables.models import build_model
from trainables.pruning import target_kept
from trainables.train import make_optimizer, train

METRICS = ["level", "variant", "weights_remaining", "test_accuracy", "test_loss", "val_loss", "early_stop_iter",
           "early_stop_accuracy", "start_iter", "end_iter"]


def config(**updates):
    base = from_dict({
        "data": {"dataset": "synthetic", "shape": [1, 8, 8], "num_classes": 4, "train_size": 600, "test_size": 200},
        "train": {"length": "60it", "batch_size": 30, "eval_every": "20it"},
        "imp": {"levels": 2, "controls": ["reinit", "random_mask"]},
        "runtime": {"device": "cpu"},
    })
    return base.with_updates(updates)


def metrics(out):
    table = pq.read_table(out / "results.parquet").to_pandas()
    return table.sort_values(["level", "variant"])[METRICS].reset_index(drop=True)


class Interrupt(Reporter):
    """Stops the process (as a kill would) when training of `level` starts."""

    def __init__(self, level):
        self.level = level

    def training(self, level, variant, start, end, weights_remaining):
        if level == self.level:
            raise KeyboardInterrupt


def test_levels_variants_and_exact_sparsity(tmp_path):
    cfg = config()
    run = ImpRun(cfg, tmp_path)
    table = run.run().to_pandas()
    assert list(zip(table.level, table.variant)) == [(0, "dense")] + [
        (lvl, v) for lvl in (1, 2) for v in ("ticket", "reinit", "random_mask")]
    assert run.trainings == 7
    layers = {l.name: l for l in run.layers}
    total = sum(l.numel for l in layers.values())
    for level in range(3):
        mask = Mask.from_state(torch.load(tmp_path / f"checkpoints/level_{level:03d}/mask.pt"))
        expected = {n: target_kept(l.numel, 0.1 if l.kind == "output" else 0.2, level) for n, l in layers.items()}
        assert mask.kept() == expected
        rows = table[table.level == level]
        assert rows.weights_remaining.tolist() == pytest.approx([sum(expected.values()) / total] * len(rows))
    assert table.test_accuracy.between(0, 1).all() and table.test_loss.gt(0).all()
    assert table[table.variant != "dense"].start_iter.eq(0).all() and table.end_iter.eq(60).all()
    history = pq.read_table(tmp_path / "history.parquet").to_pandas()
    assert history.groupby(["level", "variant"]).iteration.apply(list).map(lambda its: its == [0, 20, 40, 60]).all()


def test_pruned_weights_stay_zero_and_survivors_train(tmp_path):
    cfg = config(**{"imp.levels": 1, "imp.controls": [], "train.weight_decay": 0.01})
    ImpRun(cfg, tmp_path).run()
    mask = Mask.from_state(torch.load(tmp_path / "checkpoints/level_001/mask.pt"))
    trained = torch.load(tmp_path / "checkpoints/level_001/weights.pt")
    rewind = torch.load(tmp_path / "dense/rewind/it_0000000.pt")
    for name, keep in mask.tensors.items():
        w = trained[f"{name}.weight"]
        assert (w[~keep] == 0).all()
        assert (w[keep] != rewind["model"][f"{name}.weight"][keep]).float().mean() > 0.9


def test_rewind_to_init_is_the_original_initialisation(tmp_path):
    cfg = config(**{"imp.levels": 1})
    run = ImpRun(cfg, tmp_path)
    run.run()
    init = build_model(cfg.model, run.data.input_shape, run.data.num_classes, cfg.seed).state_dict()
    rewind = torch.load(tmp_path / "dense/rewind/it_0000000.pt")
    assert rewind["iteration"] == 0
    assert all(torch.equal(init[k], v) for k, v in rewind["model"].items())
    mask = Mask.from_state(torch.load(tmp_path / "checkpoints/level_001/mask.pt"))
    ticket = run.rewound(mask)
    ticket.mask.applier(ticket.model)()
    for name, keep in mask.tensors.items():
        assert torch.equal(ticket.model.state_dict()[f"{name}.weight"], init[f"{name}.weight"] * keep)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_late_rewinding_restores_weights_optimizer_and_schedule(tmp_path, optimizer):
    # SGD with momentum and a warm-up plus milestone, so a wrong schedule position or a dropped momentum
    # buffer shows up in the result. Under the replayed order and the restored optimiser (the protocol before
    # 2026-12, still one setting away) a rewound, unpruned ticket retraces the dense run exactly.
    cfg = config(**{"train.optimizer": optimizer, "train.lr": 0.05 if optimizer == "sgd" else 1e-3,
                    "train.warmup": "30it", "train.milestones": ["45it"], "imp.rewind_iter": "20it",
                    "imp.levels": 1, "imp.controls": [], "prune.rate": 0.0, "train.data_order": "replay",
                    "imp.rewind_optimizer": "restore"})
    run = ImpRun(cfg, tmp_path)
    table = run.run().to_pandas()
    rewind = torch.load(tmp_path / "dense/rewind/it_0000020.pt")
    assert rewind["iteration"] == 20 and rewind["optimizer"]["state"]

    # The snapshot equals a dense run stopped at iteration 20 ...
    data = load_dataset(cfg.data)
    model = build_model(cfg.model, data.input_shape, data.num_classes, cfg.seed)
    train(model, make_optimizer(model, cfg.train), data, cfg.with_updates({"train.length": "20it"}).train,
          data_seed=cfg.data_seed)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in rewind["model"].items())
    # ... and with nothing pruned, the rewound ticket retraces the dense run exactly from 20 to 60.
    dense, ticket = table.iloc[0], table.iloc[1]
    assert ticket.start_iter == 20 and ticket.weights_remaining == 1.0
    for column in ("test_accuracy", "test_loss", "val_loss", "early_stop_iter"):
        assert ticket[column] == dense[column], column
    # Training the ticket left the rewind state untouched: every later rewind starts from it too.
    again = run.rewound(Mask({})).optimizer.state_dict()["state"]
    assert all(torch.equal(v, rewind["optimizer"]["state"][i][k]) for i, st in again.items() for k, v in st.items()
               if torch.is_tensor(v))


def test_controls_start_where_they_should(tmp_path):
    cfg = config(**{"imp.levels": 1})
    run = ImpRun(cfg, tmp_path)
    run.run()
    mask = Mask.from_state(torch.load(tmp_path / "checkpoints/level_001/mask.pt"))
    from trainables.catalog import CONTROLS

    from trainables.retrain import Setting

    ticket = run.rewound(mask)
    reinit = CONTROLS.get("reinit")(Setting(run, 1, ticket, "rewind", "reinit"))
    random = CONTROLS.get("random_mask")(Setting(run, 1, ticket, "rewind", "random_mask"))
    ticket = ticket.model.state_dict()
    assert reinit.mask is mask
    assert not torch.equal(reinit.model.state_dict()["fc1.weight"], ticket["fc1.weight"])
    assert torch.equal(random.model.state_dict()["fc1.weight"], ticket["fc1.weight"])
    assert random.mask.kept() == mask.kept() and not random.mask.equal(mask)
    again = CONTROLS.get("reinit")(Setting(run, 1, run.rewound(mask), "rewind", "reinit")).model.fc1.weight.detach()
    assert torch.equal(again, reinit.model.state_dict()["fc1.weight"])  # seeded per level


@pytest.mark.slow
def test_same_config_same_masks_and_metrics(tmp_path):
    cfg = config()
    ImpRun(cfg, tmp_path / "a").run()
    ImpRun(cfg, tmp_path / "b").run()
    assert metrics(tmp_path / "a").equals(metrics(tmp_path / "b"))
    for level in range(3):
        masks = [Mask.from_state(torch.load(tmp_path / r / f"checkpoints/level_{level:03d}/mask.pt")) for r in "ab"]
        assert masks[0].equal(masks[1])
    other = ImpRun(cfg.with_updates({"train.data_seed": 7}), tmp_path / "c")
    other.run()
    assert not metrics(tmp_path / "c").equals(metrics(tmp_path / "a"))  # SGD noise is its own seed


@pytest.mark.slow
def test_resume_after_an_interrupted_level_matches_an_uninterrupted_run(tmp_path):
    cfg = config()
    ImpRun(cfg, tmp_path / "whole").run()
    with pytest.raises(KeyboardInterrupt):
        ImpRun(cfg, tmp_path / "cut", Interrupt(level=2)).run()
    assert ImpRun(cfg, tmp_path / "cut").finished_levels() == [0, 1]
    resumed = ImpRun(cfg, tmp_path / "cut")
    resumed.run()
    assert resumed.trainings == 3  # level 2's ticket and two controls; levels 0 and 1 not retrained
    assert metrics(tmp_path / "cut").equals(metrics(tmp_path / "whole"))
    assert not (tmp_path / "cut/checkpoints/level_001/weights.pt").exists()  # only dense and latest kept
    assert (tmp_path / "cut/dense/weights.pt").exists()
    finished = ImpRun(cfg, tmp_path / "cut")
    finished.run()
    assert finished.trainings == 0


@pytest.mark.slow
def test_runs_differing_after_dense_training_share_one_dense_run(tmp_path):
    # Rewind point, pruning rate and controls differ; model, data, training and seed agree.
    configs = [config(**{"imp.rewind_iter": k, "prune.rate": r, "imp.levels": 1})
               for k in ("0it", "20it") for r in (0.2, 0.5)]
    assert len({dense_hash(c) for c in configs}) == 1 and len({config_hash(c) for c in configs}) == 4
    runs = [ImpRun(c, tmp_path / f"shared{i}", dense_dir=tmp_path / "dense") for i, c in enumerate(configs)]
    for run in runs:
        run.run()
    # Only the first run trains the dense network; the first 20it run recreates iteration 20
    # from the stored initial state (not a training run: no evaluation, no results row).
    assert [r.trainings for r in runs] == [1 + 3, 3, 3, 3]
    assert DenseRun(configs[0], tmp_path / "dense").layout.stored_points() == [0, 20]
    for i, c in enumerate(configs):  # identical to runs that trained their own dense network
        ImpRun(c, tmp_path / f"own{i}").run()
        assert metrics(tmp_path / f"shared{i}").equals(metrics(tmp_path / f"own{i}"))


def test_a_recreated_rewind_point_equals_the_one_saved_during_dense_training(tmp_path):
    cfg = config(**{"train.optimizer": "sgd", "train.lr": 0.05, "train.warmup": "30it"})
    first = DenseRun(cfg, tmp_path / "first")
    first.ensure([20, 45])
    later = DenseRun(cfg, tmp_path / "later")
    later.ensure([])
    assert later.layout.stored_points() == [0] and later.trainings == 1
    later.ensure([20, 45])
    assert later.layout.stored_points() == [0, 20, 45] and later.trainings == 1  # recreated, not retrained
    for k in (20, 45):
        a, b = first.state(k), later.state(k)
        assert all(torch.equal(a["model"][n], b["model"][n]) for n in a["model"])
        for i, state in a["optimizer"]["state"].items():
            assert all(torch.equal(v, b["optimizer"]["state"][i][key]) for key, v in state.items()), (k, i)
    with pytest.raises(ConfigError, match="holds a different run"):
        DenseRun(cfg.with_updates({"train.lr": 0.01}), tmp_path / "first")


def test_corrupt_checkpoint_and_foreign_directory_are_clear_errors(tmp_path):
    cfg = config()
    with pytest.raises(KeyboardInterrupt):
        ImpRun(cfg, tmp_path, Interrupt(level=2)).run()
    (tmp_path / "checkpoints/level_001/weights.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"level_001/weights.pt cannot be read.*2 finished level"):
        ImpRun(cfg, tmp_path).run()
    assert metrics(tmp_path).level.max() == 1  # nothing computed was lost
    with pytest.raises(ConfigError, match="holds a different run"):
        ImpRun(cfg.with_updates({"train.lr": 0.01}), tmp_path)


@pytest.mark.parametrize("updates, message", [
    ({"prune.exclude": ["classifier"]}, r"prune.exclude: \['classifier'\] match no layer"),
    ({"imp.rewind_iter": "60it"}, "imp.rewind_iter: 60it is not before the end of training"),
])
def test_config_errors_found_when_the_run_starts(tmp_path, updates, message):
    with pytest.raises(ConfigError, match=message):
        ImpRun(config(**updates), tmp_path)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_imp_on_cuda_keeps_data_on_the_device_and_pruned_weights_zero(tmp_path):
    cfg = config(**{"runtime.device": "cuda", "imp.levels": 1})
    run = ImpRun(cfg, tmp_path)
    assert run.data.x_train.is_cuda
    table = run.run().to_pandas()
    assert len(table) == 4 and table.test_accuracy.between(0, 1).all()
    mask = Mask.from_state(torch.load(tmp_path / "checkpoints/level_001/mask.pt"))
    trained = torch.load(tmp_path / "checkpoints/level_001/weights.pt")
    assert all((trained[f"{n}.weight"][~keep] == 0).all() for n, keep in mask.tensors.items())
