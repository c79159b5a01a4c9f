"""`ray job submit`, as README and cluster.yaml launch a sweep: a Ray head of the test's own (job server on
free ports, its own temporary directory) runs `lth sweep run` on S3 storage; results are read from S3."""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from orchestrator.trial import TRAINING_LOG
from tests.mlflow_helpers import free_port
from tests.s3_helpers import wait_for_url
from tests.sweep_helpers import BASE, write_sweep

pytestmark = pytest.mark.slow
CHECKOUT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # `ray` and `lth` of this environment


def _ours(temp_dir: str) -> list[int]:
    """Processes whose command line names our Ray's temporary directory (every Ray process of a node does)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and temp_dir.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.fixture
def ray_head(s3, tmp_path):
    """A local Ray head with the dashboard and job server; stopped by its own process group and the processes
    under its temporary directory, never with `ray stop` (which stops every Ray on the machine)."""
    temp_dir = tempfile.mkdtemp(prefix="lthray", dir="/tmp")  # Ray's socket paths must stay short
    dashboard = free_port()
    ports = {"--port": free_port(), "--dashboard-port": dashboard, "--ray-client-server-port": free_port(),
             "--node-manager-port": free_port(), "--object-manager-port": free_port(),
             "--dashboard-agent-listen-port": free_port(), "--dashboard-agent-grpc-port": free_port(),
             "--runtime-env-agent-port": free_port(), "--metrics-export-port": free_port()}
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled",
           TRAINING_LOG: str(tmp_path / "trainings.jsonl"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "2", "--temp-dir", temp_dir,
         "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1", "--include-dashboard", "true",
         "--disable-usage-stats", *(f"{k}={v}" for k, v in ports.items())],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        wait_for_url(f"{address}/api/version", head, 120)
        yield address, env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        for pid in _ours(temp_dir):  # anything of ours that left the process group
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_sweep_submitted_with_ray_job_submit_writes_its_results_to_s3(s3, ray_head, tmp_path):
    address, env = ray_head
    sweep = write_sweep(tmp_path / "sweep.yaml", tmp_path / "unused", name="job", space={"prune.rate": [0.2, 0.5]},
                        base={**BASE, "imp": {"levels": 2, "controls": []}}, tracking={"enabled": False})
    job = f"lth-test-{uuid.uuid4().hex[:8]}"
    storage = s3.uri("jobs")
    submit = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--submission-id", job, "--working-dir",
         str(CHECKOUT), "--", "lth", "sweep", "run", str(sweep), "--storage", storage],
        env=env, capture_output=True, text=True, timeout=600)
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    logs = subprocess.run([str(BIN / "ray"), "job", "logs", "--address", address, job], env=env,
                          capture_output=True, text=True, timeout=60).stdout
    assert "2 trials done, 0 failed, 0 unfinished" in logs
    assert len(re.findall(r"trial \d \(rate=0\.\d\): done", logs)) == 2  # the progress lines
    table = pq.read_table(io.BytesIO(s3.read("jobs/job/results.parquet"))).to_pandas()
    assert len(table) == 2 * 3 and table.trial_id.nunique() == 2
    assert s3.secret not in logs + submit.stdout + submit.stderr
