"""Shared dense runs on URI storage: computed once, uploaded commit-record last, fetched by others."""

from __future__ import annotations

from tests.sweep_helpers import BASE
from trainables.config import dense_hash, from_dict
from trainables.imp import ImpRun, Reporter

from orchestrator.dense_cache import DenseStore, acquire


class Count(Reporter):
    def __init__(self):
        self.trainings = []

    def training(self, level, variant, start, end, weights_remaining):
        self.trainings.append((level, variant))


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
