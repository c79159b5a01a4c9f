"""What the terminal shows of a large sweep: summary lines, not one line per commit."""

from __future__ import annotations

from types import SimpleNamespace

from orchestrator import progress as progress_module
from orchestrator.progress import Progress
from orchestrator.spec import parse_sweep

RESULT = {"level": 2, "weights_remaining": 0.64, "ticket_test_accuracy": 0.9712}


def spec(trials: int):
    return parse_sweep({"name": "big", "base": {"preset": "quickstart"}, "space": {"seed": list(range(trials))}}, "t")


def test_beyond_the_threshold_a_summary_line_replaces_the_lines_per_commit(capsys, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(progress_module.time, "time", lambda: clock[0])
    progress = Progress(spec(progress_module.SUMMARY_ABOVE + 1))
    trials = [SimpleNamespace(trial_id=f"a_{i:05d}", config={"seed": i}, status="RUNNING") for i in range(3)]
    for trial in trials:
        progress.on_trial_result(0, trials, trial, RESULT)
        progress.on_trial_complete(0, trials, trial)
    progress.on_trial_result(0, trials, trials[0], {**RESULT, "mlflow_failures": 1})
    progress.on_step_end(0, trials)
    trials[0].status = "TERMINATED"
    clock[0] += 10
    progress.on_step_end(0, trials)  # counts changed, but a summary waits its 30 s
    clock[0] += 30
    progress.on_step_end(0, trials)
    lines = capsys.readouterr().out.splitlines()
    assert not any("level 2" in line or ": done" in line for line in lines)
    assert sum("results are safe in Parquet" in line for line in lines) == 1  # a trial's first failure has a line
    assert lines[-1].endswith("trials: 2 running, 0 pending, 1 done; 4 levels committed (0.0/s); MLflow logging "
                              "failed in 1 trials, retrying (Parquet has all)")
    assert len(lines) == 3 and "trials: 3 running" in lines[1]  # the failure, the first summary, one 30 s later


def test_small_sweeps_keep_a_line_per_commit(capsys):
    progress = Progress(spec(3))
    trial = SimpleNamespace(trial_id="a_00001", config={"seed": 1}, status="RUNNING")
    progress.on_trial_result(0, [trial], trial, RESULT)
    progress.on_step_end(0, [trial])
    assert capsys.readouterr().out.splitlines()[0].endswith("trial 2 (seed=1): level 2, 64.0% remaining, ticket 97.12%")
