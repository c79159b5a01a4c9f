"""A sweep whose driver is killed mid-sweep is finished by `lth sweep resume`, repeating no finished level."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from orchestrator.trial import TRAINING_LOG
from tests.mlflow_helpers import assert_level_with_parquet, sweep_runs
from tests.sweep_helpers import BASE, read_log, trial_results, wait_for, write_sweep

pytestmark = pytest.mark.slow


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def lth(*args, env):
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_resume_after_the_driver_is_killed_trains_no_finished_level_twice(tmp_path):
    log = tmp_path / "trainings.jsonl"
    env = {**os.environ, TRAINING_LOG: str(log), "RAY_AUTH_MODE": "disabled"}
    sweep = write_sweep(tmp_path / "sweep.yaml", tmp_path / "store", name="killed",
                        base={**BASE, "train": {**BASE["train"], "length": "300it"}},
                        space={"train.lr": [1.2e-3, 3e-3], "prune.rate": [0.2, 0.5]})
    driver = lth("sweep", "run", str(sweep), "--num-cpus", "2", env=env)
    # Kill the driver once a few levels are done, so some trials are mid-run and some not started.
    wait_for(log, lambda e: sum(x["event"] == "level_done" for x in read_log(log)) >= 4, timeout=600)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    # The driver's Ray instance and its trial processes go down with it, within seconds.
    workers = {e["pid"] for e in read_log(log)}
    deadline = time.time() + 60
    while any(alive(pid) for pid in workers):
        assert time.time() < deadline, "trial processes outlived their driver by a minute"
        time.sleep(0.5)
    before = read_log(log)

    resumed = lth("sweep", "resume", str(tmp_path / "store" / "killed"), "--num-cpus", "2", env=env)
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    assert "4 trials done, 0 failed, 0 unfinished" in output

    after = read_log(log)[len(before):]
    finished = {(e["config_hash"], e["level"]) for e in before if e["event"] == "level_done"}
    retrained = {(e["config_hash"], e["level"]) for e in after if e["event"] == "training"}
    assert finished and not finished & retrained
    trainings = collections.Counter((e["config_hash"], e["level"], e["variant"])
                                    for e in read_log(log) if e["event"] == "training")
    # Only a level that was mid-training when the driver died is trained twice.
    assert all(n == 1 or key[:2] not in finished for key, n in trainings.items())
    results = trial_results(tmp_path / "store" / "killed")
    assert len(results) == 4 and all(sorted(set(t.level)) == [0, 1, 2, 3] for t in results.values())
    table = pq.read_table(tmp_path / "store" / "killed" / "results.parquet").to_pandas()
    assert len(table) == 4 * 7 and table.groupby("trial_id").config_hash.nunique().eq(1).all()

    # The embedded MLflow store (SQLite beside the sweep folders), served by `lth ui`: the resumed
    # trials continued their own runs.
    ui = lth("ui", str(tmp_path / "store" / "killed"), "--port", "0", env=env)
    try:
        link = next(line.strip() for line in ui.stdout if line.strip().startswith("http://127.0.0.1:"))
        url = link.split("/#/")[0]
        assert "runs?workflowType=machine_learning&searchFilter=tags.%60lth.sweep_id%60%20%3D%20" in link  # its runs
        assert_level_with_parquet(url, "killed", tmp_path / "store" / "killed")
        _, children = sweep_runs(url, "killed")
        assert len(children) == 4 and link.split("/experiments/")[1].split("/")[0] == \
            children[table.trial_id.iloc[0]]["info"]["experiment_id"]
    finally:
        ui.terminate()
        ui.wait(30)
