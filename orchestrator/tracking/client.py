"""Where a sweep is tracked: tracking URIs, the experiment, the sweep's parent run, batched requests."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # the UI's "model training" view
# Our own retries (`live`) replace MLflow's, whose defaults wait minutes on a dead server.
_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
             "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version as package_version

    try:
        return package_version("lth-sweeps")
    except PackageNotFoundError:
        return "unknown"


def client(uri: str):
    for key, value in _HTTP_ENV.items():
        os.environ.setdefault(key, value)
    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # after the import, which sets it: no migration lines
    return MlflowClient(tracking_uri=uri)


@dataclass(frozen=True)
class Target:
    """Where a sweep's runs are: what trials need to log their child runs."""

    uri: str
    experiment_id: str
    parent_run_id: str
    sweep: str
    sweep_id: str


def default_uri(storage: str) -> str | None:
    """The embedded store: SQLite beside the sweep folders (MLflow's file store is deprecated)."""
    if "://" in storage:
        return None  # no local file is shared by the nodes of a cluster: a tracking server is needed
    return f"sqlite:///{Path(storage).resolve() / 'mlflow.db'}"


def resolve_uri(tracking_uri: str | None, configured: str | None, storage: str) -> str | None:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else the sweep file's `tracking.uri`, else the default."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or configured or default_uri(storage)


def is_local(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def _artifact_location(uri: str, experiment: str) -> str | None:
    if uri.startswith("sqlite:///"):  # else MLflow puts artifacts under the working directory
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts" / experiment).as_uri()
    return None  # a server stores them where it was told to


def experiment_id(mlflow_client, name: str, uri: str) -> str:
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return mlflow_client.create_experiment(name, artifact_location=_artifact_location(uri, name), tags=EXPERIMENT_KIND)


def find_run(mlflow_client, experiment: str, **tags: str):
    conditions = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = mlflow_client.search_runs([experiment], filter_string=conditions, max_results=2)
    return runs[0] if runs else None


def log_batch(mlflow_client, run_id: str, metrics: Sequence = (), params: Mapping[str, str] | None = None,
              tags: Mapping[str, str] | None = None) -> None:
    """As few requests as MLflow's batch limits allow (900 metrics, 90 params each); `tags` go with the
    last, so a tag such as lth.progress is set only once everything before it is in."""
    from mlflow.entities import Param, RunTag

    items = [Param(k, v) for k, v in (params or {}).items()]
    chunks = max(1, -(-len(metrics) // 900), -(-len(items) // 90))
    for i in range(chunks):
        last = i == chunks - 1
        mlflow_client.log_batch(run_id, metrics=metrics[i * 900:(i + 1) * 900], params=items[i * 90:(i + 1) * 90],
                                tags=[RunTag(k, v) for k, v in (tags or {}).items()] if last else [])


def _parent(mlflow_client, experiment: str, sweep_id: str):
    return find_run(mlflow_client, experiment, **{"lth.sweep_id": sweep_id, "lth.kind": "sweep"})


def open_sweep(uri: str, experiment: str, sweep: str, sweep_id: str, sweep_text: str,
               params: Mapping[str, str]) -> Target:
    """The sweep's experiment and parent run (found by its sweep id on resume, created the first time)."""
    mlflow_client = client(uri)
    exp = experiment_id(mlflow_client, experiment, uri)
    run = _parent(mlflow_client, exp, sweep_id)
    if run is None:
        run = mlflow_client.create_run(exp, run_name=sweep, tags={
            "lth.kind": "sweep", "lth.sweep": sweep, "lth.sweep_id": sweep_id, "lth.version": version()})
        log_batch(mlflow_client, run.info.run_id, params=params)
        from orchestrator.sweep_folder import SWEEP_YAML

        mlflow_client.log_text(run.info.run_id, sweep_text, SWEEP_YAML)
    mlflow_client.update_run(run.info.run_id, status="RUNNING")
    return Target(uri, exp, run.info.run_id, sweep, sweep_id)


def log_report(uri: str, experiment: str, sweep_id: str, files: Sequence[Path]) -> str | None:
    """Log a report's files under `report/` in the sweep's parent run (again: replaced); returns the
    run's id, or None if MLflow has no run of this sweep yet."""
    mlflow_client = client(uri)
    found = mlflow_client.get_experiment_by_name(experiment)
    run = None if found is None else _parent(mlflow_client, found.experiment_id, sweep_id)
    if run is None:
        return None
    for path in files:
        mlflow_client.log_artifact(run.info.run_id, str(path), "report")
    return run.info.run_id


def children(mlflow_client, target: Target) -> dict[str, Any]:
    """trial id -> its child run."""
    out, token = {}, None
    while True:
        page = mlflow_client.search_runs([target.experiment_id], max_results=1000, page_token=token,
                                         filter_string=f"tags.`mlflow.parentRunId` = '{target.parent_run_id}'")
        out.update({run.data.tags.get("lth.trial_id"): run for run in page})
        if not (token := page.token):
            return out


def experiment_link(uri: str, address: str, experiment: str, sweep_id: str | None = None) -> str:
    """The UI's "model training" runs table of an experiment (of one sweep's runs, given its id: experiments
    that several sweeps share hold thousands), or the UI's front page if it has none yet."""
    import urllib.parse

    found = client(uri).get_experiment_by_name(experiment)
    if found is None:
        return address
    link = f"{address}/#/experiments/{found.experiment_id}/runs?workflowType=machine_learning"
    if sweep_id is None:
        return link
    return f"{link}&searchFilter={urllib.parse.quote(f'tags.`lth.sweep_id` = {sweep_id!r}')}"
