"""Several Ray nodes (ray.cluster_utils.Cluster) on S3 storage (a local moto server): the node uploading a
shared dense run is removed mid-upload, and the sweep still ends with every trial complete and results
equal to an uninterrupted run; half-uploaded dense runs and checkpoints are never taken."""

from __future__ import annotations

import collections
import json
import threading
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest
import ray
from ray.cluster_utils import Cluster

from orchestrator import fs, sweep_folder, trial_folder, tuner
from orchestrator.dense_cache import UPLOAD_HOOK, DenseStore
from orchestrator.trial import TRAINING_LOG
from tests.s3_helpers import PAUSE_DIR
from tests.sweep_helpers import BASE, COLUMNS, read_log, sweep_spec
from trainables.config import config_hash
from trainables.imp import ImpRun
from trainables.layout import RESULTS

pytestmark = pytest.mark.slow
CHECKOUT = str(Path(__file__).resolve().parents[1])


@pytest.fixture
def cluster(s3, tmp_path, monkeypatch):
    """A CPU-less head and two one-CPU workers, each with its own node-local cache (as separate machines)."""
    monkeypatch.setenv(TRAINING_LOG, str(tmp_path / "trainings.jsonl"))  # before the nodes start
    monkeypatch.setenv(UPLOAD_HOOK, "tests.s3_helpers:pause_upload")
    monkeypatch.setenv(PAUSE_DIR, str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", CHECKOUT)  # the hook's module, in the trial processes
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0}, shutdown_at_exit=False)
    workers = [cluster.add_node(num_cpus=1, env_vars={"XDG_CACHE_HOME": str(tmp_path / f"node{i}")})
               for i in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()


def test_a_node_lost_while_uploading_a_dense_run_costs_only_that_dense_run(s3, tmp_path, cluster):
    cluster, workers = cluster
    storage = s3.uri(f"cluster-{uuid.uuid4().hex[:8]}")
    spec = sweep_spec(storage, name="lost", space={"prune.rate": [0.2, 0.5]}, max_failures=2,
                      base={**BASE, "imp": {"levels": 2, "controls": []}})
    outcome: list = []
    sweep = threading.Thread(target=lambda: outcome.append(tuner.run(spec)))
    sweep.start()
    marker = tmp_path / "paused.json"
    deadline = time.time() + 300
    while not marker.exists() or not marker.read_text():
        assert time.time() < deadline and sweep.is_alive(), "no dense-run upload was paused"
        time.sleep(0.2)
    paused = json.loads(marker.read_text())
    assert not DenseStore(storage).complete(paused["key"], [0])  # half uploaded: no reader takes it
    cluster.remove_node(next(w for w in workers if w.node_id == paused["node"]))  # from the main thread
    sweep.join(timeout=600)
    assert outcome and outcome[0].num_terminated == 2 and outcome[0].num_errors == 0

    # Only the interrupted dense run was trained twice (once per node); every level once.
    log = read_log(tmp_path / "trainings.jsonl")
    trainings = collections.Counter((e["config_hash"], e["level"], e["variant"]) for e in log
                                    if e["event"] == "training")
    dense = [e for e in log if e["event"] == "training" and e["variant"] == "dense"]
    assert len(dense) == 2 and {e["node"] for e in dense} == {w.node_id for w in workers}
    assert all(n == 1 for key, n in trainings.items() if key[2] != "dense")
    assert sorted(level for _, level, variant in trainings if variant != "dense") == [1, 1, 2, 2]

    # The results equal an uninterrupted run of each config, run on the remaining worker (same arithmetic).
    flow = spec.workflow
    stored = sweep_folder.stored_trials(f"{storage}/lost", flow.commit_tables)
    direct = ray.remote(num_cpus=1)(lambda c, out: ImpRun(c, out).run().to_pandas())
    for trial in stored.values():
        got = trial.rows(RESULTS, flow.run_tables[RESULTS]).to_pandas()
        trial_cfg = spec.trial_config(trial.params)
        want = ray.get(direct.remote(trial_cfg, tmp_path / "direct" / config_hash(trial_cfg)))
        assert got.sort_values(["level", "variant"])[COLUMNS].reset_index(drop=True).equals(
            want.sort_values(["level", "variant"])[COLUMNS].reset_index(drop=True))

    # A checkpoint whose upload was cut short (its manifest not yet there) is skipped for the last complete
    # one, though it holds more rows.
    trial = next(iter(stored.values()))
    filesystem, root = fs.filesystem(f"{storage}/lost/{sweep_folder.TRIAL_PREFIX}{trial.trial_id}")
    partial = f"{root}/{trial_folder.CHECKPOINT_PREFIX}999999"
    filesystem.create_dir(partial)
    table = trial.rows(RESULTS, flow.run_tables[RESULTS])
    fs.write_table(pa.concat_tables([table, table]), f"s3://{partial}", RESULTS)
    best, _ = trial_folder.latest_checkpoint(filesystem, root, flow.commit_tables)
    assert best == trial.checkpoint and isinstance(filesystem, pafs.S3FileSystem)
