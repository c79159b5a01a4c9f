"""Every path and file name of a run folder, a dense-run folder and an analysis folder, and the queries
that say what in them is finished. No other module spells these names.

A dense run (level 0 of IMP, shareable between runs):
    config.yaml                      the sections that decide dense training (its `dense_hash`)
    results.parquet, history.parquet the dense row and learning curve (the commit record)
    weights.pt                       the trained dense network (what level 1 prunes)
    rewind/it_NNNNNNN.pt             weights and optimiser state at each rewind point asked for
An IMP run:
    config.yaml                      the resolved config (identity: its content hash)
    results.parquet                  one row per level and variant (the commit record)
    history.parquet                  every evaluation of every training run
    checkpoints/level_NNN/mask.pt    the level's mask, bit-packed (every level)
    checkpoints/level_NNN/weights.pt the level's trained ticket (latest level by default)
    dense/                           its dense run, unless a shared one is given
A stability analysis:
    config.yaml, dense/              as an IMP run
    imp/                             the IMP run that finds level L's mask (stability.level > 0 only)
    stability.parquet                error and loss at every alpha of every replicate and split
    stability_summary.parquet        one row per replicate and split (the commit record)
Any of them, when it travels as a checkpoint:
    manifest.json                    every other file and its size, written last: a copy that lacks a
                                     listed file, or holds a shorter one, is incomplete
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq

CONFIG = "config.yaml"
RESULTS = "results.parquet"  # IMP levels (and the dense row): the commit record of a run
HISTORY = "history.parquet"
WEIGHTS = "weights.pt"
STABILITY_PATH = "stability.parquet"
STABILITY_SUMMARY = "stability_summary.parquet"  # the commit record of an analysis
MANIFEST = "manifest.json"
DENSE_DIR, IMP_DIR = "dense", "imp"
PARTNER_DIR = "independent"  # an analysis's second network (stability.pair: independent)
# What one row-group appended to a commit record stands for: a run commits a level, an analysis a replicate.
COMMIT_UNITS = {RESULTS: "level", STABILITY_SUMMARY: "replicate"}


def rows(path: Path) -> int:
    """Rows of a Parquet table (0 if it does not exist yet)."""
    return pq.read_metadata(path).num_rows if path.exists() else 0


def column(path: Path, name: str) -> list:
    return pq.read_table(path, columns=[name]).column(name).to_pylist() if path.exists() else []


class DenseLayout:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.config, self.results = self.root / CONFIG, self.root / RESULTS
        self.history, self.weights = self.root / HISTORY, self.root / WEIGHTS

    @staticmethod
    def rewind_name(iteration: int) -> str:
        return f"rewind/it_{iteration:07d}.pt"

    def rewind(self, iteration: int) -> Path:
        return self.root / self.rewind_name(iteration)

    def stored_points(self) -> list[int]:
        return sorted(int(p.stem[3:]) for p in (self.root / "rewind").glob("it_*.pt"))

    def trained(self) -> bool:
        return self.results.exists()

    @classmethod
    def files(cls, points: list[int]) -> list[str]:
        """What building on a dense run needs, relative, in upload order: the commit record last."""
        return [CONFIG, WEIGHTS, HISTORY, *map(cls.rewind_name, points), RESULTS]


class RunLayout:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.config, self.results, self.history = self.root / CONFIG, self.root / RESULTS, self.root / HISTORY
        self.dense = DenseLayout(self.root / DENSE_DIR)  # unless the run is given a shared one

    @staticmethod
    def mask_name(level: int) -> str:
        return f"checkpoints/level_{level:03d}/mask.pt"

    def mask(self, level: int) -> Path:
        return self.root / self.mask_name(level)

    def weights(self, level: int) -> Path:
        return self.root / f"checkpoints/level_{level:03d}/{WEIGHTS}"

    def finished_levels(self) -> list[int]:
        return sorted(set(column(self.results, "level")))


class AnalysisLayout:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.config = self.root / CONFIG
        self.path, self.summary = self.root / STABILITY_PATH, self.root / STABILITY_SUMMARY
        self.dense = DenseLayout(self.root / DENSE_DIR)
        self.imp = RunLayout(self.root / IMP_DIR)

    @property
    def partner(self) -> AnalysisLayout:
        """The second network's dense and IMP runs (stability.pair: independent)."""
        return AnalysisLayout(self.root / PARTNER_DIR)

    def finished_replicates(self) -> list[int]:
        return sorted(set(column(self.summary, "replicate")))


def write_manifest(root: Path) -> None:
    """List every file under `root` with its size, into `root/manifest.json`, written last."""
    files = {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))
             if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")}
    tmp = root / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(files, indent=0))
    os.replace(tmp, root / MANIFEST)
