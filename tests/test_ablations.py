"""Ablations (issue 15): controls with parameters on small tensors checked by hand, the mask criteria,
retraining modes and their recorded learning rates, start accuracy."""

import subprocess
import sys
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from trainables.catalog import CONTROLS, RETRAIN_SCHEDULES, control_spec, control_variant, load_config
from trainables.config import ConfigError, from_dict, mask_key
from trainables.masks import Mask
from trainables.pruning import large_init_large_final, prune, random_global_like
from trainables.retrain import Setting, Start, final_rate
from trainables.train import Schedule, make_optimizer

# A one-layer network whose weights are written out: fc.weight is [[1, -2, 3], [-4, 5, -6]].
WEIGHTS = torch.tensor([[1.0, -2.0, 3.0], [-4.0, 5.0, -6.0]])
TICKET = Mask({"fc": torch.tensor([[True, True, False], [False, True, True]])})  # keeps 1, -2, 5, -6


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)


class FakeRun:
    """What a control reads from a run: the config, fresh models, and the dense run's states (init = WEIGHTS)."""

    def __init__(self):
        self.cfg = from_dict({"train": {"optimizer": "sgd", "lr": 0.1}})
        self.rewind_iter = 0
        init = Tiny().state_dict()
        init["fc.weight"] = WEIGHTS.clone()
        self.dense = SimpleNamespace(state=lambda point: {"model": init}, state_at=self.state_at)

    def new_model(self, seed):
        torch.manual_seed(seed)
        return Tiny()

    def state_at(self, point, mask, restore):
        model = Tiny()
        model.load_state_dict(self.dense.state(point)["model"])
        return Start(model, make_optimizer(model, self.cfg.train), mask)


def control(name, start="rewind"):
    run = FakeRun()
    ticket = run.state_at(0, TICKET, False)
    out = CONTROLS.get(name)(Setting(run, 1, ticket, start, name))
    return out, out.model.fc.weight.detach()[TICKET.tensors["fc"]]


def test_reinit_sign_keeps_every_surviving_sign():
    out, kept = control("reinit_sign")
    assert out.mask is TICKET
    assert torch.equal(kept.sign(), torch.tensor([1.0, -1.0, 1.0, -1.0]))
    assert not torch.equal(kept.abs(), torch.tensor([1.0, 2.0, 5.0, 6.0]))  # fresh magnitudes


def test_signed_constant_is_one_magnitude_per_layer_with_the_tickets_signs():
    _, kept = control("signed_constant")
    # by hand: the layer's initial weights [1, -2, 3, -4, 5, -6] have mean -0.5 and squared deviations
    # 2 * (1.5^2 + 3.5^2 + 5.5^2) = 89.5, so the (n - 1) standard deviation is sqrt(89.5 / 5) = sqrt(17.9)
    sigma = 17.9 ** 0.5
    assert kept.tolist() == pytest.approx([sigma, -sigma, sigma, -sigma])


def test_shuffle_permutes_the_surviving_start_weights_within_the_layer():
    out, kept = control("shuffle")
    assert sorted(kept.tolist()) == [-6.0, -2.0, 1.0, 5.0] and kept.tolist() != [1.0, -2.0, 5.0, -6.0]
    assert out.mask is TICKET and control("shuffle")[1].tolist() == kept.tolist()  # seeded


def test_random_mask_global_keeps_the_total_count_across_layers():
    mask = Mask({"a": torch.tensor([True, True, True, False]), "b": torch.zeros(6, dtype=torch.bool)})
    drawn = [random_global_like(mask, torch.Generator().manual_seed(s)) for s in range(20)]
    assert all(sum(m.kept().values()) == 3 for m in drawn)
    assert any(m.kept()["b"] > 0 for m in drawn)  # positions move across layers, not only within
    out = control("random_mask_global")[0]
    assert sum(out.mask.kept().values()) == 4 and torch.equal(out.model.fc.weight.detach(), WEIGHTS)


def test_start_end_takes_the_tickets_trained_weights():
    run = FakeRun()
    ticket = run.state_at(0, TICKET, False)
    with torch.no_grad():
        ticket.model.fc.weight.mul_(10)
    out = CONTROLS.get("shuffle")(Setting(run, 1, ticket, "end", "shuffle(start=end)"))
    assert sorted(out.model.fc.weight.detach()[TICKET.tensors["fc"]].tolist()) == [-60.0, -20.0, 10.0, 50.0]


@pytest.mark.parametrize("strategy, kept", [
    # trained |w| = [6, 1, 5, 2], rewound |w| = [1, 6, 4, 3]; keep 2 of 4
    ("magnitude", [0, 2]),  # large_final: the two largest trained
    ("large_init", [1, 2]),
    ("large_init_large_final", [2, 3]),  # ranks (trained, init): [3,0] [0,3] [2,2] [1,1]: min 0,0,2,1
    ("magnitude_increase", [0, 2]),  # |trained| - |rewound| = [5, -5, 1, -1]
    ("movement", [0, 1]),  # |trained - rewound| = [5, 7, 1, 1]: the sign flip of entry 1 moved most
])
def test_each_mask_criterion_keeps_the_expected_entries(strategy, kept):
    from trainables.config import PruneConfig
    from trainables.masks import Layer

    trained, rewound = torch.tensor([6.0, -1.0, 5.0, 2.0]), torch.tensor([1.0, 6.0, 4.0, 3.0])
    layer = Layer("w", "linear", 4)
    mask = prune(Mask({"w": torch.ones(4, dtype=torch.bool)}), [layer], {"w": trained}, {"w": rewound},
                 PruneConfig(strategy=strategy, rate=0.5), 1, torch.Generator().manual_seed(0))
    assert mask.tensors["w"].nonzero().squeeze(1).tolist() == kept


def test_large_init_large_final_is_zhous_intersection_grown_to_the_exact_count():
    trained = torch.arange(10.0)  # top 20%: {8, 9}
    rewound = torch.tensor([9.0, 8, 7, 6, 5, 0, 1, 2, 3, 4])  # top 20%: {0, 1}; entry 9 is 5th, entry 8 6th
    scores = large_init_large_final(trained, rewound, None)
    # Zhou's top-20% intersection {8, 9} & {0, 1} is empty; growing both sets to the top 60% (6 entries:
    # {4..9} by trained, {0..4, 9} by init) gives {4, 9}, exactly 2: the two with the best worse-rank
    assert set(scores.argsort(descending=True, stable=True)[:2].tolist()) == {4, 9}


def test_control_spelling_and_variant_names():
    assert control_spec("random_mask(start=end)") == ("random_mask", {"start": "end"})
    assert control_spec("shuffle") == ("shuffle", {"start": "rewind"})
    assert control_variant("random_mask( start = rewind )") == "random_mask"  # defaults are not named
    assert control_variant("reinit_sign(start=init)") == "reinit_sign(start=init)"
    with pytest.raises(ConfigError) as info:
        control_spec("reinit(start=end)")
    assert info.value.problems == ["'reinit(start=end)': start must be one of rewind, init, got 'end'"]
    for bad in ("random_mask(start=middle)", "reinit(begin=init)", "random mask", "nothing"):
        with pytest.raises(ConfigError) as info:
            load_config(preset="quickstart", overrides=[f"imp.controls=[{bad}]"])
        assert len(info.value.problems) == 1 and info.value.problems[0].startswith("imp.controls: ")


def test_retrain_decides_masks_but_not_the_dense_run_or_default_names():
    from trainables.config import config_hash, dense_hash

    base = load_config(preset="quickstart")
    other = base.with_updates({"imp.retrain": "lr_rewind", "imp.controls": ["shuffle(start=end)"]})
    assert dense_hash(other) == dense_hash(base) and config_hash(other) != config_hash(base)
    assert mask_key(other) != mask_key(base)
    assert mask_key(base.with_updates({"imp.controls": ["shuffle"]})) == mask_key(base)
    assert set(RETRAIN_SCHEDULES) == {"rewind", "lr_rewind", "finetune"}


def test_finetune_recipe_is_the_schedules_final_rate():
    cfg = from_dict({"train": {"optimizer": "sgd", "lr": 0.1, "length": "100it", "milestones": ["50it", "80it"],
                               "warmup": "10it"}}).train
    flat = final_rate(cfg, 10)
    schedule = Schedule.of(flat, 10)
    assert flat.lr == pytest.approx(0.001) and {schedule.lr_factor(i) for i in range(100)} == {1.0}


def tiny(**updates):
    return from_dict({
        "data": {"dataset": "synthetic", "shape": [1, 8, 8], "num_classes": 4, "train_size": 600, "test_size": 200},
        "train": {"optimizer": "sgd", "lr": 0.1, "length": "60it", "batch_size": 30, "eval_every": "20it",
                  "milestones": ["30it"]},
        "imp": {"levels": 2, "rewind_iter": "20it", "controls": ["reinit", "shuffle(start=init)"]},
        "runtime": {"device": "cpu"},
    }).with_updates(updates)


@pytest.mark.slow
def test_retraining_modes_start_where_they_should_and_record_the_rate(tmp_path):
    from trainables.imp import ImpRun
    from trainables.train import evaluate

    run = ImpRun(tiny(**{"imp.retrain": "lr_rewind", "imp.keep_weights": "all"}), tmp_path / "lr")
    table = run.run().to_pandas()
    history = pq.read_table(run.layout.history).to_pandas()
    curve = history[(history.level == 1) & (history.variant == "ticket")].sort_values("iteration")
    assert curve.iteration.iloc[0] == 20 and curve.lr.iloc[0] == pytest.approx(0.1)  # the schedule's at k (< 30it)
    assert curve.lr.iloc[-1] == pytest.approx(0.01) and table.start_accuracy.notna().all()
    # level 2's ticket starts from level 1's trained weights under level 2's mask
    rows = table.set_index(["level", "variant"])
    model = run.new_model(0)
    model.load_state_dict(run.trained(1))
    run.mask(2).applier(model)()
    start = evaluate(model, run.data, ("test",), 1000)["test_accuracy"].item()
    assert rows.loc[(2, "ticket"), "start_accuracy"] == pytest.approx(start)
    assert rows.loc[(2, "ticket"), "start_iter"] == 20 and rows.loc[(2, "shuffle(start=init)"), "start_iter"] == 20
    assert set(table.retrain) == {"lr_rewind"}

    fine = ImpRun(tiny(**{"imp.retrain": "finetune"}), tmp_path / "ft", dense_dir=run.dense.out)
    fine.run()
    history = pq.read_table(fine.layout.history).to_pandas()
    assert set(history[history.level > 0].lr.round(9)) == {0.01}  # the final rate, for every variant
    assert fine.trainings == 6  # the dense run is shared with lr_rewind's

    rewind = ImpRun(tiny(), tmp_path / "rw", dense_dir=run.dense.out)
    table = rewind.run().to_pandas().set_index(["level", "variant"])
    assert table.loc[(1, "reinit"), "start_iter"] == 20 and table.loc[(1, "shuffle(start=init)"), "start_iter"] == 0
    dense = run.dense.state_at(20).model  # the dense row's start: the unpruned network at k
    at_k = evaluate(dense, run.data, ("test",), 1000)["test_accuracy"].item()
    assert table.loc[(0, "dense"), "start_accuracy"] == pytest.approx(at_k)


@pytest.mark.slow
def test_lth_imp_lr_rewind_with_zhous_controls_writes_start_accuracy(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "orchestrator.cli", "imp", "--preset", "quickstart", "--set",
               "imp.retrain=lr_rewind", "--set", "imp.controls=[reinit_sign,shuffle,random_mask_global]",
               "--set", "imp.levels=2", "--set", "train.length=300it", "--out", str(out)]
    shown = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    table = pq.read_table(out / "results.parquet").to_pandas()
    assert sorted(map(tuple, table[["level", "variant"]].values.tolist())) == sorted(
        [(0, "dense")] + [(level, v) for level in (1, 2) for v in
                          ("ticket", "reinit_sign", "shuffle", "random_mask_global")])
    assert table.start_accuracy.between(0, 1).all() and "random_mask_global" in shown


def ablation_table():
    """Two seeds x three modes; accuracies chosen so every mean is known: mode offset + variant offset - level."""
    import json
    from datetime import datetime, timezone

    import pyarrow as pa

    from orchestrator import sweep_folder
    from trainables.layout import RESULTS

    rows = []
    for m, mode in enumerate(("rewind", "lr_rewind", "finetune")):
        for seed in (0, 1):
            for level, variants in ((0, ["dense"]), (1, ["ticket", "reinit", "random_mask(start=end)"]),
                                    (2, ["ticket", "reinit", "random_mask(start=end)"])):
                for v, variant in enumerate(variants):
                    rows.append({"sweep": "abl", "sweep_id": "x", "trial_id": f"{mode}-{seed}", "seed": seed,
                                 "overrides": json.dumps({"imp.retrain": mode, "seed": seed}), "retrain": mode,
                                 "level": level, "variant": variant, "weights_remaining": 0.5 ** level,
                                 "test_accuracy": 0.9 - 0.01 * m - 0.02 * v - 0.01 * level + 0.001 * seed,
                                 "start_accuracy": 0.1 * v + 0.001 * seed, "early_stop_iter": 100,
                                 "finished_at": datetime(2026, 1, 1, tzinfo=timezone.utc)})
    return pa.Table.from_pylist(rows, schema=sweep_folder.sweep_schema(RESULTS))


def test_report_draws_a_panel_per_retraining_mode_with_every_control_and_the_start_accuracy():
    from orchestrator import report
    from trainables.layout import RESULTS

    built = report.build({RESULTS: ablation_table()}, report.Options(), "abl")
    accuracy = next(f for f in built.figures if f.name == "accuracy_vs_weights_remaining")
    assert [p.title for p in accuracy.panels] == ["retrain=finetune", "retrain=lr_rewind", "retrain=rewind"]
    for panel in accuracy.panels:
        assert [s.variant for s in panel.series] == ["ticket", "reinit", "random_mask(start=end)"]
    rewind = {s.variant: s for s in accuracy.panels[2].series}
    assert rewind["reinit"].y == pytest.approx((100 * (0.9 - 0.02 - 0.01 + 0.0005), 100 * (0.9 - 0.02 - 0.02 + 0.0005)))
    start = next(f for f in built.figures if f.name == "start_accuracy_vs_weights_remaining")
    series = {s.variant: s for s in start.panels[0].series}
    assert series["random_mask(start=end)"].y == pytest.approx((20.05, 20.05))


def test_lth_results_summarises_the_start_accuracy(tmp_path, capsys, monkeypatch):
    from orchestrator.cli import views

    monkeypatch.setattr(views.sweep_folder, "read_tables", lambda directory: {
        "results.parquet": ablation_table(), "stability_summary.parquet": ablation_table().slice(0, 0)})
    assert views.results(SimpleNamespace(dir=str(tmp_path), format="csv", column="start_accuracy", compact=False)) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("imp.retrain,level,weights_remaining,seeds,dense_mean")
    assert "random_mask(start=end)_mean" in out.splitlines()[0]
