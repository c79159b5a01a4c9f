"""A real `mlflow server` for tests, and reading runs back through its REST API."""

from __future__ import annotations

import collections
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq

from orchestrator.workflows.imp import MLFLOW_COLUMNS as METRIC_COLUMNS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mlflow server` on 127.0.0.1 with a SQLite backend; stop() and start() again on the same port.
    `artifacts`: a URI (s3://...) the server stores artifacts in and serves (clients upload through it)."""

    def __init__(self, db: Path, port: int | None = None, artifacts: str | None = None):
        self.db, self.port, self.artifacts = db, port or free_port(), artifacts
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> Server:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.log = open(self.db.with_suffix(".log"), "ab")  # the server's output, for tests to read
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.db}",
             *(["--artifacts-destination", self.artifacts] if self.artifacts else
               ["--default-artifact-root", (self.db.parent / "artifacts").as_uri()]),
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.process.poll() is None, "mlflow server exited"
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2)
                return self
            except OSError:
                time.sleep(0.3)
        raise TimeoutError("mlflow server did not start")

    def stop(self) -> None:
        os.killpg(self.process.pid, 15)  # the server and its worker
        self.process.wait(30)
        self.log.close()


def rest(url: str, path: str, payload: dict | None = None, **query) -> dict:
    if payload is None:
        request = urllib.request.Request(f"{url}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(query)}")
    else:
        request = urllib.request.Request(f"{url}/api/2.0/mlflow/{path}", data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def search_runs(url: str, experiment_id: str, filter_string: str = "") -> list[dict]:
    return rest(url, "runs/search", {"experiment_ids": [experiment_id], "filter": filter_string,
                                     "max_results": 1000}).get("runs", [])


def tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def history(url: str, run_id: str, key: str) -> list[tuple[int, float]]:
    metrics = rest(url, "metrics/get-history", run_id=run_id, metric_key=key, max_results=10000).get("metrics", [])
    return sorted((int(m.get("step", 0)), m["value"]) for m in metrics)


def sweep_runs(url: str, experiment: str) -> tuple[dict, dict[str, dict]]:
    """(the parent run, trial id -> child run) of the experiment's only sweep."""
    experiment_id = rest(url, "experiments/get-by-name", experiment_name=experiment)["experiment"]["experiment_id"]
    runs = search_runs(url, experiment_id)
    (parent,) = [r for r in runs if tags(r).get("lth.kind") == "sweep"]
    children = [r for r in runs if tags(r).get("mlflow.parentRunId") == parent["info"]["run_id"]]
    by_trial = {tags(r)["lth.trial_id"]: r for r in children}
    assert len(by_trial) == len(children), "two child runs for one trial"
    assert len(children) == len(runs) - 1, "a run outside the sweep"
    return parent, by_trial


def assert_level_with_parquet(url: str, experiment: str, sweep_dir: Path) -> dict[str, dict]:
    """Every trial has one finished child run whose metric histories equal its Parquet rows, each
    step logged once; returns the child runs by trial id."""
    table = pq.read_table(sweep_dir / "results.parquet").to_pylist()
    parent, children = sweep_runs(url, experiment)
    rows_by_trial = collections.defaultdict(list)
    for row in table:
        rows_by_trial[row["trial_id"]].append(row)
    assert set(children) == set(rows_by_trial)
    assert parent["info"]["status"] == "FINISHED"
    for trial_id, rows in rows_by_trial.items():
        run = children[trial_id]
        assert run["info"]["status"] == "FINISHED", (trial_id, run["info"]["status"])
        run_id = run["info"]["run_id"]
        expected = collections.defaultdict(list)
        for row in rows:
            for variant in (["dense", "ticket"] if row["variant"] == "dense" else [row["variant"]]):
                for column in METRIC_COLUMNS:
                    expected[f"{variant}/{column}"].append((row["level"], row[column]))
            expected["weights_remaining"].append((row["level"], row["weights_remaining"]))
        for key, points in expected.items():
            points = sorted(set(points))
            logged = history(url, run_id, key)
            assert [s for s, _ in logged] == [s for s, _ in points], f"{trial_id} {key}: steps {logged}"
            for (_, got), (_, want) in zip(logged, points):
                assert abs(got - want) <= 1e-9 * max(1, abs(want)), (trial_id, key, got, want)
    return children
