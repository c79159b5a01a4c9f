"""End to end on a local Ray instance: a quickstart-like sweep, shared dense runs, Optuna, retries,
permanent errors."""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
import ray

from orchestrator import sweep_folder, tuner
from orchestrator.cli import main
from tests.sweep_helpers import BASE, COLUMNS, read_log, sweep_spec, trial_results, wait_for
from trainables.config import config_hash, dense_hash
from trainables.imp import ImpRun

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fresh_log(log):
    log.unlink(missing_ok=True)
    return log


@ray.remote(num_cpus=1)
def direct(cfg, out):
    """The same IMP run without Tune, in a worker like a trial's (one CPU, so the same float results)."""
    return ImpRun(cfg, out).run().to_pandas().sort_values(["level", "variant"])[COLUMNS].reset_index(drop=True)


def readme_next_steps(checkout: Path, sweep: Path) -> None:
    """README's commands after `make quickstart`, exactly as written, in a folder laid out like a checkout
    after it: the venv `make` built, and the quickstart's sweep folder."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- quickstart-next")[1].split("```bash\n")[1].split("```")[0]
    activate, *views, ui = [line for line in block.splitlines() if line.strip()]
    (checkout / "runs" / "sweeps").mkdir(parents=True)
    (checkout / ".venv").symlink_to(Path(sys.prefix))
    (checkout / "runs" / "sweeps" / "quickstart").symlink_to(sweep)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "MLFLOW_TRACKING_URI")}
    env["PATH"] = "/usr/bin:/bin"  # no `lth` until the venv is activated
    shown = subprocess.run(["bash", "-c", "\n".join(["set -e", activate, *views])], cwd=checkout, env=env,
                           capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "lr=0.0012" in shown.stdout and "rows from runs/sweeps/quickstart/results.parquet" in shown.stdout
    assert "report.html" in shown.stdout
    server = subprocess.Popen(["bash", "-c", f"{activate}\nexec {ui}"], cwd=checkout, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        lines = iter(server.stdout.readline, "")
        link = next(line for line in lines if line.strip().startswith("http")).strip()
        assert "/#/experiments/" in link and urllib.request.urlopen(link.split("/#")[0], timeout=10).status == 200
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


def test_grid_sweep_shares_dense_runs_and_matches_direct_runs(tmp_path, fresh_log, capsys):
    spec = sweep_spec(tmp_path / "store")  # 2 lrs x 2 rewind points x 2 rates
    grid = spec.grid()
    results = tuner.run(spec)
    assert len(results) == 8 and results.num_terminated == 8 and results.num_errors == 0
    assert {r.metrics["level"] for r in results} == {3}

    entries = [e for e in read_log(fresh_log) if e["event"] == "training"]
    dense = [e for e in entries if e["variant"] == "dense"]
    assert len(dense) == 2 and len({e["dense_hash"] for e in dense}) == 2  # one per lr, not one per trial
    per_trial = collections.Counter(e["trial"] for e in entries if e["variant"] != "dense")
    assert sorted(per_trial.values()) == [6] * 8  # 3 levels x (ticket + reinit), nothing repeated

    # Storage stays bounded: one checkpoint per trial (the others pruned to a marker), every mask, only the
    # latest trained weights, no rewind states (those live once per dense run).
    for trial in (tmp_path / "store" / "tiny").glob("trial_*"):
        (checkpoint,) = [c for c in trial.glob("checkpoint_*") if [f.name for f in c.iterdir()] != ["pruned"]]
        files = {str(f.relative_to(checkpoint)) for f in checkpoint.rglob("*") if f.is_file()}
        assert {f for f in files if f.endswith(".pt")} == {
            *(f"checkpoints/level_{lvl:03d}/mask.pt" for lvl in range(4)), "checkpoints/level_003/weights.pt"}
    assert sorted(p.name for p in (tmp_path / "store" / "dense").iterdir()) == sorted({e["dense_hash"] for e in dense})
    stored = trial_results(tmp_path / "store" / "tiny")
    configs = [spec.trial_config(t) for t in grid]
    assert set(stored) == {config_hash(c) for c in configs}
    # Trials built on a shared dense run compute exactly what a run with its own dense run does.
    for cfg in configs[:2]:
        expected = ray.get(direct.remote(cfg, tmp_path / "direct" / config_hash(cfg)))
        assert stored[config_hash(cfg)].equals(expected)
    # `lth report` on this quickstart-shaped sweep: every IMP figure and table, a one-line note for each
    # stability figure it has no data for, the files logged to the sweep's MLflow run.
    assert main(["report", str(tmp_path / "store" / "tiny")]) == 0
    out = capsys.readouterr().out
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("skipped")] == [
        "skipped instability vs. rewind iteration", "skipped error along the interpolation path"]
    written = {p.name for p in (tmp_path / "store" / "tiny" / "report").iterdir()}
    assert written == {"accuracy_vs_weights_remaining.png", "early_stop_vs_weights_remaining.png", "matching.csv",
                       "start_accuracy_vs_weights_remaining.png", "summary.csv", "report.html"}
    matching = (tmp_path / "store" / "tiny" / "report" / "matching.csv").read_text().splitlines()
    assert len(matching) == 1 + 8  # a row per setting: 2 lrs x 2 rewind points x 2 rates
    assert "logged under report/ in the sweep's run" in out
    readme_next_steps(tmp_path / "checkout", tmp_path / "store" / "tiny")
    # A second sweep on the same storage reuses the dense runs, and a new rewind point is recreated.
    again = sweep_spec(tmp_path / "store", name="again", space={"train.lr": [1.2e-3], "imp.rewind_iter": ["60it"]})
    fresh_log.unlink()
    assert tuner.run(again).num_terminated == 1
    assert not [e for e in read_log(fresh_log) if e.get("variant") == "dense"]


def test_optuna_search_reports_its_objective(tmp_path, fresh_log):
    spec = sweep_spec(tmp_path / "store", name="optuna",
                      space={"train.lr": {"loguniform": [1e-4, 1e-2]}, "prune.rate": [0.2, 0.5]},
                      search={"algorithm": "optuna", "num_samples": 3, "metric": "ticket_val_accuracy",
                              "at_weights_remaining": 0.5})
    results = tuner.run(spec)
    assert results.num_terminated == 3
    for r in results:
        lrs = r.config["train.lr"]
        assert 1e-4 <= lrs <= 1e-2 and r.config["prune.rate"] in (0.2, 0.5)
        assert 0 <= r.metrics["objective"] <= 1
    best = results.get_best_result(metric="objective", mode="max")
    assert best.metrics["objective"] == max(r.metrics["objective"] for r in results)


def test_a_trial_whose_process_dies_is_retried_from_its_last_level(tmp_path, fresh_log):
    spec = sweep_spec(tmp_path / "store", name="retry", space={"prune.rate": [0.5]}, max_failures=1,
                      base={**BASE, "train": {**BASE["train"], "length": "600it"}})
    sweep = threading.Thread(target=lambda: outcome.append(tuner.run(spec)))
    outcome: list = []
    sweep.start()
    killed = wait_for(fresh_log, lambda e: e["event"] == "level_done" and e["level"] == 1)
    os.kill(killed["pid"], signal.SIGKILL)  # the trial's worker process dies, as on a lost node
    sweep.join(timeout=300)
    assert outcome and outcome[0].num_terminated == 1

    entries = read_log(fresh_log)
    kill_time = killed["time"]
    finished_before = {e["level"] for e in entries if e["event"] == "level_done" and e["time"] <= kill_time}
    trained_after = {e["level"] for e in entries if e["event"] == "training" and e["time"] > kill_time}
    assert finished_before == {0, 1} and trained_after and not finished_before & trained_after
    assert {e["pid"] for e in entries if e["time"] > kill_time} != {killed["pid"]}  # a new process took over
    cfg = spec.trial_config(spec.grid()[0])
    expected = ray.get(direct.remote(cfg, tmp_path / "direct"))
    assert trial_results(tmp_path / "store" / "retry")[config_hash(cfg)].equals(expected)


def test_an_error_no_retry_can_fix_fails_its_trial_at_once_and_resume_runs_it_after_the_fix(tmp_path, fresh_log,
                                                                                           capsys):
    spec = sweep_spec(tmp_path / "store", name="broken", space={"prune.rate": [0.5]}, max_failures=2)
    cfg = spec.trial_config(spec.grid()[0])
    dense = tmp_path / "store" / "dense" / dense_hash(cfg)
    dense.mkdir(parents=True)
    (dense / "config.yaml").write_text("model: [")  # a shared dense run that cannot be read: permanent
    results = tuner.run(spec)
    out = capsys.readouterr().out
    assert results.num_errors == 1 and "permanent_error" in results[0].metrics
    lines = [line for line in out.splitlines() if "FAILED" in line]
    assert len(lines) == 1 and "not retried" in lines[0] and "ConfigError" in lines[0] and "Traceback" not in out
    (error_file,) = (tmp_path / "store" / "broken").glob("trial_*/error.txt")
    text = error_file.read_text()
    assert text.count("Failure #") == 1 and "Traceback" in text  # one attempt; the traceback stays in the file
    assert not read_log(fresh_log)  # nothing was trained
    shutil.rmtree(dense)  # the fix
    resumed = tuner.run(sweep_folder.load_spec(str(tmp_path / "store" / "broken")), resume=True)
    assert resumed.num_terminated == 1 and resumed.num_errors == 0
    assert {e["level"] for e in read_log(fresh_log) if e["event"] == "level_done"} == {0, 1, 2, 3}
