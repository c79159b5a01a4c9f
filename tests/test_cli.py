import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from orchestrator.cli import main
from trainables.catalog import MODELS, load_config
from trainables.data import load_dataset
from trainables.masks import prunable_layers
from trainables.models import build_model
from trainables.presets import PRESETS
from trainables.pruning import target_kept


def test_registries_are_listable(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert all(f"{name} " in out for name in PRESETS.names()) and "Frankle & Carbin 2019" in out
    for kind, names in [("models", MODELS.names()), ("controls", ["reinit", "random_mask"]),
                        ("strategies", ["magnitude", "movement"]), ("datasets", ["mnist5k", "cifar10"])]:
        assert main(["list", kind]) == 0
        out = capsys.readouterr().out
        assert all(name in out for name in names)
    assert MODELS.names()[0] == "lenet_300_100" and len(MODELS.names()) == 9


@pytest.mark.slow
def test_bad_input_is_one_clear_line_not_a_traceback(tmp_path, capsys):
    assert main(["imp", "--preset", "quickstart", "--set", "train.lr=fast", "--set", "model.arch=resnet18",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "train.lr: expected a number, got 'fast'" in err and "model.arch: unknown architecture" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()
    assert main(["imp", "--preset", "resnet20", "--set", f"data.root={tmp_path}", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"dataset 'cifar10' not found in {tmp_path}" in err and "lth data download cifar10" in err


def test_dry_run_prints_the_resolved_config(capsys):
    assert main(["imp", "--preset", "quickstart", "--set", "train.lr=0.002", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.002" in out and "dataset: mnist5k" in out and "# run name: lenet_300_100-mnist5k-" in out


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path):
    out = tmp_path / "quickstart"
    command = [sys.executable, "-m", "orchestrator.cli", "imp", "--preset", "quickstart", "--out", str(out)]
    shown = subprocess.run(command, capture_output=True, text=True, check=True).stdout

    cfg = load_config(preset="quickstart")
    table = pq.read_table(out / "results.parquet").to_pandas()
    levels = cfg.imp.levels
    assert len(table) == 1 + 3 * levels
    assert sorted(table.variant.unique()) == ["dense", "random_mask", "reinit", "ticket"]
    data = load_dataset(cfg.data)
    layers = prunable_layers(build_model(cfg.model, data.input_shape, data.num_classes, 0))
    total = sum(l.numel for l in layers)
    for level, rows in table.groupby("level"):
        kept = sum(target_kept(l.numel, cfg.prune.rate_for(l.kind), level) for l in layers)
        assert rows.weights_remaining.tolist() == pytest.approx([kept / total] * len(rows))
        assert set(rows.variant) == ({"dense"} if level == 0 else {"ticket", "reinit", "random_mask"})
        assert f"\n    {level}  " in shown  # the per-level table printed as it went
    assert table.weights_remaining.min() == pytest.approx(0.5 ** levels, rel=0.1)
    assert table.test_accuracy.between(0.8, 1).all()  # real digits: every variant learns
    assert table.early_stop_iter.between(0, 1500).all() and table.train_seconds.gt(0).all()

    again = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert f"finished levels: {list(range(levels + 1))}" in again  # resuming a finished run trains nothing
    assert len(pq.read_table(out / "results.parquet")) == len(table)


@pytest.mark.slow
def test_lth_stability_runs_one_analysis_and_resumes_it(tmp_path, capsys):
    args = ["stability", "--set", "data.dataset=synthetic", "--set", "data.shape=[1,8,8]", "--set", "data.num_classes=4",
            "--set", "data.train_size=300", "--set", "data.test_size=100", "--set", "train.length=40it",
            "--set", "train.batch_size=30", "--set", "train.eval_every=20it", "--set", "runtime.device=cpu",
            "--set", "imp.rewind_iter=10it", "--set", "stability.level=1", "--set", "stability.replicates=2",
            "--set", "stability.alpha_points=4", "--out", str(tmp_path / "lmc")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "IMP level 1's subnetwork at k = 10: 2 pair(s) of copies" in out
    assert out.count("pair 0 ") == 2 and out.count("pair 1 ") == 2  # train and test splits
    assert "train: instability" in out and "test: instability" in out
    summary = pq.read_table(tmp_path / "lmc" / "stability_summary.parquet").to_pandas()
    assert len(summary) == 4 and (summary.rewind_iter == 10).all() and (summary.weights_remaining < 1).all()
    assert main(args) == 0  # everything is there: nothing is trained again
    out = capsys.readouterr().out
    assert "finished pairs: [0, 1]" in out and "pair 0" not in out and "ticket" not in out
