"""Stability to SGD noise: linear mode connectivity (Frankle, Dziugaite, Roy & Carbin 2020).

A network (dense, or an IMP subnetwork) is stable at iteration k if two copies trained from its
state at k (weights, optimiser state, schedule position, mask) with different data orders end in
minima joined by a line of low error: the instability, the largest rise of the error along the
line above the ends' error, is below a threshold (2%).

The two copies train together: their parameters, buffers and optimiser state are stacked along
a leading dimension, the forward pass is vmapped over it, and one optimiser steps both (the
optimisers are elementwise, so it is exactly two independent ones). Each copy sees exactly the
batches an ordinary `train` run with its data seed sees, and the loop is `train`'s own.

An analysis folder (`trainables.layout.AnalysisLayout`) holds its config, its dense run, the IMP run
that finds level L's mask, and two tables: the error along the path and the summary per replicate
(the commit record). A run killed at any point resumes at its first uncommitted replicate.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state

from trainables.alignment import activation_matching, describe, permute, permute_mask, weight_matching
from trainables.catalog import MODELS
from trainables.config import Config, TrainConfig, config_hash, stability_hash
from trainables.data import Dataset
from trainables.imp import DenseRun, ImpRun, Reporter, Run, Start, _claim, derive_seed
from trainables.layout import AnalysisLayout
from trainables.masks import Mask
from trainables.repair import Repair
from trainables.results import STABILITY_PATH_SCHEMA, STABILITY_SUMMARY_SCHEMA, TWINS, append_rows, read_table, \
    write_atomic
from trainables.train import autocast, evaluate, optimizer_for, run_steps

# ---------------------------------------------------------------------------------------------
# training the copies


def _stacked_optimizer_state(optimizers: Sequence[torch.optim.Optimizer], stacked: list[Tensor]) -> dict:
    """The optimisers' states with every per-weight tensor (momentum, Adam's moments) stacked, one per copy;
    scalars (Adam's step count) are the first's, the copies having taken the same number of steps."""
    states = [o.state_dict() for o in optimizers]
    per_param = {
        i: {key: torch.stack([s["state"][i][key] for s in states]) if torch.is_tensor(v) and
            v.shape == stacked[i].shape[1:]
            else v.clone() if torch.is_tensor(v) else v  # a copy: stepping must not advance the optimiser's own
            for key, v in entry.items()}
        for i, entry in states[0]["state"].items()}
    return {"state": per_param, "param_groups": copy.deepcopy(states[0]["param_groups"])}


def train_twins(start: Start | Sequence[Start], data: Dataset, cfg: TrainConfig, data_seeds: Sequence[int],
                begin: int) -> list[dict[str, Tensor]]:
    """Train one copy of `start` (or of each start: one per data seed) per data seed from iteration `begin` to the
    end of the schedule, all in one batched program; returns each copy's final state dict. Starts are left as
    they were.

    BatchNorm works: its running statistics are stacked buffers, updated in place under vmap per copy.
    """
    starts = [start] * len(data_seeds) if isinstance(start, Start) else list(start)
    params, buffers = stack_module_state([s.model for s in starts])
    leaves = list(params.values())
    optimizer = optimizer_for(leaves, cfg)
    optimizer.load_state_dict(_stacked_optimizer_state([s.optimizer for s in starts], leaves))
    masks = [s.mask for s in starts]
    mask = masks[0] if all(m is masks[0] for m in masks) else Mask(
        {name: torch.stack([m.tensors[name] for m in masks]) for name in masks[0].tensors})
    # The structure only (tensors come from the stacks); a copy is never compiled (runtime.compile), so
    # the stacked copies run eagerly under vmap.
    base = copy.deepcopy(starts[0].model).to("meta").train()

    forward = torch.vmap(lambda p, b, x: functional_call(base, (p, b), (x,)))
    batches = [data.train_batches(cfg.batch_size, seed) for seed in data_seeds]

    def loss(it: int) -> Tensor:
        xs, ys = zip(*(b(it) for b in batches))
        with autocast(xs[0].device, cfg.precision):
            logits = forward(params, buffers, torch.stack(xs)).flatten(0, 1).float()
        # The sum of the copies' mean losses (one call: cheaper than under vmap), so each copy's
        # gradient is exactly that of its own loss.
        return F.cross_entropy(logits, torch.cat(ys), reduction="sum") / len(ys[0])

    run_steps(loss, optimizer, cfg, data.steps_per_epoch(cfg.batch_size), start=begin,
              keep_mask=mask.applier_for(params))
    return [{name: t[j].detach() for name, t in (params | buffers).items()} for j in range(len(starts))]


# ---------------------------------------------------------------------------------------------
# the path between them


def interpolate(a: Mapping[str, Tensor], b: Mapping[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """(1 - alpha) * a + alpha * b for every float tensor (weights, BatchNorm statistics); counters from `a`.
    lerp is exact at both ends and keeps weights that are zero in both (pruned) exactly zero."""
    return {k: torch.lerp(v, b[k], alpha) if v.is_floating_point() else v for k, v in a.items()}


@torch.no_grad()
def recompute_bn(model: nn.Module, batches: Callable[[int], tuple[Tensor, Tensor]], count: int) -> None:
    """Replace every BatchNorm layer's running statistics by their average over training batches 0 .. count-1
    (RESET, Jordan et al. 2023; REPAIR is `trainables.repair`): reset, momentum None (a cumulative average),
    train mode, no gradients."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    for it in range(count):
        model(batches(it)[0])
    for m, momentum in zip(layers, momenta):
        m.momentum = momentum
    model.train(was_training)


def alpha_grid(points: int) -> list[float]:
    return [i / (points - 1) for i in range(points)]  # exactly 0 and 1 at the ends, unlike a float32 linspace


def path_metrics(model: nn.Module, ends: Sequence[Mapping[str, Tensor]], data: Dataset, alphas: Sequence[float],
                 splits: Sequence[str], batch_size: int, correct: Callable[[nn.Module, float], list] | None = None,
                 precision: str = "fp32") -> dict[str, list[float]]:
    """"{split}_error" and "{split}_loss" of the network interpolated between `ends` at each alpha, loaded
    into `model` and, if given, corrected by `correct(model, alpha)` first (RESET, REPAIR), which returns the
    hooks it left on `model`, removed after evaluation. One host read.

    `model` is overwritten: it must not be the module whose state dict is one of `ends`."""
    records = []
    for a in alphas:
        model.load_state_dict(interpolate(*ends, a))
        hooks = correct(model, a) if correct is not None else []
        metrics = evaluate(model, data, splits, batch_size, precision)
        for hook in hooks:
            hook.remove()
        records.append(torch.stack([v for s in splits for v in (1 - metrics[f"{s}_accuracy"], metrics[f"{s}_loss"])]))
    columns = torch.stack(records).T.tolist()
    return dict(zip([f"{s}_{m}" for s in splits for m in ("error", "loss")], columns))


def instability(errors: Sequence[float], alphas: Sequence[float], barrier: str) -> float:
    """`endpoints_mean` (Frankle et al. 2020): the largest error minus the mean of the ends' errors.
    `linear` (Entezari et al. 2022): the largest rise above the straight line between the ends' errors."""
    first, last = errors[0], errors[-1]
    if barrier == "endpoints_mean":
        return max(errors) - (first + last) / 2
    return max(e - first - a * (last - first) for e, a in zip(errors, alphas))  # exactly 0 when the ends agree


@dataclass
class Pair:
    """Two networks trained from their starts, and the error and loss along the line between them."""

    data_seeds: tuple[int, int]
    ends: list[dict[str, Tensor]]  # the second permuted into alignment with the first (stability.align)
    alphas: list[float]
    curve: dict[str, list[float]]  # "{split}_error", "{split}_loss" at each alpha
    bn_batches: int | None  # batches statistics were estimated on (bn: recompute, repair)
    train_seconds: float
    union_remaining: float = 1.0  # kept fraction of prunable weights along the path: the union of the ends' masks

    def instability(self, split: str, barrier: str) -> float:
        return instability(self.curve[f"{split}_error"], self.alphas, barrier)


def _synchronize(tensors: Mapping[str, Tensor]) -> None:
    device = next(iter(tensors.values())).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def align(model: nn.Module, ends: list[dict[str, Tensor]], masks: list[Mask], how: str, batches, count: int,
          seed: int) -> None:
    """Permute the second end (and its mask) into alignment with the first, in place: `how` is weights or
    activations (over training batches 0 .. count-1). `model` (of the ends' structure) is overwritten."""
    spec = describe(model)
    perms = (weight_matching(*ends, spec, seed) if how == "weights"
             else activation_matching(model, *ends, spec, batches, count))
    ends[1], masks[1] = permute(ends[1], spec, perms), permute_mask(masks[1], spec, perms)


def analyse(start: Start | Sequence[Start], data: Dataset, cfg: Config, begin: int,
            data_seeds: tuple[int, int]) -> Pair:
    """Train two copies of `start` (or one of each of two starts: stability.pair independent) from iteration
    `begin` with `data_seeds`, align them, then evaluate the line between them as `cfg.stability` says (alpha
    points, splits, BatchNorm statistics)."""
    st = cfg.stability
    starts = [start] * 2 if isinstance(start, Start) else list(start)
    tic = time.perf_counter()
    ends = train_twins(starts, data, cfg.train, data_seeds, begin)
    _synchronize(ends[0])
    seconds = time.perf_counter() - tic
    model, masks = copy.deepcopy(starts[0].model), [s.mask for s in starts]
    # The same batches for every alpha and mode, so the curve's steps are the path's, not the sample's.
    batches = data.train_batches(cfg.train.batch_size, derive_seed(cfg.data_seed, "stability", "bn"))
    epoch = data.steps_per_epoch(cfg.train.batch_size)
    if st.align != "none":
        align(model, ends, masks, st.align, batches, epoch, derive_seed(cfg.seed, "stability", "align"))
    correct, bn_batches = None, None
    if st.bn != "interpolate":
        bn_batches = st.bn_batches or epoch  # None: one epoch
        # RESET at every alpha, both ends included, so the barrier compares like with like.
        correct = Repair(model, ends, batches, bn_batches) if st.bn == "repair" else (
            lambda m, a: recompute_bn(m, batches, bn_batches) or [])
    points = alpha_grid(st.alpha_points)
    curve = path_metrics(model, ends, data, points, st.splits, cfg.runtime.eval_batch_size, correct,
                         cfg.train.precision)
    union = Mask({n: t | masks[1].tensors[n] for n, t in masks[0].tensors.items()})
    return Pair(tuple(data_seeds), ends, points, curve, bn_batches, seconds, union.weights_remaining())


# ---------------------------------------------------------------------------------------------
# an analysis directory


def analysis_name(cfg: Config) -> str:
    return f"{cfg.model.arch}-{cfg.data.dataset}-{stability_hash(cfg)}"


class StabilityRun(Run):
    """The stability analysis of `cfg` in directory `out`; `run()` resumes whatever is already there.

    The network is the dense one (`stability.level` 0) or IMP level L's subnetwork, at the rewind
    iteration k (`imp.rewind_iter`); the IMP run rewinds to k too. `dense_dir`: a shared dense run.
    `mask`: level L's mask when the caller has it (from a finished IMP run of the same config, which
    computed the same mask); else an IMP run in `out/imp` finds it. With `stability.pair: independent` the
    second network is another initialisation's (seed derived from `seed`), its dense and IMP runs in
    `out/independent`. `trainings` counts training runs started: the dense runs', the IMP runs', one per replicate.
    """

    def __init__(self, cfg: Config, out: str | Path, reporter: Reporter | None = None,
                 dense_dir: str | Path | None = None, mask: Mask | None = None):
        super().__init__(cfg, reporter)
        self.out = Path(out)
        self.layout = AnalysisLayout(self.out)
        _claim(self.layout.config, cfg, [f.name for f in fields(cfg)], analysis_name)
        dense = self.layout.dense.root if dense_dir is None else dense_dir
        self.dense = DenseRun(cfg, dense, reporter, self.data)
        self.rewind_iter = self.rewind_iteration(self.layout.config)
        level = cfg.stability.level
        self.given_mask = mask
        self.imp = ImpRun(cfg.with_updates({"imp.levels": level, "imp.controls": []}), self.layout.imp.root,
                          reporter, self.dense.out, self.data) if level and mask is None else None
        self.partner: tuple[DenseRun, ImpRun | None] | None = None
        if cfg.stability.pair == "independent":
            other = cfg.with_updates({"seed": derive_seed(cfg.seed, "stability", "independent")})
            dense = DenseRun(other, self.layout.partner.dense.root, reporter, self.data)
            self.partner = (dense, ImpRun(other.with_updates({"imp.levels": level, "imp.controls": []}),
                                          self.layout.partner.imp.root, reporter, dense.out, self.data) if level else None)
        if cfg.stability.align != "none":  # refused before anything trains; on the meta device: shapes only
            with torch.device("meta"):
                describe(MODELS.get(cfg.model.arch)(tuple(self.data.input_shape), self.data.num_classes,
                                                    width=cfg.model.width))

    def finished_replicates(self) -> list[int]:
        return self.layout.finished_replicates()

    def start(self) -> list[Start]:
        """Each network's state and optimiser at k under its level's mask, training whatever is missing first."""
        runs = [(self.dense, self.imp, self.given_mask), *([(*self.partner, None)] if self.partner else [])]
        starts, self.trainings = [], 0
        for dense, imp, mask in runs:
            dense.ensure([self.rewind_iter])
            if imp is not None:
                imp.run()
                mask = imp.mask(self.cfg.stability.level)
            self.trainings += dense.trainings + (imp.trainings if imp else 0)
            starts.append(dense.state_at(self.rewind_iter, mask or Mask({}), self.cfg.imp.rewind_optimizer == "restore"))
        return starts if len(starts) == 2 else starts * 2  # twin copies: the one start twice

    def run(self) -> pa.Table:
        """Analyse every uncommitted replicate; returns the complete summary table."""
        done = self.finished_replicates()
        todo = [r for r in range(self.cfg.stability.replicates) if r not in done]
        if todo:
            # Path rows of a replicate killed before its summary rows were written: it runs again.
            paths = read_table(self.layout.path, STABILITY_PATH_SCHEMA)
            if set(paths.column("replicate").to_pylist()) - set(done):
                write_atomic(paths.filter(pc.is_in(paths["replicate"], pa.array(done, pa.int64()))), self.layout.path)
            start = self.start()
            for replicate in todo:
                self._replicate(replicate, start)
        return read_table(self.layout.summary, STABILITY_SUMMARY_SCHEMA)

    def _replicate(self, replicate: int, starts: list[Start]) -> None:
        cfg, st = self.cfg, self.cfg.stability
        seeds = (derive_seed(cfg.data_seed, "stability", replicate, 1),
                 derive_seed(cfg.data_seed, "stability", replicate, 2))
        remaining = starts[0].mask.weights_remaining()
        self.reporter.training(st.level, TWINS, self.rewind_iter, self.end_iter, remaining)
        self.trainings += 1
        pair = analyse(starts, self.data, cfg, self.rewind_iter, seeds)
        now = datetime.now(timezone.utc)
        keys = {"run_name": analysis_name(cfg), "config_hash": config_hash(cfg),
                "stability_hash": stability_hash(cfg), "arch": cfg.model.arch, "dataset": cfg.data.dataset,
                "seed": cfg.seed, "level": st.level, "rewind_iter": self.rewind_iter,
                "weights_remaining": remaining, "replicate": replicate, "pair": st.pair, "align": st.align,
                "width": cfg.model.width}
        path_rows = [keys | {"alpha_index": i, "alpha": a, "split": s, "error": pair.curve[f"{s}_error"][i],
                                 "loss": pair.curve[f"{s}_loss"][i], "bn": st.bn, "finished_at": now}
                     for i, a in enumerate(pair.alphas) for s in st.splits]
        summary_rows = []
        for s in st.splits:
            errors, value = pair.curve[f"{s}_error"], pair.instability(s, st.barrier)
            summary_rows.append(keys | {
                "split": s, "data_seed_1": seeds[0], "data_seed_2": seeds[1], "error_1": errors[0],
                "error_2": errors[-1], "max_error": max(errors), "barrier_kind": st.barrier, "instability": value,
                "threshold": st.threshold, "stable": value < st.threshold, "alpha_points": st.alpha_points,
                **self.speed(), "bn": st.bn, "bn_batches": pair.bn_batches, "train_seconds": pair.train_seconds,
                "union_remaining": pair.union_remaining,
                "finished_at": now})
        append_rows(self.layout.path, STABILITY_PATH_SCHEMA, path_rows)
        append_rows(self.layout.summary, STABILITY_SUMMARY_SCHEMA, summary_rows)  # the commit point
        self.reporter.committed(replicate, {self.layout.path.name: path_rows, self.layout.summary.name: summary_rows})
