"""Result tables: fixed Parquet schemas and an atomic writer.

A table is rewritten whole into a temporary file and renamed over the old one, so a reader
(pandas, DuckDB, polars, or a resuming run) sees either the previous complete file or the new
one, never a truncated file, even if the writer is killed mid-write.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

# The variants of a level: the dense network (level 0), the ticket, and each control by its registry name and
# non-default parameters (`trainables.catalog.control_variant`).
DENSE, TICKET = "dense", "ticket"
TWINS = "twins"  # a stability analysis's pair of copies, trained together


def as_ticket(variant: str) -> str:
    """The dense network is level 0's ticket: curves of the ticket start at 100% of weights with it."""
    return TICKET if variant == DENSE else variant


def endpoint_error(row: Mapping[str, Any]) -> float:
    """A stability summary row's error at the ends of the path: the mean of the two copies' errors."""
    return (row["error_1"] + row["error_2"]) / 2


# How a run executed (`train.precision`, `runtime`): what its numbers and timings were measured with.
SPEED_COLUMNS = [
    ("precision", pa.string()),  # fp32, or bf16 (autocast; BatchNorm and the loss in fp32)
    ("channels_last", pa.bool_()),  # conv weights in NHWC layout
    ("compiled", pa.bool_()),  # torch.compile
    ("device", pa.string()),  # cpu, cuda, ...: where train_seconds was measured
]

# One row per (level, variant) of an IMP run: its identity, the hyperparameters studies sweep
# (durations in iterations), and the results. A sweep's table adds the sweep and trial columns.
LEVELS_SCHEMA = pa.schema([
    ("run_name", pa.string()),  # <arch>-<dataset>-<config_hash>
    ("config_hash", pa.string()),  # the run's identity: hash of its non-default config fields
    ("dense_hash", pa.string()),  # the dense run (level 0) it builds on
    ("arch", pa.string()),
    ("dataset", pa.string()),
    ("seed", pa.int64()),  # initialisation, pruning ties, controls
    ("data_seed", pa.int64()),  # SGD noise: data order and augmentation
    ("optimizer", pa.string()),
    ("lr", pa.float64()),  # peak learning rate
    ("momentum", pa.float64()),  # SGD only (null for Adam)
    ("weight_decay", pa.float64()),
    ("batch_size", pa.int64()),
    ("warmup_iters", pa.int64()),
    ("rewind_iter", pa.int64()),  # k: survivors rewind to their values at this iteration
    ("prune_strategy", pa.string()),
    ("prune_scope", pa.string()),  # layerwise or global
    ("prune_rate", pa.float64()),  # per level, fully connected layers
    ("prune_conv_rate", pa.float64()),  # per level, conv layers (resolved)
    ("prune_output_rate", pa.float64()),  # per level, the output layer (resolved)
    ("data_order", pa.string()),  # fresh (each training its own order) or replay (the dense run's)
    ("rewind_optimizer", pa.string()),  # reset (a fresh optimiser at k) or restore (the dense state at k)
    ("retrain", pa.string()),  # imp.retrain: rewind, lr_rewind or finetune (Renda et al. 2020)
    *SPEED_COLUMNS,
    ("order_seed", pa.int64()),  # the seed this training's data order and augmentation were drawn from
    ("level", pa.int64()),
    ("variant", pa.string()),  # dense (level 0), ticket, or a control's name
    ("weights_remaining", pa.float64()),  # kept fraction of prunable weights
    # kept fraction on a path from an input to an output, biases ignored (trainables.sparsity)
    ("effective_weights_remaining", pa.float64()),
    ("flops_remaining", pa.float64()),  # multiply-accumulates of conv and linear layers, pruned ones skipped, / dense
    ("method", pa.string()),  # how masks were chosen: imp, or a method at initialisation (prune.method)
    ("test_accuracy", pa.float64()),  # at the end of training
    ("test_loss", pa.float64()),
    ("val_accuracy", pa.float64()),  # at the end of training: what hyperparameters are selected on
    ("val_loss", pa.float64()),
    ("early_stop_iter", pa.int64()),  # iteration of minimum validation loss
    ("early_stop_accuracy", pa.float64()),  # test accuracy there
    ("early_stop_val_loss", pa.float64()),
    ("start_accuracy", pa.float64()),  # test accuracy before training, masked (Zhou et al.'s supermask); dense: at k
    ("start_iter", pa.int64()),  # the rewind iteration for tickets and controls
    ("end_iter", pa.int64()),
    ("train_seconds", pa.float64()),
    ("started_at", pa.timestamp("ms", tz="UTC")),
    ("finished_at", pa.timestamp("ms", tz="UTC")),
])

# Every evaluation along every training run: learning curves and the early-stop record.
HISTORY_SCHEMA = pa.schema([
    ("level", pa.int64()),
    ("variant", pa.string()),
    ("iteration", pa.int64()),
    ("val_loss", pa.float64()),
    ("val_accuracy", pa.float64()),
    ("test_loss", pa.float64()),
    ("test_accuracy", pa.float64()),
    ("lr", pa.float64()),  # the learning rate of the step taken from this iteration
])


# Which two networks a stability analysis joins (`trainables.stability`).
ALIGNMENT_COLUMNS = [
    ("pair", pa.string()),  # sgd_noise (copies of one network) or independent (two initialisations)
    ("align", pa.string()),  # none, weights or activations: how the second end was permuted onto the first
    ("width", pa.float64()),  # model.width: the hidden layers' multiplier
]

# Linear mode connectivity (`trainables.stability`): one row per replicate, alpha and split of an analysis.
STABILITY_PATH_SCHEMA = pa.schema([
    ("run_name", pa.string()),  # the analysis: arch-dataset-stability_hash
    ("config_hash", pa.string()),  # the analysed IMP config (its stability section excluded)
    ("stability_hash", pa.string()),
    ("arch", pa.string()),
    ("dataset", pa.string()),
    ("seed", pa.int64()),
    ("level", pa.int64()),  # 0: dense; L: IMP level L's mask
    ("rewind_iter", pa.int64()),  # k, in iterations: where both copies start
    ("weights_remaining", pa.float64()),  # kept fraction of prunable weights
    ("replicate", pa.int64()),  # which pair of data orders
    ("alpha_index", pa.int64()),  # 0 .. alpha_points - 1
    ("alpha", pa.float64()),  # the network is (1 - alpha) * W1 + alpha * W2
    ("split", pa.string()),  # train, val or test
    ("error", pa.float64()),  # 1 - accuracy
    ("loss", pa.float64()),  # mean cross-entropy
    ("bn", pa.string()),  # statistics along the path: interpolate, recompute (RESET) or repair (REPAIR)
    *ALIGNMENT_COLUMNS,
    ("finished_at", pa.timestamp("ms", tz="UTC")),
])

# One row per replicate and split: the instability of one pair of copies (the commit record).
STABILITY_SUMMARY_SCHEMA = pa.schema([
    ("run_name", pa.string()),
    ("config_hash", pa.string()),
    ("stability_hash", pa.string()),
    ("arch", pa.string()),
    ("dataset", pa.string()),
    ("seed", pa.int64()),
    ("level", pa.int64()),
    ("rewind_iter", pa.int64()),
    ("weights_remaining", pa.float64()),
    ("replicate", pa.int64()),
    ("split", pa.string()),
    ("data_seed_1", pa.int64()),  # SGD noise of the first copy
    ("data_seed_2", pa.int64()),
    ("error_1", pa.float64()),  # the first copy's error (alpha = 0)
    ("error_2", pa.float64()),  # the second copy's error (alpha = 1)
    ("max_error", pa.float64()),  # over the path
    ("barrier_kind", pa.string()),  # endpoints_mean or linear
    ("instability", pa.float64()),  # max over alpha of the error above the barrier's reference
    ("threshold", pa.float64()),
    ("stable", pa.bool_()),  # instability < threshold
    ("alpha_points", pa.int64()),
    *SPEED_COLUMNS,
    ("bn", pa.string()),
    ("bn_batches", pa.int64()),  # batches statistics were estimated on (recompute, repair); null for interpolate
    *ALIGNMENT_COLUMNS,
    ("union_remaining", pa.float64()),  # kept fraction along the path: the union of both ends' masks
    ("train_seconds", pa.float64()),  # training both copies
    ("finished_at", pa.timestamp("ms", tz="UTC")),
])


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside `path`, renamed over it (after fsync) once the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(table: pa.Table, path: Path) -> None:
    with replacing(path) as tmp:
        pq.write_table(table, tmp)


def read_table(path: Path, schema: pa.Schema) -> pa.Table:
    return pq.read_table(path, schema=schema) if path.exists() else schema.empty_table()


def table_of(rows: Iterable[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist([dict(r) for r in rows], schema=schema)


def append_rows(path: Path, schema: pa.Schema, rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Append rows to the table at `path` atomically; returns the whole new table."""
    table = pa.concat_tables([read_table(path, schema), table_of(rows, schema)])
    write_atomic(table, path)
    return table
