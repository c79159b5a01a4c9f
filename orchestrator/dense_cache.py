"""Shared dense runs on sweep storage: each computed once, keyed by the hash of what decides it.

Trials that differ only after dense training (pruning rate, rewind point, levels, controls)
share `<storage>/dense/<dense_hash>/` (a `trainables.imp.DenseRun` directory), and so does any
later sweep on the same storage. One trial computes a missing dense run while the others wait:
a small Ray actor records who holds each claim, and the driver releases a trial's claims when
it fails, so a retried trial (or a waiting one) takes over from what was saved.
"""

from __future__ import annotations

import importlib
import os
import time
from pathlib import Path
from typing import Sequence

import pyarrow.fs as pafs
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from orchestrator.fs import filesystem, is_uri
from trainables.catalog import steps_per_epoch
from trainables.config import Config, dense_hash, to_iterations
from trainables.imp import DenseRun, Reporter
from trainables.layout import DenseLayout
from trainables.results import replacing

CLAIMS_ACTOR = "lth-dense-claims"
# Test-only: "module:function", called with (key, file name) after each file a dense run uploads, so a
# test can hold an upload midway, at a moment it knows, and remove the node (tests/s3_helpers.py).
UPLOAD_HOOK = "LTH_TEST_UPLOAD_HOOK"


class Claims:
    """Which trial is computing which dense run. In a sweep it lives in a Ray actor (`claims_actor`)."""

    def __init__(self) -> None:
        self.owner: dict[str, str] = {}

    def claim(self, key: str, trial: str) -> bool:
        return self.owner.setdefault(key, trial) == trial

    def release(self, key: str, trial: str) -> None:
        if self.owner.get(key) == trial:
            del self.owner[key]

    def release_trial(self, trial: str) -> None:
        self.owner = {k: v for k, v in self.owner.items() if v != trial}


DenseClaims = ray.remote(num_cpus=0)(Claims)


class ActorClaims:
    """`Claims`'s calls on the sweep's actor, answered synchronously."""

    def __init__(self, actor):
        self.actor = actor

    def claim(self, key: str, trial: str) -> bool:
        return ray.get(self.actor.claim.remote(key, trial))

    def release(self, key: str, trial: str) -> None:
        self.actor.release.remote(key, trial)


def claims_actor(create: bool = False):
    """The sweep's claims actor (created by the driver), or None outside a sweep."""
    if create:
        # On the driver's node: an actor placed on a worker would die with it, and every trial's claim with it
        # (found by tests/test_sweep_cluster_s3.py); the driver's node outlives the sweep's trials.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        return DenseClaims.options(name=CLAIMS_ACTOR, get_if_exists=True, lifetime=None,
                                   scheduling_strategy=here).remote()
    if not ray.is_initialized():
        return None
    try:
        return ray.get_actor(CLAIMS_ACTOR)
    except ValueError:
        return None


class DenseStore:
    """Where shared dense runs live: `<storage>/dense/`, a local folder or a pyarrow-filesystem URI.

    On a local (or shared, mounted) folder trials use the directories in place. With a URI the
    computing trial works in a node-local cache and uploads the result, commit record last;
    readers download only the files they need.
    """

    def __init__(self, storage: str, cache: Path | None = None):
        self.remote = is_uri(storage)
        self.fs, root = filesystem(storage)
        self.root = f"{root.rstrip('/')}/dense"
        self.cache = cache or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lth-sweeps" / "dense"

    def local(self, key: str) -> Path:
        return self.cache / key if self.remote else Path(self.root) / key

    def complete(self, key: str, points: Sequence[int]) -> bool:
        infos = self.fs.get_file_info([f"{self.root}/{key}/{f}" for f in DenseLayout.files(points)])
        return all(i.type == pafs.FileType.File for i in infos)

    def fetch(self, key: str, points: Sequence[int]) -> Path:
        """The dense run's local directory, with whatever of `points` storage has."""
        local = self.local(key)
        if self.remote:
            for name in DenseLayout.files([0, *points]):
                src, dst = f"{self.root}/{key}/{name}", local / name
                if not dst.exists() and self.fs.get_file_info(src).type == pafs.FileType.File:
                    # renamed into place once whole: a download cut short leaves no file the cache trusts
                    with replacing(dst) as tmp:
                        pafs.copy_files(src, str(tmp), source_filesystem=self.fs)
        return local

    def publish(self, key: str, points: Sequence[int]) -> None:
        """Upload a dense run computed in the local cache. An object store has no rename: each file is one
        object (published whole by its PUT), uploaded in order, the commit record last, and a reader
        (`complete`) takes the run only once every file is there, never one whose upload was cut short."""
        if self.remote:
            local = self.local(key)
            hook = os.environ.get(UPLOAD_HOOK)
            for name in DenseLayout.files([0, *points]):
                self.fs.create_dir(f"{self.root}/{key}/{Path(name).parent}".rstrip("/."), recursive=True)
                pafs.copy_files(str(local / name), f"{self.root}/{key}/{name}", destination_filesystem=self.fs)
                if hook:
                    module, attribute = hook.split(":")
                    getattr(importlib.import_module(module), attribute)(key, name)


def acquire(cfg: Config, rewind_points: Sequence[str], store: DenseStore, trial: str,
            reporter: Reporter | None = None, poll: float = 2.0, claims: Claims | ActorClaims | None = None) -> Path:
    """The local directory of `cfg`'s dense run with every rewind point in `rewind_points`, computing what is
    missing (once across the sweep), or waiting for the trial that is. `claims`: default the sweep's actor;
    none outside a sweep. A claim is released however the computation ends, so a waiting trial takes over."""
    key = dense_hash(cfg)
    steps = steps_per_epoch(cfg.data, cfg.train.batch_size)
    points = sorted({0, *(to_iterations(p, steps) for p in rewind_points)})
    if claims is None and (actor := claims_actor()) is not None:
        claims = ActorClaims(actor)
    while True:
        if store.complete(key, points):
            return store.fetch(key, points)
        if claims is None or claims.claim(key, trial):
            try:
                local = store.fetch(key, points)
                DenseRun(cfg, local, reporter).ensure(points)
                store.publish(key, points)
            finally:
                if claims is not None:
                    claims.release(key, trial)
            return local
        time.sleep(poll)
