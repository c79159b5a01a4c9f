"""What the terminal shows while a sweep runs: a line per commit (the workflow's progress line), a line per
finished, retried or failed trial, and the trial counts when they change. Beyond `SUMMARY_ABOVE` trials the
lines per commit and per finished trial give way to one summary line every 30 s (a 1,000-trial, 20-level
sweep would print 20,000 lines); failures and retries keep their line."""

from __future__ import annotations

import functools
import time
from pathlib import Path

from ray.tune import Callback

from orchestrator.spec import SweepSpec
from orchestrator.trial import PERMANENT_ERROR

SUMMARY_ABOVE = 64  # trials: beyond, summary lines instead of a line per commit


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

    def __init__(self, spec: SweepSpec, every: float = 30.0, summary_above: int = SUMMARY_ABOVE):
        self.spec, self.every = spec, every
        grid = spec.grid()
        self.summary = (len(grid) if grid is not None else spec.search.num_samples) > summary_above
        self.labels: dict[str, str] = {}
        self.mlflow_failures: dict[str, int] = {}
        self.permanent: set[str] = set()
        self.last_counts: tuple | None = None
        self.last_time = self.last_look = 0.0
        self.commits = self.last_commits = 0

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
        self.commits += 1
        if not self.summary:
            self._print(f"{self._label(trial)}: {self.spec.workflow.progress_line(result)}")
        if result.get("mlflow_failures", 0) > self.mlflow_failures.get(trial.trial_id, 0):
            first = trial.trial_id not in self.mlflow_failures
            self.mlflow_failures[trial.trial_id] = result["mlflow_failures"]
            if self.summary and not first:
                return  # the summary line counts the trials whose logging fails
            self._print(f"{self._label(trial)}: MLflow logging failed {result['mlflow_failures']} time(s), retrying; "
                        "results are safe in Parquet")

    @_display_only
    def on_trial_complete(self, iteration, trials, trial, **info):
        if not self.summary:
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
        now = time.time()
        if now - self.last_look < 1.0:  # counting is a pass over every trial; Tune steps many times a second
            return
        self.last_look = now
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.status] = counts.get(t.status, 0) + 1
        key = tuple(sorted(counts.items()))
        if now - self.last_time > self.every or (key != self.last_counts and not self.summary):
            self._counts(counts, now)
            self.last_counts = key

    @_display_only
    def on_experiment_end(self, trials, **info):
        if self.summary:
            counts: dict[str, int] = {}
            for t in trials:
                counts[t.status] = counts.get(t.status, 0) + 1
            self._counts(counts, time.time())

    def _counts(self, counts: dict[str, int], now: float) -> None:
        names = [("RUNNING", "running"), ("PENDING", "pending"), ("TERMINATED", "done"), ("ERROR", "failed"),
                 ("PAUSED", "paused")]
        line = "trials: " + ", ".join(f"{counts.get(s, 0)} {n}" for s, n in names if counts.get(s) or
                                      s in ("RUNNING", "PENDING", "TERMINATED"))
        if self.summary:
            rate = (self.commits - self.last_commits) / max(now - self.last_time, 1e-9) if self.last_time else 0.0
            line += f"; {self.commits:,} {self.spec.workflow.unit}s committed ({rate:.1f}/s)"
            if self.mlflow_failures:
                line += f"; MLflow logging failed in {len(self.mlflow_failures)} trials, retrying (Parquet has all)"
        self.last_time, self.last_commits = now, self.commits
        self._print(line)
