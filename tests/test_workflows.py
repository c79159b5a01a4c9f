"""The fast tier where the risk is: what trials report to Tune and MLflow, batching against a fake MLflow
client, and which masks a stability sweep may reuse. No Ray, no training."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from types import SimpleNamespace

import pyarrow.fs as pafs
import pytest
import torch
import yaml
from mlflow.entities import Metric  # noqa: F401 - imported here so no test pays MLflow's import

from orchestrator import sweep_folder, trial_folder
from orchestrator.spec import Search
from orchestrator.tracking.client import Target, log_batch
from orchestrator.tracking.sync import RunState, TrialRecord, sync_trial
from orchestrator.workflows import KINDS, workflow
from orchestrator.workflows.stability import find_mask
from trainables.catalog import load_config
from trainables.config import mask_key, to_dict
from trainables.layout import MANIFEST, RESULTS, STABILITY_SUMMARY, RunLayout, write_manifest
from trainables.masks import Mask
from trainables.results import LEVELS_SCHEMA, table_of, write_atomic

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def level_rows(accuracies: dict[int, dict[str, float]]) -> list[dict]:
    """IMP rows: level -> variant -> test accuracy; 20% pruned per level."""
    return [{"level": level, "variant": variant, "weights_remaining": 0.8 ** level, "test_accuracy": acc,
             "test_loss": 1 - acc, "val_accuracy": acc, "val_loss": 2 - acc, "early_stop_iter": 100 * level, "early_stop_accuracy": acc,
             "early_stop_val_loss": 2 - acc, "train_seconds": 1.0, "finished_at": NOW}
            for level, variants in accuracies.items() for variant, acc in variants.items()]


ROWS = level_rows({0: {"dense": 0.90}, 1: {"ticket": 0.92, "reinit": 0.89}, 2: {"ticket": 0.91, "reinit": 0.85},
                   3: {"ticket": 0.88, "reinit": 0.80}})


def test_imp_trial_metrics_and_the_optuna_objective_at_a_sparsity():
    imp = workflow("imp")
    grid = imp.trial_metrics({RESULTS: ROWS}, None, Search())
    assert grid["level"] == 3 and grid["ticket_test_accuracy"] == 0.88 and grid["reinit_test_accuracy"] == 0.80
    assert grid["dense_test_accuracy"] == 0.90 and grid["weights_remaining"] == pytest.approx(0.512)
    assert grid["ticket_val_accuracy"] == 0.88 and grid["dense_val_accuracy"] == 0.90
    assert "objective" not in grid
    last = imp.trial_metrics({RESULTS: ROWS}, None, Search(algorithm="optuna", metric="ticket_val_accuracy"))
    assert last["objective"] == 0.88  # the last level
    near = imp.trial_metrics({RESULTS: ROWS}, None, Search(algorithm="optuna", metric="ticket_val_accuracy",
                                                          at_weights_remaining=0.65))
    assert near["objective"] == 0.91 and near["level"] == 3  # level 2 (64%) is nearest 65%; still reports level 3
    at_dense = imp.trial_metrics({RESULTS: ROWS[:1]}, None, Search(algorithm="optuna", metric="ticket_val_accuracy"))
    assert at_dense["objective"] == 0.90  # the dense network is level 0's ticket
    assert set(grid) - {"level"} <= set(imp.metrics())  # every name a trial reports can be the objective
    assert imp.progress_line(grid) == "level 3, 51.2% remaining, ticket 88.00%, reinit 80.00%"


def summary_rows(instabilities: list[float], split: str = "test") -> list[dict]:
    return [{"replicate": r, "split": split, "weights_remaining": 1.0, "error_1": 0.1, "error_2": 0.2 + r / 10,
             "instability": value, "stable": value < 0.02, "finished_at": NOW} for r, value in enumerate(instabilities)]


def test_stability_trial_metrics_first_the_imp_levels_then_the_pairs():
    stability = workflow("stability")
    cfg = load_config(preset="quickstart", overrides={"stability.level": 2})
    finding = stability.trial_metrics({STABILITY_SUMMARY: [], "imp/results.parquet": ROWS[:3]}, cfg, Search())
    assert finding["level"] == 1 and finding["replicates"] == 0 and "instability_test" not in finding
    done = stability.trial_metrics({STABILITY_SUMMARY: summary_rows([0.01, 0.05]), "imp/results.parquet": ROWS},
                                   cfg, Search(algorithm="optuna", metric="instability_test"))
    assert done["level"] == 2 and done["replicates"] == 2
    assert done["instability_test"] == pytest.approx(0.03) and done["objective"] == pytest.approx(0.03)
    assert done["endpoint_error_test"] == pytest.approx((0.15 + 0.2) / 2)  # the mean of both copies, both pairs
    assert done["stable_test"] is False  # the mean pair is above 2%
    assert {"instability_test", "endpoint_error_test", "stable_test"} <= set(stability.metrics())
    assert "2 pair(s) of copies, test instability 3.00%" in stability.progress_line(done)


def test_mlflow_metrics_name_each_variant_and_log_dense_as_level_0s_ticket():
    metrics = workflow("imp").mlflow_metrics({RESULTS: ROWS})
    stamp = int(NOW.timestamp() * 1000)
    assert metrics[("dense/test_accuracy", 0)] == metrics[("ticket/test_accuracy", 0)] == (0.90, stamp)
    assert metrics[("reinit/test_accuracy", 2)] == (0.85, stamp)
    assert metrics[("weights_remaining", 3)] == (pytest.approx(0.512), stamp)
    assert ("reinit/test_accuracy", 0) not in metrics
    pairs = workflow("stability").mlflow_metrics({STABILITY_SUMMARY: summary_rows([0.01, 0.05])})
    assert pairs[("test/instability", 1)][0] == 0.05 and pairs[("test/stable", 0)][0] == 1.0
    assert pairs[("test/endpoint_error", 1)][0] == pytest.approx(0.2)


class FakeClient:
    """The slice of MlflowClient that tracking uses, in memory, counting requests."""

    def __init__(self):
        self.runs: dict[str, dict] = {}
        self.batches: list[tuple[int, int, int]] = []  # (metrics, params, tags) per log_batch request
        self.fail = False

    def search_runs(self, experiments, filter_string="", max_results=1000, page_token=None):
        wanted = dict(part.split(" = ") for part in filter_string.replace("tags.`", "").replace("`", "")
                      .replace("'", "").split(" and "))
        return [SimpleNamespace(info=SimpleNamespace(run_id=run_id)) for run_id, run in self.runs.items()
                if all(run["tags"].get(k) == v for k, v in wanted.items())]

    def create_run(self, experiment, run_name=None, tags=None):
        run_id = f"run{len(self.runs)}"
        self.runs[run_id] = {"tags": dict(tags), "metrics": {}, "params": {}, "status": "RUNNING"}
        return SimpleNamespace(info=SimpleNamespace(run_id=run_id))

    def get_run(self, run_id):
        run = self.runs[run_id]
        return SimpleNamespace(data=SimpleNamespace(params=run["params"], metrics=run["metrics"]),
                               info=SimpleNamespace(status=run["status"]))

    def get_metric_history(self, run_id, key):
        return [SimpleNamespace(step=step) for (k, step) in self.runs[run_id]["metrics"] if k == key]

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        if self.fail:
            raise ConnectionError("server down")
        self.batches.append((len(metrics), len(params), len(tags)))
        run = self.runs[run_id]
        run["metrics"].update({(m.key, m.step): m.value for m in metrics})
        run["params"].update({p.key: p.value for p in params})
        run["tags"].update({t.key: t.value for t in tags})

    def update_run(self, run_id, status):
        self.runs[run_id]["status"] = status

    def set_terminated(self, run_id, status):
        self.runs[run_id]["status"] = status

    def log_artifacts(self, run_id, folder):
        pass


def test_batches_fit_mlflows_limits_with_the_progress_tag_last():
    from mlflow.entities import Metric as M

    fake = FakeClient()
    fake.create_run("0", tags={})
    log_batch(fake, "run0", [M(f"m{i}", 1.0, 0, 0) for i in range(1801)], {f"p{i}": "x" for i in range(95)},
              {"lth.progress": "7"})
    assert fake.batches == [(900, 90, 0), (900, 5, 0), (1, 0, 1)]


def test_sync_creates_one_run_logs_only_what_it_lacks_and_asks_again_after_an_error():
    fake = FakeClient()
    target = Target("fake://", "0", "parent", "study", "abc")
    cfg = load_config(preset="quickstart")
    record = TrialRecord("t1", cfg, {"train.lr": 0.01}, workflow("imp"), {RESULTS: ROWS[:3]})
    state = RunState()
    sync_trial(fake, target, record, state)
    assert len(fake.runs) == 1 and fake.batches[-1][0] == len(workflow("imp").mlflow_metrics(record.tables))
    record.tables = {RESULTS: ROWS}
    sync_trial(fake, target, record, state)
    assert fake.batches[-1][0] == len(workflow("imp").mlflow_metrics({RESULTS: ROWS[3:]}))  # levels 2 and 3 only
    fake.fail = True
    with pytest.raises(ConnectionError):
        sync_trial(fake, target, record, state)
    assert state.logged is None and state.run_id == "run0"  # forgets what it knew, keeps the run
    fake.fail = False
    sync_trial(fake, target, record, RunState())  # another process: finds the run, has nothing to add
    assert len(fake.runs) == 1 and fake.batches[-1][:2] == (0, 0)


def _stored_trial(folder, trial_id: str, cfg, levels: int, manifest: bool = True) -> Mask:
    checkpoint = folder / f"trial_{trial_id}" / "checkpoint_000001"
    layout = RunLayout(checkpoint)
    layout.config.parent.mkdir(parents=True)
    (folder / f"trial_{trial_id}" / "params.json").write_text(json.dumps({}))
    layout.config.write_text(yaml.safe_dump(to_dict(cfg)))
    mask = Mask({"fc1": torch.rand(4, 3, generator=torch.Generator().manual_seed(len(trial_id))) > 0.5})
    for level in range(levels + 1):
        layout.mask(level).parent.mkdir(parents=True)
        torch.save(mask.state(), layout.mask(level))
    write_atomic(table_of(level_rows({0: {"dense": 0.9}}), LEVELS_SCHEMA), layout.results)  # one commit
    if manifest:
        write_manifest(checkpoint)
    return mask


def test_a_mask_made_under_another_config_or_not_yet_made_is_never_reused(tmp_path):
    cfg = load_config(preset="quickstart", overrides={"imp.rewind_iter": "100it", "stability.level": 2})
    assert find_mask(str(tmp_path), cfg, 2) is None  # no trials at all
    sweep_folder.write_record(str(tmp_path), {"manifests": True})
    _stored_trial(tmp_path, "other_rate", cfg.with_updates({"prune.rate": 0.3}), 3)
    _stored_trial(tmp_path, "other_k", cfg.with_updates({"imp.rewind_iter": "0it"}), 3)
    _stored_trial(tmp_path, "too_early", cfg, 1)  # the right config, but level 2 is not reached yet
    _stored_trial(tmp_path, "no_manifest", cfg, 3, manifest=False)  # a half-uploaded checkpoint
    assert find_mask(str(tmp_path), cfg, 2) is None
    mask = _stored_trial(tmp_path, "same", cfg.with_updates({"imp.levels": 9, "imp.controls": ["reinit"]}), 3)
    found = find_mask(str(tmp_path), cfg, 2)  # levels and controls never change a mask
    assert found[0] == "same" and found[1].equal(mask)
    for key in mask_key(cfg)["imp"]:  # every other imp key decides the mask
        assert key not in ("levels", "controls", "keep_weights")
    assert (tmp_path / "trial_same" / "checkpoint_000001" / MANIFEST).exists()


def test_a_trial_keeps_its_most_advanced_complete_checkpoints_and_marks_the_rest(tmp_path):
    trial = tmp_path / "trial_a"
    for index, commits, manifest in [(1, 1, True), (2, 2, True), (3, 3, False), (4, 1, True)]:
        checkpoint = trial / f"checkpoint_{index:06d}"
        (checkpoint / "masks").mkdir(parents=True)
        write_atomic(table_of(level_rows({level: {"dense": 0.9} for level in range(commits)}), LEVELS_SCHEMA),
                     checkpoint / RESULTS)
        if manifest:
            write_manifest(checkpoint)
    local = pafs.LocalFileSystem()

    def holding() -> list[str]:
        return sorted(p.name for p in trial.iterdir() if [f.name for f in p.iterdir()] != [trial_folder.PRUNED])

    assert trial_folder.latest_checkpoint(local, str(trial), [RESULTS]) == (str(trial / "checkpoint_000002"), 2)
    trial_folder.prune(local, str(trial), [RESULTS], keep=3)  # ordered by progress, not by name
    assert holding() == ["checkpoint_000001", "checkpoint_000002", "checkpoint_000004"]
    trial_folder.prune(local, str(trial), [RESULTS], keep=1)  # the half-uploaded one went first
    assert holding() == ["checkpoint_000002"]
    # Pruned folders stay, a marker in each: Tune refuses to restore from a checkpoint path that is gone.
    assert len(list(trial.iterdir())) == 4
    assert trial_folder.latest_checkpoint(local, str(trial), [RESULTS]) == (str(trial / "checkpoint_000002"), 2)
    (trial / "checkpoint_000002" / MANIFEST).unlink()  # a sweep from before manifests takes any unpruned one
    assert trial_folder.latest_checkpoint(local, str(trial), [RESULTS], manifests=False)[0] == \
        str(trial / "checkpoint_000002")


def test_every_kind_declares_what_the_orchestrator_asks():
    for entry in KINDS:
        flow = entry.load()
        assert flow.name == entry.name and entry.description and flow.unit == entry.metadata["unit"]
        assert set(flow.sweep_tables) <= set(flow.run_tables) and set(flow.commit_tables) <= set(flow.run_tables)
        assert flow.metrics() and len(set(flow.metrics())) == len(flow.metrics())
