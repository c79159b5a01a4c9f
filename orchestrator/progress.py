"""What the terminal shows while a sweep runs: a line per commit (the workflow's progress line), a line per
finished, retried or failed trial, and the trial counts when they change."""

from __future__ import annotations

import functools
import time
from pathlib import Path

from ray.tune import Callback

from orchestrator.spec import SweepSpec
from orchestrator.trial import PERMANENT_ERROR


def _display_only(method):
    """Tune stops a sweep when a callback raises; a display problem must not cost a sweep."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - anything, reported and then ignored
            print(f"(progress display failed: {type(exc).__name__}: {exc})", flush=True)

    return wrapper


def last_error(trial) -> str:
    """The last line of a trial's error file (`ExceptionType: message`), or '' if it has none."""
    path = Path(trial.local_path or "") / "error.txt"
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return lines[-1][:300] if lines else ""


class Progress(Callback):
    """Live progress: a line per commit and per trial that stops, and trial counts when they change."""

    def __init__(self, spec: SweepSpec, every: float = 30.0):
        self.spec, self.every = spec, every
        self.labels: dict[str, str] = {}
        self.mlflow_failures: dict[str, int] = {}
        self.permanent: set[str] = set()
        self.last_counts: tuple | None = None
        self.last_time = 0.0

    def _print(self, text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)

    def _label(self, trial) -> str:
        """'trial N (swept values)', N as in `--dry-run` for grid sweeps (Tune numbers their trials in order)."""
        if trial.trial_id not in self.labels:
            swept = self.spec.overrides(trial.config)
            values = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in swept.items()) or "base"
            suffix = trial.trial_id.rsplit("_", 1)[-1]  # grid trials end in _NNNNN; searchers' ids are random
            number = int(suffix) + 1 if suffix.isdigit() else len(self.labels) + 1
            self.labels[trial.trial_id] = f"trial {number} ({values})"
        return self.labels[trial.trial_id]

    @_display_only
    def on_trial_result(self, iteration, trials, trial, result, **info):
        if PERMANENT_ERROR in result:
            self.permanent.add(trial.trial_id)
            self._print(f"{self._label(trial)}: FAILED, not retried (a retry cannot fix it): {result[PERMANENT_ERROR]}"
                        f" (traceback: {trial.path}/error.txt)")
            return
        self._print(f"{self._label(trial)}: {self.spec.workflow.progress_line(result)}")
        if result.get("mlflow_failures", 0) > self.mlflow_failures.get(trial.trial_id, 0):
            self.mlflow_failures[trial.trial_id] = result["mlflow_failures"]
            self._print(f"{self._label(trial)}: MLflow logging failed {result['mlflow_failures']} time(s), retrying; "
                        "results are safe in Parquet")

    @_display_only
    def on_trial_complete(self, iteration, trials, trial, **info):
        self._print(f"{self._label(trial)}: done")

    @_display_only
    def on_trial_error(self, iteration, trials, trial, **info):
        if trial.trial_id not in self.permanent:
            self._print(f"{self._label(trial)}: FAILED after {self.spec.max_failures} retries: {last_error(trial)} "
                        f"(traceback: {trial.path}/error.txt)")

    @_display_only
    def on_trial_recover(self, iteration, trials, trial, **info):
        self._print(f"{self._label(trial)}: failed ({last_error(trial)}); retrying from its last commit")

    @_display_only
    def on_step_end(self, iteration, trials, **info):
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.status] = counts.get(t.status, 0) + 1
        key = tuple(sorted(counts.items()))
        if key != self.last_counts or time.time() - self.last_time > self.every:
            self.last_counts, self.last_time = key, time.time()
            names = [("RUNNING", "running"), ("PENDING", "pending"), ("TERMINATED", "done"), ("ERROR", "failed"),
                     ("PAUSED", "paused")]
            self._print("trials: " + ", ".join(f"{counts.get(s, 0)} {n}" for s, n in names if counts.get(s) or
                                               s in ("RUNNING", "PENDING", "TERMINATED")))
