"""A whole sweep on S3 storage (a local moto server), tracked on an MLflow server whose artifacts go to S3:
the sweep folder, checkpoints, shared dense runs and tables in the bucket; resume, results, report and
mlflow sync on the S3 URI; the secret key nowhere in what the sweep wrote or printed."""

from __future__ import annotations

import collections
import io
import os
import urllib.parse
import urllib.request

import pyarrow.parquet as pq
import pytest
import ray

from orchestrator.cli import main
from orchestrator.trial import TRAINING_LOG
from tests.mlflow_helpers import Server, sweep_runs
from tests.sweep_helpers import BASE, read_log, write_sweep

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3_ray(s3, tmp_path_factory):
    """A local Ray started after the AWS variables are set (its workers take the environment of its start)."""
    path = tmp_path_factory.mktemp("s3log") / "trainings.jsonl"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TRAINING_LOG, str(path))
        patch.setenv("XDG_CACHE_HOME", str(path.parent / "cache"))  # the nodes' dense-run cache: this test's own
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        yield path
        ray.shutdown()


@pytest.fixture(scope="module")
def mlflow_s3(s3, tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("mlflow-s3") / "mlflow.db", artifacts=s3.uri("mlflow")).start()
    yield server
    server.stop()


def test_a_sweep_on_s3_storage_tracked_on_a_server_with_s3_artifacts(s3, s3_ray, mlflow_s3, tmp_path, capsys,
                                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)  # `lth report` of a URI writes under ./reports
    storage, prefix = s3.uri("sweeps"), "sweeps/ons3"
    folder = f"{storage}/ons3"
    sweep = write_sweep(tmp_path / "sweep.yaml", tmp_path / "unused", name="ons3",
                        space={"prune.rate": [0.2, 0.5]}, base={**BASE, "imp": {"levels": 2, "controls": []}})
    assert main(["sweep", "run", str(sweep), "--storage", storage, "--tracking-uri", mlflow_s3.url]) == 0
    out = capsys.readouterr().out
    assert "2 trials done, 0 failed, 0 unfinished" in out

    keys = s3.keys("sweeps/")
    assert {f"{prefix}/sweep.yaml", f"{prefix}/sweep.json", f"{prefix}/results.parquet"} <= set(keys)
    manifests = [k for k in keys if k.startswith(f"{prefix}/trial_") and k.endswith("/manifest.json")]
    assert len({k.split("/")[2] for k in manifests}) == 2  # every trial's checkpoints carry their record
    trainings = [e for e in read_log(s3_ray) if e["event"] == "training"]
    dense = {e["dense_hash"] for e in trainings if e["variant"] == "dense"}
    assert len([e for e in trainings if e["variant"] == "dense"]) == 1 == len(dense)  # shared by both trials
    assert {k.split("/")[2] for k in keys if k.startswith("sweeps/dense/")} - {""} == dense  # uploaded, read by others
    table = pq.read_table(io.BytesIO(s3.read(f"{prefix}/results.parquet"))).to_pandas()
    assert len(table) == 2 * 3 and table.trial_id.nunique() == 2

    # Resuming a finished sweep trains nothing; the views read the S3 URI.
    before = len(read_log(s3_ray))
    assert main(["sweep", "resume", folder]) == 0
    assert "2 trials done, 0 failed, 0 unfinished" in capsys.readouterr().out
    assert not [e for e in read_log(s3_ray)[before:] if e["event"] == "training"]
    assert main(["results", folder, "--format", "csv"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1 + 2 * 3  # rate x levels 0-2
    assert main(["mlflow", "sync", folder]) == 0
    assert "0 of 2 trial runs updated" in capsys.readouterr().out
    assert main(["report", folder]) == 0
    report_out = capsys.readouterr().out
    assert "logged under report/ in the sweep's run" in report_out

    # MLflow: runs on the server, artifacts in the bucket, served by the server's artifact API.
    parent, children = sweep_runs(mlflow_s3.url, "ons3")
    assert len(children) == 2 and all(r["info"]["status"] == "FINISHED" for r in children.values())
    artifacts = s3.keys("mlflow/")
    (summary,) = [k for k in artifacts if k.endswith("/report/summary.csv")]
    assert parent["info"]["run_id"] in summary
    query = urllib.parse.urlencode({"path": "report/summary.csv", "run_uuid": parent["info"]["run_id"]})
    with urllib.request.urlopen(f"{mlflow_s3.url}/get-artifact?{query}", timeout=30) as served:
        assert served.read() == s3.read(summary)

    # The secret key is nowhere: not in the sweep folder, the MLflow store or what was printed.
    secret = s3.secret.encode()
    written = collections.Counter(k.split("/")[0] for k in s3.keys("") if secret in s3.read(k))
    assert not written
    assert secret not in mlflow_s3.db.read_bytes() and secret not in mlflow_s3.db.with_suffix(".log").read_bytes()
    assert s3.secret not in out + report_out and os.environ["AWS_SECRET_ACCESS_KEY"] == s3.secret
