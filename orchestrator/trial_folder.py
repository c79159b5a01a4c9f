"""A trial folder, `<sweep folder>/trial_<id>/`: the trial's Tune config and its checkpoints.

    params.json           the trial's Tune config, written by the trial before its first checkpoint
    checkpoint_NNNNNN/    the trial's run folder as of a commit, uploaded by Tune, its manifest written last;
                          once pruned, only a `pruned` marker

Checkpoints are ordered by progress (the rows committed), never by name or time: a resumed driver can number
new checkpoints below older ones. The trial prunes its own (`prune`) after Tune has taken each new one.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import pyarrow.fs as pafs

from orchestrator import fs
from trainables.layout import MANIFEST

CHECKPOINT_PREFIX = "checkpoint_"
PARAMS = "params.json"
PRUNED = "pruned"


def complete(filesystem: pafs.FileSystem, path: str, manifests: bool = True) -> bool:
    """Whether a checkpoint holds every file its manifest lists, whole. A checkpoint whose upload was cut
    short (a lost node: Tune uploads files in no fixed order) lacks the manifest or some of its files.
    `manifests` false: a sweep made before checkpoints carried one, whose checkpoints are taken as they are
    (a pruned one among them holds no rows, so it is never the most advanced)."""
    try:
        with filesystem.open_input_stream(f"{path}/{MANIFEST}") as f:
            listed = json.loads(f.read())
    except (OSError, ValueError):
        return not manifests
    infos = filesystem.get_file_info([f"{path}/{name}" for name in listed])
    return all(i.type == pafs.FileType.File and i.size == size for i, size in zip(infos, listed.values()))


def _pruned(filesystem: pafs.FileSystem, path: str) -> bool:
    return filesystem.get_file_info(f"{path}/{PRUNED}").type == pafs.FileType.File


def progress(filesystem: pafs.FileSystem, path: str, commit_tables: Sequence[str]) -> int:
    """Committed rows in a run folder: grows with every commit, so the larger of two copies of a trial's
    folder is the more advanced."""
    return sum(fs.rows(filesystem, f"{path}/{name}") for name in commit_tables)


def _checkpoints(filesystem: pafs.FileSystem, trial_path: str, commit_tables: Sequence[str],
                 manifests: bool) -> list[tuple[int, str]]:
    """(committed rows, path) of each checkpoint not pruned, the most advanced first; -1 rows for an
    incomplete one."""
    found = []
    for info in filesystem.get_file_info(pafs.FileSelector(trial_path, allow_not_found=True)):
        if info.type != pafs.FileType.Directory or not info.base_name.startswith(CHECKPOINT_PREFIX):
            continue
        if complete(filesystem, info.path, manifests):
            found.append((progress(filesystem, info.path, commit_tables), info.path))
        elif not _pruned(filesystem, info.path):
            found.append((-1, info.path))
    return sorted(found, reverse=True)


def latest_checkpoint(filesystem: pafs.FileSystem, trial_path: str, commit_tables: Sequence[str],
                      manifests: bool = True) -> tuple[str | None, int]:
    """The trial's complete checkpoint with the most committed rows, and that count."""
    found = _checkpoints(filesystem, trial_path, commit_tables, manifests)
    return (found[0][1], found[0][0]) if found and found[0][0] > 0 else (None, 0)


def prune(filesystem: pafs.FileSystem, trial_path: str, commit_tables: Sequence[str], keep: int) -> None:
    """Empty all but the trial's `keep` most advanced complete checkpoints (incomplete ones go first).

    Not Tune's pruning (`CheckpointConfig(num_to_keep)`): it forces an experiment snapshot every `num_to_keep`
    checkpoints of any trial, driver work per commit that grows with the sweep (bench/scale.py). Each pruned
    folder keeps a marker: a resumed driver's experiment state may still name it as the trial's checkpoint,
    and Tune refuses to restore a trial from a path that is gone; the trial then restores from its most
    advanced complete checkpoint as always."""
    for _, path in _checkpoints(filesystem, trial_path, commit_tables, manifests=True)[keep:]:
        with filesystem.open_output_stream(f"{path}/{PRUNED}") as f:  # first: a half-pruned one reads as pruned
            f.write(b"pruned: a newer checkpoint of this trial holds everything this one held\n")
        for info in filesystem.get_file_info(pafs.FileSelector(path)):
            if info.type == pafs.FileType.Directory:
                filesystem.delete_dir(info.path)
            elif info.base_name != PRUNED:
                filesystem.delete_file(info.path)


def write_params(filesystem: pafs.FileSystem, trial_path: str, config: Mapping[str, Any]) -> None:
    """The trial's Tune config as `params.json`, once, before its first checkpoint (one PUT on object stores).
    Written by the trial, not by Tune's JSON logger: the driver runs without Tune's per-result loggers, whose
    files would cost it work on every result of every trial."""
    path = f"{trial_path}/{PARAMS}"
    if filesystem.get_file_info(path).type == pafs.FileType.File:
        return  # a retry or a resumed trial: the config it was made with stands
    filesystem.create_dir(trial_path, recursive=True)
    with filesystem.open_output_stream(path) as f:
        f.write(json.dumps(dict(config), sort_keys=True, indent=2, default=str).encode())
