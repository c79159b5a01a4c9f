"""MLflow end to end: a real `mlflow server`, sweeps on a local Ray, runs read back over REST."""

from __future__ import annotations

import os
import signal
import threading

import pyarrow.parquet as pq
import pytest
import ray
import yaml

from orchestrator import report, tuner
from orchestrator.cli import main
from orchestrator.spec import parse_sweep
from tests.mlflow_helpers import Server, assert_level_with_parquet, history, rest, sweep_runs, tags
from tests.sweep_helpers import BASE, read_log, sweep_spec, wait_for
from trainables.stability import StabilityRun

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("mlflow") / "mlflow.db").start()
    yield server
    if server.process.poll() is None:
        server.stop()


def test_a_sweep_logs_a_parent_and_one_child_per_trial_equal_to_parquet(tmp_path, log, server):
    spec = sweep_spec(tmp_path / "store", name="tracked", space={"train.lr": [1.2e-3, 3e-3]})
    results = tuner.run(spec, tracking_uri=server.url)
    assert results.num_terminated == 2

    children = assert_level_with_parquet(server.url, "tracked", tmp_path / "store" / "tracked")
    assert len(children) == 2
    table = pq.read_table(tmp_path / "store" / "tracked" / "results.parquet").to_pandas()
    assert sorted(table.groupby("trial_id")["level"].max()) == [3, 3]
    for trial_id, run in children.items():
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        rows = table[table.trial_id == trial_id]
        assert float(params["train.lr"]) == rows.lr.iloc[0] and params["imp.levels"] == "3"
        assert tags(run)["lth.config_hash"] == rows.config_hash.iloc[0] and tags(run)["lth.sweep"] == "tracked"
        files = {f["path"] for f in rest(server.url, "artifacts/list", run_id=run["info"]["run_id"])["files"]}
        assert files == {"results.csv", "sparsity.csv", "final_mask.npz", "accuracy_vs_weights_remaining.png"}
    parent, _ = sweep_runs(server.url, "tracked")
    files = {f["path"] for f in rest(server.url, "artifacts/list", run_id=parent["info"]["run_id"])["files"]}
    assert files == {"sweep.yaml", "results.parquet"}


def test_the_sweep_outlives_a_stopped_server_and_sync_catches_up_idempotently(tmp_path, log, server, capsys):
    spec = sweep_spec(tmp_path / "store", name="outage", space={"train.lr": [1.2e-3, 3e-3]},
                      base={**BASE, "imp": {**BASE["imp"], "levels": 4},
                            "train": {**BASE["train"], "length": "300it"}})
    log.unlink(missing_ok=True)
    outcome: list = []
    sweep = threading.Thread(target=lambda: outcome.append(tuner.run(spec, tracking_uri=server.url)))
    sweep.start()
    wait_for(log, lambda e: e["event"] == "level_done" and e["level"] == 1)
    server.stop()
    sweep.join(timeout=600)
    assert outcome and outcome[0].num_terminated == 2  # trials kept training without MLflow
    assert "lth mlflow sync" in capsys.readouterr().out
    sweep_dir = tmp_path / "store" / "outage"
    table = pq.read_table(sweep_dir / "results.parquet").to_pandas()
    assert sorted(table.groupby("trial_id")["level"].apply(lambda s: sorted(set(s)))) == [[0, 1, 2, 3, 4]] * 2
    assert len(table) == 2 * (1 + 4 * 2)
    finished = sum(e["event"] == "level_done" for e in read_log(log))
    assert finished == 10

    server.start()
    _, children = sweep_runs(server.url, "outage")
    assert any(r["info"]["status"] == "RUNNING" for r in children.values())  # behind: what the outage cost
    assert main(["mlflow", "sync", str(sweep_dir)]) == 0
    assert "2 of 2 trial runs updated" in capsys.readouterr().out
    before = assert_level_with_parquet(server.url, "outage", sweep_dir)
    assert main(["mlflow", "sync", str(sweep_dir)]) == 0  # a second sync changes nothing
    assert "0 of 2 trial runs updated" in capsys.readouterr().out
    after = assert_level_with_parquet(server.url, "outage", sweep_dir)
    assert {t: r["info"]["run_id"] for t, r in before.items()} == {t: r["info"]["run_id"] for t, r in after.items()}


def test_a_retried_trial_continues_its_own_run(tmp_path, log, server):
    spec = sweep_spec(tmp_path / "store", name="retried", space={"prune.rate": [0.5]}, max_failures=1,
                      base={**BASE, "train": {**BASE["train"], "length": "600it"}})
    log.unlink(missing_ok=True)
    outcome: list = []
    sweep = threading.Thread(target=lambda: outcome.append(tuner.run(spec, tracking_uri=server.url)))
    sweep.start()
    killed = wait_for(log, lambda e: e["event"] == "level_done" and e["level"] == 1)
    os.kill(killed["pid"], signal.SIGKILL)
    sweep.join(timeout=300)
    assert outcome and outcome[0].num_terminated == 1
    assert len({e["pid"] for e in read_log(log)}) > 1  # another process finished the trial

    children = assert_level_with_parquet(server.url, "retried", tmp_path / "store" / "retried")
    (run,) = children.values()
    assert [s for s, _ in history(server.url, run["info"]["run_id"], "ticket/test_accuracy")] == [0, 1, 2, 3]


@ray.remote(num_cpus=1)
def direct_analysis(cfg, out):
    """The same analysis without Tune, in a worker like a trial's (one CPU: the same floats)."""
    return StabilityRun(cfg, out).run().to_pandas().sort_values(["split"])[["split", "instability"]].values.tolist()


def test_a_stability_sweep_on_mnist5k_lands_in_parquet_and_mlflow(tmp_path, log, server):
    """LeNet on real digits, k = 0 and 100, dense and IMP level 1, through Ray Tune."""
    spec = parse_sweep(raw := {
        "name": "lmc", "kind": "stability", "storage": str(tmp_path / "store"),
        "base": {"preset": "quickstart", "train": {"length": "300it"}, "runtime": {"device": "cpu"},
                 "stability": {"replicates": 1, "alpha_points": 6}},
        "space": {"imp.rewind_iter": ["0it", "100it"], "stability.level": [0, 1]}}, "test", yaml.safe_dump(raw))
    log.unlink(missing_ok=True)
    results = tuner.run(spec, tracking_uri=server.url)
    assert results.num_terminated == 4 and results.num_errors == 0
    assert sum(e.get("variant") == "dense" for e in read_log(log)) == 1  # k and level never change the dense run

    folder = tmp_path / "store" / "lmc"
    summary = pq.read_table(folder / "stability_summary.parquet").to_pandas()
    path = pq.read_table(folder / "stability.parquet").to_pandas()
    assert len(summary) == 4 * 2 and len(path) == 4 * 6 * 2 and summary.trial_id.nunique() == 4
    assert set(zip(summary.level, summary.rewind_iter)) == {(0, 0), (0, 100), (1, 0), (1, 100)}
    assert (summary[summary.level == 0].weights_remaining == 1).all()
    assert (summary[summary.level == 1].weights_remaining < 0.6).all()  # quickstart prunes 50% per level
    assert (summary[["error_1", "error_2"]] < 0.3).all().all() and (summary.instability >= 0).all()
    # A trial computes what the analysis computes on its own.
    one = summary[(summary.level == 1) & (summary.rewind_iter == 100)].sort_values("split")
    cfg = spec.trial_config({"imp.rewind_iter": "100it", "stability.level": 1})
    assert ray.get(direct_analysis.remote(cfg, tmp_path / "direct")) == one[["split", "instability"]].values.tolist()

    parent, children = sweep_runs(server.url, "lmc")
    assert parent["info"]["status"] == "FINISHED" and len(children) == 4
    files = {f["path"] for f in rest(server.url, "artifacts/list", run_id=parent["info"]["run_id"])["files"]}
    assert {"stability.parquet", "stability_summary.parquet", "sweep.yaml"} <= files
    for trial_id, run in children.items():
        run_id = run["info"]["run_id"]
        assert run["info"]["status"] == "FINISHED" and tags(run)["lth.kind"] == "trial"
        for split in ("train", "test"):
            row = summary[(summary.trial_id == trial_id) & (summary.split == split)].iloc[0]
            assert history(server.url, run_id, f"{split}/instability") == [(0, row.instability)]
            along = path[(path.trial_id == trial_id) & (path.split == split)].sort_values("alpha_index")
            assert history(server.url, run_id, f"path/{split}_error_r0") == list(zip(along.alpha_index, along.error))
        files = {f["path"] for f in rest(server.url, "artifacts/list", run_id=run_id)["files"]}
        assert {"error_vs_alpha.png", "stability.csv", "stability_summary.csv"} <= files

    # Its report: instability against k per sparsity and the error along the path, IMP figures skipped.
    built = report.build(report.load([str(folder)])[0], report.Options(), "lmc")
    assert [f.name for f in built.figures] == ["instability_vs_rewind_iteration", "error_along_path"]
    assert len(built.notes) == 1 and built.notes[0].startswith("skipped accuracy and early-stop")
    instability = built.figures[0]
    assert instability.xscale == "symlog" and [p.title for p in instability.panels] == ["test error", "train error"]
    lines = {s.label: s for s in instability.panels[0].series}
    level_1 = next(label for label in lines if label.startswith("level 1 ("))
    assert lines[level_1].x == (0, 100)
    expected = summary[(summary.level == 1) & (summary.split == "test")].sort_values("rewind_iter").instability
    assert lines[level_1].y == pytest.approx(list(expected * 100))


def test_a_stability_sweep_analyses_the_masks_of_a_finished_imp_sweep(tmp_path, log, server):
    """`masks_from`: the IMP sweep's level-1 mask is analysed as is (no IMP level retrained), with the
    same result as computing it on the fly."""
    store = tmp_path / "store"
    imp = sweep_spec(store, name="imp", space={"imp.rewind_iter": ["30it"]})  # 3 levels, reinit control
    assert tuner.run(imp, tracking_uri=server.url).num_terminated == 1
    stability = {"kind": "stability", "space": {"imp.rewind_iter": ["30it"], "stability.level": [1]},
                 "base": {**BASE, "stability": {"replicates": 1, "alpha_points": 4}}}
    log.unlink(missing_ok=True)
    reused = sweep_spec(store, name="reused", masks_from=str(store / "imp"), **stability)
    assert tuner.run(reused, tracking_uri=server.url).num_terminated == 1
    entries = read_log(log)
    assert [e["variant"] for e in entries if e["event"] == "training"] == ["twins"]  # no dense, no IMP level
    (mask_entry,) = [e for e in entries if e["event"] == "mask"]
    assert mask_entry["source"].startswith(str(store / "imp" / "trial_"))
    computed = sweep_spec(store, name="computed", **stability)
    assert tuner.run(computed, tracking_uri=server.url).num_terminated == 1

    def instability(name):
        table = pq.read_table(store / name / "stability_summary.parquet").to_pandas().sort_values("split")
        return table[["split", "weights_remaining", "instability", "error_1", "error_2"]].values.tolist()

    assert instability("reused") == instability("computed")
    _, children = sweep_runs(server.url, "reused")
    (run,) = children.values()
    assert tags(run)["lth.mask_source"] == mask_entry["source"]
    files = {f["path"] for f in rest(server.url, "artifacts/list", run_id=run["info"]["run_id"])["files"]}
    assert {"sparsity.csv", "final_mask.npz", "error_vs_alpha.png"} <= files


def test_a_sweep_folder_from_before_the_datasets_reads_resumes_reports_and_syncs(tmp_path, log, server, capsys):
    import shutil

    from orchestrator import sweep_folder

    spec = sweep_spec(tmp_path / "store", name="single", space={"prune.rate": [0.2, 0.5]})
    assert tuner.run(spec, tracking_uri=server.url).num_terminated == 2
    folder = tmp_path / "store" / "single"
    table = pq.read_table(folder / "results.parquet").replace_schema_metadata(None)
    shutil.rmtree(folder / "results")
    pq.write_table(table, folder / "results.parquet")  # the folder as drivers left it before the datasets
    assert main(["results", str(folder)]) == 0 and f"{table.num_rows} rows from" in capsys.readouterr().out
    assert tuner.run(sweep_folder.load_spec(str(folder)), resume=True).num_terminated == 2
    assert len(sweep_folder.dataset_files(str(folder), "results.parquet")) == 2  # the resumed driver's start
    assert sweep_folder.read_table(str(folder), "results.parquet").equals(table)
    assert main(["mlflow", "sync", str(folder)]) == 0 and "0 of 2 trial runs updated" in capsys.readouterr().out
    assert_level_with_parquet(server.url, "single", folder)
    assert main(["report", str(folder), "--no-mlflow"]) == 0 and (folder / "report" / "report.html").exists()
