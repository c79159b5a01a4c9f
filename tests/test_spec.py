"""Sweep files: validation before anything runs, grid expansion in Tune's order, the dry run."""

from __future__ import annotations

import pytest
import yaml
from ray import tune

from orchestrator.cli import main
from orchestrator.spec import load_sweep, parse_sweep, total_iterations
from orchestrator.tuner import param_space
from tests.sweep_helpers import BASE, sweep_raw
from trainables.config import ConfigError, dense_hash


def problems(raw, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    assert str(path) in str(info.value)  # every message names the file
    return info.value.problems


def test_every_problem_is_reported_with_its_key_and_fix(tmp_path):
    raw = sweep_raw(tmp_path)
    raw.update({
        "serach": {"algorithm": "grid"},  # typo at the top
        "base": {**BASE, "model": {"arch": "resnet18"}, "data": {**BASE["data"], "dataset": "cifar11"}},
        "space": {"train.lr": [0.1, -1.0], "train.lrr": [0.1], "prune.rate": {"uniform": [0.5, 0.2]},
                  "imp.rewind_iter": {"randint": ["a", 3]}},
        "search": {"algorithm": "optunaa", "num_samples": 0},
        "resources": {"gpu": 1.5, "cpus": 2},
        "max_concurrent": 0,
        "storage": "ftp://host/x",
    })
    found = "\n".join(problems(raw, tmp_path))
    for expected in [
        "serach: unknown key (did you mean 'search'?)",
        "base.model.arch: unknown architecture 'resnet18'", "lth list models",
        "base.data.dataset: unknown dataset 'cifar11'", "lth list datasets",
        "space.train.lrr: not a config key (did you mean 'train.lr'?)",
        "space.prune.rate.uniform: low (0.5) must be below high (0.2)",
        "space.imp.rewind_iter.randint: expected [low, high]",
        "search.algorithm: expected one of 'grid', 'optuna', got 'optunaa'",
        "search.num_samples: must be at least 1",
        "resources.cpus: unknown key (did you mean 'cpu'?)",
        "resources.gpu: a fraction below 1",
        "max_concurrent: expected an integer >= 1",
        "storage: unknown URI scheme 'ftp'",
    ]:
        assert expected in found, expected


def test_values_are_checked_against_the_config_schema(tmp_path):
    raw = sweep_raw(tmp_path, space={"train.lr": [0.1, -1.0], "train.optimizer": ["sgd", "adamw"]})
    found = "\n".join(problems(raw, tmp_path))
    assert "space.train.lr = -1.0: train.lr: must be positive" in found
    assert "space.train.optimizer = 'adamw': train.optimizer: expected one of 'sgd', 'adam'" in found
    # Each value is fine alone; a combination is not: rewinding to the end of a 90-iteration training.
    raw = sweep_raw(tmp_path, space={"imp.rewind_iter": ["10it", "90it"], "train.length": ["90it", "200it"]})
    found = problems(raw, tmp_path)
    assert found == ["space: the trial {'imp.rewind_iter': '90it', 'train.length': '90it'}: imp.rewind_iter 90it is "
                     "not before the end of training (90it); choose an earlier rewind point"]


def test_cases_and_unknown_metric(tmp_path):
    raw = sweep_raw(tmp_path, cases=[{"train.warmup": "10it"}, {"train.lr": 0.1}],
                    search={"algorithm": "optuna", "metric": "ticket_acc"})
    found = "\n".join(problems(raw, tmp_path))
    assert "cases[1].train.lr: also swept under `space`; set it in one place" in found
    assert "search.metric: unknown metric 'ticket_acc' (did you mean 'ticket_accuracy'?)" not in found
    assert "search.metric: unknown metric 'ticket_acc'" in found


def test_stability_sweeps_check_their_kind_metric_and_tracking(tmp_path):
    raw = sweep_raw(tmp_path, kind="stabilty", tracking={"uri": 5, "enabled": "yes"}, masks_from="runs/x")
    found = "\n".join(problems(raw, tmp_path))
    assert "masks_from: an IMP sweep folder (a string) for a `kind: stability` sweep" in found
    assert "kind: expected one of imp, stability, pruning_at_init, got 'stabilty' (did you mean 'stability'?)" in found
    assert "tracking.uri: expected a string, got 5" in found
    assert "tracking.enabled: expected true or false, got 'yes'" in found
    raw = sweep_raw(tmp_path, kind="stability", space={"stability.level": [0, 1], "stability.bn": ["recompute"]},
                    search={"algorithm": "optuna", "metric": "ticket_accuracy"})
    assert "search.metric: unknown metric 'ticket_accuracy'" in "\n".join(problems(raw, tmp_path))
    spec = parse_sweep(sweep_raw(tmp_path, kind="stability", space={"stability.level": [0, 2]},
                                 base={**BASE, "stability": {"replicates": 2}}), "test")
    # per trial: IMP up to the analysed level (no controls), then 2 pairs of copies; one shared dense run
    iterations, dense, trainings = total_iterations(spec, spec.grid())
    assert (dense, trainings, iterations) == (1, (0 + 4) + (2 + 4), 90 + 10 * 90)


def test_grid_lists_trials_in_tunes_order_and_rewind_points_per_dense_run(tmp_path):
    raw = sweep_raw(tmp_path, cases=[{"train.warmup": "0it"}, {"train.warmup": "30it"}],
                    space={"train.lr": [1e-3, 3e-3], "imp.rewind_iter": ["0it", "30it"], "seed": [0]})
    spec = parse_sweep(raw, "t")
    grid = spec.grid()
    assert len(grid) == 8
    variants = [cfg for _, cfg in tune.search.variant_generator.generate_variants(param_space(spec))]
    assert grid == variants  # what --dry-run lists is what Tune runs, in its order
    points = spec.rewind_points()
    assert len(points) == 4 and all(p == ["0it", "30it"] for p in points.values())  # lr x warm-up
    cfg = spec.trial_config(grid[0])
    assert points[dense_hash(cfg)] == ["0it", "30it"]
    iterations, dense, trainings = total_iterations(spec, grid)
    assert dense == 4 and trainings == 8 * 3 * 2
    assert iterations == 4 * 90 + 4 * 3 * 2 * 90 + 4 * 3 * 2 * 60  # dense once, then from k=0 or k=30


def test_dry_run_prints_trials_and_iterations_and_runs_nothing(tmp_path, capsys):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep_raw(tmp_path / "store")))
    assert main(["sweep", "run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "imp.rewind_iter=0it, prune.rate=0.2, train.lr=0.0012" in out
    # 2 dense runs of 90 iterations; 8 trials x 3 levels x 2 trainings from k=0 (90 it) or k=30 (60 it)
    assert "8 trials sharing 2 dense run(s): 50 trainings, 3,780 training iterations" in out
    assert not (tmp_path / "store").exists()
    path.write_text(yaml.safe_dump({**sweep_raw(tmp_path), "space": {"train.lr": "fast"}}))
    assert main(["sweep", "run", str(path), "--dry-run"]) == 2
    assert "space.train.lr: expected a list of values" in capsys.readouterr().err


def test_progress_lines_name_trials_as_the_dry_run_does_and_never_stop_a_sweep(tmp_path, capsys):
    from types import SimpleNamespace

    from orchestrator.tuner import Progress

    progress = Progress(parse_sweep(sweep_raw(tmp_path), "t"))
    result = {"level": 2, "weights_remaining": 0.64, "ticket_test_accuracy": 0.9712, "reinit_test_accuracy": 0.95}
    progress.on_trial_result(0, [], SimpleNamespace(trial_id="a0e34_00004", config={"train.lr": 0.003}), result)
    progress.on_trial_result(0, [], SimpleNamespace(trial_id="f8ffc776", config={"train.lr": 0.01}), result)
    progress.on_trial_result(0, [], None, result)  # a broken call is reported, not raised
    out = capsys.readouterr().out
    assert "trial 5 (lr=0.003): level 2, 64.0% remaining, ticket 97.12%, reinit 95.00%" in out
    assert "trial 2 (lr=0.01)" in out  # searchers' random trial ids: numbered as seen
    assert "progress display failed: AttributeError" in out


def test_a_sweep_naming_a_missing_dataset_fails_before_ray_starts(tmp_path, capsys):
    import ray

    path = tmp_path / "cifar.yaml"
    base = {"preset": "resnet20", "data": {"root": str(tmp_path / "data")}, "imp": {"levels": 1}}
    path.write_text(yaml.safe_dump({**sweep_raw(tmp_path / "store"), "base": base, "space": {"train.lr": [0.1]}}))
    assert main(["sweep", "run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"dataset 'cifar10' not found in {tmp_path / 'data'}" in err and "lth data download cifar10" in err
    assert not ray.is_initialized() and not (tmp_path / "store").exists()  # nothing started, nothing written
    from trainables.catalog import missing_dataset
    from trainables.config import DataConfig

    assert missing_dataset(DataConfig(dataset="cifar10", root=str(tmp_path), download=True)) is None  # may fetch it
    assert missing_dataset(DataConfig(dataset="mnist5k")) is None  # bundled


def test_selection_is_on_validation_data_only(tmp_path):
    optuna = {"algorithm": "optuna", "num_samples": 2}
    raw = sweep_raw(tmp_path, space={"train.lr": {"loguniform": [1e-4, 1e-2]}},
                    search={**optuna, "metric": "ticket_test_accuracy"})
    (found,) = problems(raw, tmp_path)
    assert found.startswith("search.metric: ticket_test_accuracy is computed on the test split")
    assert "select on ticket_val_accuracy (the validation split)" in found and "allow_test_metric: true" in found
    raw["search"]["allow_test_metric"] = True  # knowingly
    assert parse_sweep(raw, "t").search.metric == "ticket_test_accuracy"
    raw["search"] = {**optuna, "metric": "ticket_accuracy"}  # the name before metric names said their split
    (found,) = problems(raw, tmp_path)
    assert "'ticket_accuracy' is no longer reported" in found and "ticket_test_accuracy" in found
    assert "ticket_val_accuracy (the validation split: select on this)" in found
    raw["search"] = optuna  # the default objective: the ticket's validation accuracy
    assert parse_sweep(raw, "t").search.metric == "ticket_val_accuracy"
    stability = sweep_raw(tmp_path, kind="stability", space={"imp.rewind_iter": {"choice": ["0it", "30it"]}},
                          search={**optuna, "metric": "instability_test"})
    (found,) = problems(stability, tmp_path)
    assert "select on instability_val" in found
