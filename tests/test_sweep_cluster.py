"""Several Ray nodes (ray.cluster_utils.Cluster): a worker node dies mid-trial and the sweep recovers."""

from __future__ import annotations

import threading

import pytest
import ray
from ray.cluster_utils import Cluster

from orchestrator import tuner
from orchestrator.trial import TRAINING_LOG
from tests.sweep_helpers import BASE, COLUMNS, read_log, sweep_spec, trial_results, wait_for
from trainables.config import config_hash
from trainables.imp import ImpRun

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """A CPU-less head (as in cluster.yaml) and two one-CPU worker nodes."""
    monkeypatch.setenv(TRAINING_LOG, str(tmp_path / "trainings.jsonl"))  # before the nodes start
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0}, shutdown_at_exit=False)
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()


def test_a_removed_worker_nodes_trial_resumes_elsewhere_from_its_last_level(tmp_path, cluster):
    cluster, workers = cluster
    log = tmp_path / "trainings.jsonl"
    spec = sweep_spec(tmp_path / "store", name="nodes", space={"seed": [0, 1]}, max_failures=2,
                      base={**BASE, "train": {**BASE["train"], "length": "600it"}})
    outcome: list = []
    sweep = threading.Thread(target=lambda: outcome.append(tuner.run(spec)))
    sweep.start()
    victim = wait_for(log, lambda e: e["event"] == "level_done" and e["level"] == 1)
    node = next(w for w in workers if w.node_id == victim["node"])
    cluster.remove_node(node)  # from the main thread, as Ray requires
    sweep.join(timeout=600)
    assert outcome and outcome[0].num_terminated == 2 and outcome[0].num_errors == 0

    entries = [e for e in read_log(log) if e["config_hash"] == victim["config_hash"]]
    finished = {e["level"] for e in entries if e["event"] == "level_done" and e["time"] <= victim["time"]}
    resumed = [e for e in entries if e["event"] == "training" and e["node"] != victim["node"]]
    assert finished == {0, 1}
    assert resumed and min(e["level"] for e in resumed) == 2  # continued at its next level, on the other node

    # Its results equal an uninterrupted run of the same config (CPU determinism), run on a worker
    # like the trials (one CPU: the same float arithmetic).
    cfg = next(spec.trial_config(t) for t in spec.grid() if config_hash(spec.trial_config(t)) == victim["config_hash"])
    direct = ray.remote(num_cpus=1)(lambda c, out: ImpRun(c, out).run().to_pandas())
    expected = ray.get(direct.remote(cfg, tmp_path / "direct"))
    expected = expected.sort_values(["level", "variant"])[COLUMNS].reset_index(drop=True)
    assert trial_results(tmp_path / "store" / "nodes")[victim["config_hash"]].equals(expected)
