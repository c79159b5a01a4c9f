"""Shared dense runs on URI storage: computed once, uploaded commit-record last, fetched by others."""

from __future__ import annotations

import threading
import time

import pytest

from orchestrator.dense_cache import Claims, DenseStore, acquire
from tests.sweep_helpers import BASE
from trainables.config import dense_hash, from_dict
from trainables.imp import ImpRun, Reporter
from trainables.layout import DenseLayout


class Count(Reporter):
    def __init__(self):
        self.trainings = []

    def training(self, level, variant, start, end, weights_remaining):
        self.trainings.append((level, variant))


@pytest.mark.slow
def test_a_dense_run_on_uri_storage_is_computed_once_and_fetched_elsewhere(tmp_path):
    cfg = from_dict(BASE)
    uri = f"file://{tmp_path / 'bucket'}"  # the remote code path (upload, download), on a local disk
    first, second = Count(), Count()
    local = acquire(cfg, ["0it", "30it"], DenseStore(uri, cache=tmp_path / "node1"), "trial-1", first)
    assert first.trainings == [(0, "dense")] and local == tmp_path / "node1" / dense_hash(cfg)
    stored = tmp_path / "bucket" / "dense" / dense_hash(cfg)
    assert {p.name for p in stored.rglob("*.p*")} == {"results.parquet", "history.parquet", "weights.pt",
                                                       "it_0000000.pt", "it_0000030.pt"}
    # Another node: downloads what it needs, trains nothing, and builds the same IMP run on it.
    other = acquire(cfg, ["30it"], DenseStore(uri, cache=tmp_path / "node2"), "trial-2", second)
    assert second.trainings == [] and (other / "rewind" / "it_0000030.pt").exists()
    # A rewind point nobody asked for yet is recreated once, then uploaded for everyone.
    third = acquire(cfg, ["60it"], DenseStore(uri, cache=tmp_path / "node2"), "trial-3", second)
    assert second.trainings == [] and (stored / "rewind" / "it_0000060.pt").exists()
    run = cfg.with_updates({"imp.rewind_iter": "60it", "imp.levels": 1})
    shared = ImpRun(run, tmp_path / "shared", dense_dir=third).run().to_pandas()
    own = ImpRun(run, tmp_path / "own").run().to_pandas()
    columns = ["level", "variant", "test_accuracy", "test_loss", "early_stop_iter"]
    assert shared[columns].equals(own[columns])


def _publish(root, key, points):
    """What a finished dense run leaves on storage (its files, the commit record last)."""
    for name in DenseLayout.files(points):
        (root / "dense" / key / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "dense" / key / name).write_bytes(b"x")


def test_a_trial_waits_for_the_claimed_dense_run_and_does_not_train_it(tmp_path, monkeypatch):
    cfg = from_dict(BASE)
    key, claims = dense_hash(cfg), Claims()
    assert claims.claim(key, "owner") and not claims.claim(key, "waiter") and claims.claim(key, "owner")
    monkeypatch.setattr("orchestrator.dense_cache.DenseRun", None)  # the waiter must never build one
    found = []
    waiter = threading.Thread(target=lambda: found.append(
        acquire(cfg, ["0it"], DenseStore(str(tmp_path)), "waiter", poll=0.01, claims=claims)))
    waiter.start()
    time.sleep(0.1)
    assert waiter.is_alive() and not found  # still waiting: the owner has not published
    _publish(tmp_path, key, [0])
    waiter.join(5)
    assert found == [tmp_path / "dense" / key]


def test_a_failed_computation_releases_its_claim_for_the_next_trial(tmp_path, monkeypatch):
    cfg = from_dict(BASE)
    claims = Claims()

    class Failing:
        def __init__(self, *args):
            pass

        def ensure(self, points):
            raise RuntimeError("node lost")

    monkeypatch.setattr("orchestrator.dense_cache.DenseRun", Failing)
    with pytest.raises(RuntimeError, match="node lost"):
        acquire(cfg, ["0it"], DenseStore(str(tmp_path)), "first", poll=0.01, claims=claims)
    assert claims.owner == {}  # released: the next trial (or this one, retried) claims it
    assert claims.claim(dense_hash(cfg), "second")
    claims.release_trial("second")  # what the driver does when a trial stops
    assert claims.owner == {}
