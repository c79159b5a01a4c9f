"""A trial's MLflow logging: a background thread keeps its child run level with its commits."""

from __future__ import annotations

import queue
import sys
import threading
from typing import Any, Callable, Mapping

from orchestrator.tracking.client import Target, client
from orchestrator.tracking.sync import RunState, TrialRecord, add_masks, snapshot, sync_trial
from orchestrator.workflows import Rows


class TrialLog:
    """Keeps one trial's child run level with its results from a background thread.

    A failed attempt is retried with backoff; a newer commit supersedes a pending one (a sync logs
    everything missing). Training never waits for MLflow, except for a bounded final flush.
    """

    def __init__(self, target: Target, record: TrialRecord, warn: Callable[[str], None] | None = None):
        self.target, self.record = target, record
        self.warn = warn or (lambda text: print(text, file=sys.stderr, flush=True))
        self.state = RunState()
        self.failures = 0  # failed attempts so far (reported to the driver)
        self.synced = 0  # progress MLflow has
        self._lock = threading.Lock()
        self._wake: queue.Queue[None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=f"mlflow-{record.trial_id}", daemon=True)
        self._thread.start()

    def update(self, tables: Rows, masks: Mapping[int, Mapping[str, Any]]) -> None:
        with self._lock:
            self.record.tables = tables
            add_masks(self.record, masks)
        self._wake.put(None)

    def tag(self, key: str, value: str, masks: Mapping[int, Mapping[str, Any]]) -> None:
        """A tag for the trial's run (set when it is created) and masks it did not compute itself."""
        with self._lock:
            self.record.tags[key] = value
            add_masks(self.record, masks)

    def close(self, status: str, timeout: float = 30.0) -> bool:
        """Log the final state and `status`; True if MLflow has everything."""
        with self._lock:
            self.record.status = status
        self._wake.put(None)
        self._thread.join(timeout)
        done = not self._thread.is_alive() and self.synced == self.record.progress
        if not done:
            self.warn(f"MLflow: trial {self.record.trial_id} is not fully logged ({self.failures} failed attempts); "
                      "its results are in Parquet: run `lth mlflow sync <sweep folder>` once MLflow is reachable")
        return done

    def _loop(self) -> None:
        mlflow_client, delay = None, 1.0
        while True:
            failing = self.failures and self.synced < self.record.progress
            try:
                self._wake.get(timeout=delay if failing else None)
            except queue.Empty:
                pass
            with self._lock:
                record = snapshot(self.record)
            try:
                mlflow_client = mlflow_client or client(self.target.uri)
                sync_trial(mlflow_client, self.target, record, self.state)
                self.synced, delay = record.progress, 1.0
            except Exception as exc:  # noqa: BLE001 - any failure: Parquet has the data, retry later
                self.failures += 1
                delay = min(delay * 2, 30.0)
                self.warn(f"MLflow: logging trial {record.trial_id} failed ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); retrying in {delay:.0f} s")
                if record.status is not None:
                    return  # closing: one last attempt was made
                continue
            if record.status is not None:
                return
