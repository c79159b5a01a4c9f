"""One IMP run: dense training, pruning levels, rewinding, controls, checkpoints and resume.

Dense training (level 0) is its own folder, a `DenseRun`, so that runs differing only in what
happens after it (pruning, rewind point, levels, controls) can share one; a standalone run keeps it
inside its own folder (`trainables.layout` has every file name). A level is finished once its rows
are in the run's results table; its checkpoint is written first, so a run killed at any point
resumes at its first unfinished level and reproduces exactly what an uninterrupted run computes. A
rewind point asked for after dense training finished is recreated by training from the nearest
earlier stored state, which (batches being a pure function of seed and iteration) gives the same
state the first pass would have saved.
"""

from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import yaml
from torch import nn

from trainables.catalog import CONTROLS, control_spec, control_variant
from trainables.config import (DENSE_SECTIONS, PROTOCOL_CHANGES, Config, ConfigError, TrainConfig, UserError,
                               as_made, config_hash, dense_hash, from_dict, run_name, to_dict, to_iterations)
from trainables.data import Dataset, load_dataset
from trainables.layout import DenseLayout, RunLayout
from trainables.masks import Mask, prunable_layers
from trainables.models import build_model
from trainables.pruning import prune
from trainables.retrain import Setting, Start, schedule, ticket_start
from trainables.results import DENSE, HISTORY_SCHEMA, LEVELS_SCHEMA, TICKET, append_rows, read_table, replacing, \
    table_of, write_atomic
from trainables.train import Evaluation, Evaluator, Schedule, evaluate, for_speed, make_optimizer, summarize, train


class CheckpointError(RuntimeError, UserError):
    """A checkpoint that is missing or unreadable; says which file and what to do."""


def derive_seed(seed: int, *tags: object) -> int:
    """An independent, reproducible seed for one use of randomness (a level's control, its ties)."""
    digest = hashlib.sha256(repr((seed, *tags)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("runtime", [f"runtime.device: {name!r} asked for, but this machine has no CUDA device; "
                                      "use runtime.device=auto or cpu"])
    return torch.device(name)


class Reporter:
    """Hooks through which a caller watches a run (a CLI table, a Ray Tune trial). All optional."""

    def training(self, level: int, variant: str, start: int, end: int, weights_remaining: float) -> None: ...

    def evaluated(self, level: int, variant: str, evaluation: Evaluation, end: int) -> None: ...

    def committed(self, unit: int, rows: dict[str, list[dict[str, Any]]]) -> None:
        """A run committed one unit (an IMP level, a stability replicate): the new rows, by table file name."""


def _save(obj: Any, path: Path) -> None:
    with replacing(path) as tmp:
        torch.save(obj, tmp)


def _load(path: Path, kept: str) -> Any:
    """A checkpoint, or a CheckpointError naming the file, what is kept (`kept`) and the fix."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        problem = "is missing" if not path.exists() else f"cannot be read ({type(exc).__name__}: {detail})"
        raise CheckpointError(f"checkpoint {path} {problem}. {kept} Fix: restore the file from a copy, or start "
                              "again with a fresh output directory") from None


def _claim(path: Path, cfg: Config, sections: Sequence[str], name: Callable[[Config], str]) -> None:
    """Record `cfg`'s `sections` as the directory's config, refusing a directory that holds another run, or
    the same run made under a protocol whose default has changed since (`PROTOCOL_CHANGES`)."""
    if path.exists():
        try:
            raw = yaml.safe_load(path.read_text())
            made, missing = as_made(raw)
            stored = from_dict(made, str(path))
        except (ConfigError, yaml.YAMLError, AttributeError) as exc:
            raise ConfigError(str(path), [f"the run directory's config cannot be read ({exc}); "
                                          "use a fresh output directory"]) from None
        if name(stored) != name(cfg) and missing and name(from_dict(raw)) == name(cfg):
            then = " ".join(f"--set {key}={PROTOCOL_CHANGES[key]}" for key in missing)
            raise ConfigError(str(path), [
                f"{path.parent} was made before {' and '.join(missing)} existed, under {then.replace('--set ', '')}, "
                "and is never continued under another protocol: resume it as it was made with "
                f"`{then}`, or use a new folder"])
        if name(stored) != name(cfg):
            raise ConfigError(str(path), [
                f"{path.parent} holds a different run ({name(stored)}, this config is {name(cfg)}); "
                "choose another output directory, or delete that one to discard it"])
        return  # never rewritten: runs sharing a dense directory may be reading it
    with replacing(path) as tmp:
        tmp.write_text(yaml.safe_dump({k: v for k, v in to_dict(cfg).items() if k in sections}, sort_keys=False))


@dataclass
class Snapshot:
    """Saves weights and optimiser state when training passes a rewind iteration."""

    at: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    path: Path

    def iterations(self, start: int, end: int) -> list[int]:
        return [self.at] if start <= self.at <= end else []

    def __call__(self, it: int) -> None:
        _save({"iteration": it, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()},
              self.path)


class Run:
    """The base of every run (dense, IMP, stability): the config, data on the device, training a `Start`."""

    def __init__(self, cfg: Config, reporter: Reporter | None, data: Dataset | None = None):
        self.cfg = cfg
        self.reporter = reporter or Reporter()
        self.device = resolve_device(cfg.runtime.device)
        self.data: Dataset = data if data is not None else load_dataset(cfg.data).to(self.device)
        self.end_iter = self.iterations(cfg.train.length)
        self.eval_every = self.iterations(cfg.train.eval_every)
        self.trainings = 0  # training runs started by this object (tests count them)
        self._architecture: nn.Module | None = None

    def iterations(self, duration: str) -> int:
        return to_iterations(duration, self.data.steps_per_epoch(self.cfg.train.batch_size))

    def rewind_iteration(self, config_path: Path) -> int:
        """`imp.rewind_iter` in iterations; a ConfigError naming `config_path` unless it is before the end."""
        point = self.iterations(self.cfg.imp.rewind_iter)
        if point >= self.end_iter:
            raise ConfigError(str(config_path), [
                f"imp.rewind_iter: {self.cfg.imp.rewind_iter} is not before the end of training (train.length = "
                f"{self.cfg.train.length} = {self.end_iter} iterations); choose an earlier rewind point"])
        return point

    def new_model(self, seed: int) -> nn.Module:
        cfg = self.cfg
        model = build_model(cfg.model, self.data.input_shape, self.data.num_classes, seed).to(self.device)
        return for_speed(model, cfg.train.precision, cfg.runtime.channels_last, cfg.runtime.compile)

    def columns(self) -> dict[str, Any]:
        """The run's name, hashes and hyperparameters, as result-table columns."""
        cfg, rates = self.cfg, self.cfg.prune.rate_for
        return {"run_name": run_name(cfg), "config_hash": config_hash(cfg), "dense_hash": dense_hash(cfg),
                "arch": cfg.model.arch, "dataset": cfg.data.dataset, "seed": cfg.seed, "data_seed": cfg.data_seed,
                "optimizer": cfg.train.optimizer, "lr": cfg.train.lr,
                "momentum": cfg.train.momentum if cfg.train.optimizer == "sgd" else None,
                "weight_decay": cfg.train.weight_decay, "batch_size": cfg.train.batch_size,
                "warmup_iters": self.iterations(cfg.train.warmup), "rewind_iter": self.iterations(cfg.imp.rewind_iter),
                "prune_strategy": cfg.prune.strategy, "prune_scope": cfg.prune.scope, "prune_rate": rates("linear"),
                "prune_conv_rate": rates("conv"), "prune_output_rate": rates("output"),
                "data_order": cfg.train.data_order, "rewind_optimizer": cfg.imp.rewind_optimizer,
                "method": cfg.prune.method, "retrain": cfg.imp.retrain, **self.speed()}

    def accounting(self, mask: Mask) -> dict[str, float]:
        """Nominal, effective and FLOPs remaining of `mask` (`trainables.sparsity`), on a CPU copy of the network."""
        from trainables.sparsity import accounting

        if self._architecture is None:
            self._architecture = build_model(self.cfg.model, self.data.input_shape, self.data.num_classes, 0)
        return accounting(self._architecture, mask, self.data.input_shape)

    def speed(self) -> dict[str, Any]:
        """How this run executes, as result-table columns (`results.SPEED_COLUMNS`)."""
        return {"precision": self.cfg.train.precision, "channels_last": self.cfg.runtime.channels_last,
                "compiled": self.cfg.runtime.compile, "device": self.device.type}

    def order_seed(self, level: int, variant: str) -> int:
        """The seed of a training's data order and augmentation: the data seed's for the dense run (and for
        every training under `train.data_order: replay`), else its own, drawn from (data seed, level, variant)."""
        if self.cfg.train.data_order == "replay" or variant == DENSE:
            return self.cfg.data_seed
        return derive_seed(self.cfg.data_seed, "order", level, variant)

    def train(self, level: int, variant: str, start: Start, begin: int, extra: Sequence = (),
              recipe: TrainConfig | None = None) -> tuple[list[dict], list[dict]]:
        """One training run from `start` at iteration `begin` on `recipe`'s schedule (by default `train`'s);
        returns its results row and evaluation history."""
        cfg, order, recipe = self.cfg, self.order_seed(level, variant), recipe or self.cfg.train
        schedule = Schedule.of(recipe, self.data.steps_per_epoch(recipe.batch_size))
        remaining = start.mask.weights_remaining()
        self.reporter.training(level, variant, begin, self.end_iter, remaining)
        self.trainings += 1
        evaluator = Evaluator(start.model, self.data, self.eval_every, cfg.runtime.eval_batch_size,
                              precision=cfg.train.precision, lr=lambda it: recipe.lr * schedule.lr_factor(it),
                              on_record=lambda e: self.reporter.evaluated(level, variant, e, self.end_iter))
        started, tic = datetime.now(timezone.utc), time.perf_counter()
        train(start.model, start.optimizer, self.data, recipe, data_seed=order, start=begin,
              keep_mask=start.mask.applier(start.model), callbacks=[evaluator, *extra])
        curve = evaluator.history()  # reads results back: the run's one host sync
        seconds = time.perf_counter() - tic
        row = {**self.columns(), "order_seed": order, "level": level, "variant": variant, "weights_remaining": remaining,
               **self.accounting(start.mask), **summarize(curve), "start_accuracy": curve[0]["test_accuracy"],
               "start_iter": begin, "end_iter": self.end_iter, "train_seconds": seconds, "started_at": started,
               "finished_at": datetime.now(timezone.utc)}
        return [row], [{"level": level, "variant": variant, **h} for h in curve]


def peak_memory(cfg: Config, iterations: int = 20) -> int | None:
    """Bytes of GPU memory one run of `cfg` holds at its peak (data on the device, model, optimiser, a
    training step and an evaluation), measured over `iterations` steps; None off CUDA."""
    run = Run(cfg, None)
    if run.device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats(run.device)
    model = run.new_model(cfg.seed)
    train(model, make_optimizer(model, cfg.train), run.data, cfg.train, data_seed=cfg.data_seed, stop=iterations)
    evaluate(model, run.data, ("val", "test"), cfg.runtime.eval_batch_size, cfg.train.precision)
    torch.cuda.synchronize(run.device)
    return torch.cuda.max_memory_reserved(run.device)


class DenseRun(Run):
    """Level 0 of IMP in directory `out`: the dense network trained once, with its state kept at
    every rewind point asked for. `ensure(points)` does whatever is missing, nothing more."""

    def __init__(self, cfg: Config, out: str | Path, reporter: Reporter | None = None, data: Dataset | None = None):
        super().__init__(cfg, reporter, data)
        self.out = Path(out)
        self.layout = DenseLayout(self.out)
        _claim(self.layout.config, cfg, DENSE_SECTIONS, lambda c: f"dense run {dense_hash(c)}")
        self._cached: dict[int, Any] = {}

    def ensure(self, points: Sequence[int]) -> None:
        points = sorted({0, *points})  # the initial state lets any later point be recreated
        if not self.layout.trained():
            self._train(points)
        for point in sorted(set(points) - set(self.layout.stored_points())):
            self._recreate(point)

    def _train(self, points: list[int]) -> None:
        model = self.new_model(self.cfg.seed)
        optimizer = make_optimizer(model, self.cfg.train)
        snapshots = [Snapshot(k, model, optimizer, self.layout.rewind(k)) for k in points]
        rows, history = self.train(0, DENSE, Start(model, optimizer, Mask({})), 0, snapshots)
        _save(model.state_dict(), self.layout.weights)
        write_atomic(table_of(history, HISTORY_SCHEMA), self.layout.history)
        write_atomic(table_of(rows, LEVELS_SCHEMA), self.layout.results)  # the commit point

    def _recreate(self, point: int) -> None:
        base = max(k for k in self.layout.stored_points() if k <= point)
        start = self.state_at(base)
        train(start.model, start.optimizer, self.data, self.cfg.train, data_seed=self.cfg.data_seed, start=base,
              stop=point, callbacks=[Snapshot(point, start.model, start.optimizer, self.layout.rewind(point))])

    def load(self, path: Path) -> Any:
        return _load(path, f"The dense run in {self.out} is otherwise kept.")

    def state(self, point: int) -> dict[str, Any]:
        if point not in self._cached:  # a run rewinds every level to the same points: read each once
            self._cached[point] = self.load(self.layout.rewind(point))
        return self._cached[point]

    def state_at(self, point: int, mask: Mask | None = None, restore_optimizer: bool = True) -> Start:
        """The dense network as it was at iteration `point`, with the optimiser's state then, or a fresh one."""
        state = self.state(point)
        model = self.new_model(self.cfg.seed)
        model.load_state_dict(state["model"])
        optimizer = make_optimizer(model, self.cfg.train)
        if restore_optimizer:
            # load_state_dict keeps same-device tensors by reference: training would then update the
            # cached state in place and every later rewind would start from the wrong momentum.
            optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        return Start(model, optimizer, mask or Mask({}))


class ImpRun(Run):
    """One IMP run of `cfg` in directory `out`; `run()` resumes whatever is already there.

    `dense_dir` is the dense run to build on (a shared one, in a sweep); by default `out/dense`.
    `data`: the dataset already on the device, when the caller holds it (a stability analysis).
    """

    def __init__(self, cfg: Config, out: str | Path, reporter: Reporter | None = None,
                 dense_dir: str | Path | None = None, data: Dataset | None = None):
        super().__init__(cfg, reporter, data)
        self.out = Path(out)
        self.layout = RunLayout(self.out)
        _claim(self.layout.config, cfg, [f.name for f in fields(cfg)], run_name)
        # The same device-resident data: a second copy on a GPU would cost its memory twice.
        self.dense = DenseRun(cfg, self.layout.dense.root if dense_dir is None else dense_dir, reporter, self.data)
        self.rewind_iter = self.rewind_iteration(self.layout.config)
        try:
            self.layers = prunable_layers(self.new_model(cfg.seed), cfg.prune.exclude)
        except ValueError as exc:
            raise ConfigError(str(self.layout.config), [str(exc)]) from None

    # -- checkpoints -----------------------------------------------------------------------

    def finished_levels(self) -> list[int]:
        return self.layout.finished_levels()

    def _load(self, path: Path) -> Any:
        return _load(path, f"The {len(self.finished_levels())} finished level(s) in {self.layout.results} are kept.")

    def mask(self, level: int) -> Mask:
        """The mask of a finished level."""
        return Mask.from_state(self._load(self.layout.mask(level)))

    def rewound(self, mask: Mask) -> Start:
        """The dense run's weights at the rewind iteration under `mask`, with its optimiser state then
        (`imp.rewind_optimizer: restore`) or a fresh optimiser (`reset`); the schedule resumes at k either way."""
        return self.dense.state_at(self.rewind_iter, mask, self.cfg.imp.rewind_optimizer == "restore")

    # -- running ---------------------------------------------------------------------------

    def run(self):
        """Train every unfinished level; returns the complete results table."""
        finished = self.finished_levels()
        if 0 not in finished:
            self._dense_level()
        for level in range(1, self.cfg.imp.levels + 1):
            if level not in finished:
                self._level(level)
        return read_table(self.layout.results, LEVELS_SCHEMA)

    def _dense_level(self) -> None:
        """Level 0: this run's copy of the (possibly shared) dense run's record."""
        self.dense.ensure([self.rewind_iter])
        self.trainings += self.dense.trainings
        # The dense row may come from a run with other pruning settings; its start is the dense network at k.
        columns = self.columns() | {"start_accuracy": float(evaluate(
            self.dense.state_at(self.rewind_iter).model, self.data, ("test",), self.cfg.runtime.eval_batch_size,
            self.cfg.train.precision)["test_accuracy"])}
        rows = [row | columns for row in read_table(self.dense.layout.results, LEVELS_SCHEMA).to_pylist()]
        history = read_table(self.dense.layout.history, HISTORY_SCHEMA).to_pylist()
        _save(Mask.dense(self.new_model(self.cfg.seed), self.layers).state(), self.layout.mask(0))
        self._commit(0, rows, history)

    def _level(self, level: int) -> None:
        """Train one level's variants, then checkpoint it and commit its rows."""
        main = ticket_start(self, level, self._prune(level))
        begin, recipe = schedule(self, "rewind")
        rows, history = self.train(level, TICKET, main, begin, recipe=recipe)
        for text in self.cfg.imp.controls:  # built one at a time: only two models live at once
            (name, params), variant = control_spec(text), control_variant(text)
            where = params.get("start", "rewind")
            begin, recipe = schedule(self, where)
            row, curve = self.train(level, variant, CONTROLS.get(name)(Setting(self, level, main, where, variant)),
                                    begin, recipe=recipe)
            rows += row
            history += curve
        _save(main.mask.state(), self.layout.mask(level))
        _save(main.model.state_dict(), self.layout.weights(level))
        self._commit(level, rows, history)

    def _commit(self, level: int, rows: list[dict], history: list[dict]) -> None:
        append_rows(self.layout.history, HISTORY_SCHEMA, history)
        append_rows(self.layout.results, LEVELS_SCHEMA, rows)  # the commit point
        if self.cfg.imp.keep_weights == "last" and level > 1:  # before reporting: checkpoints copy the directory
            self.layout.weights(level - 1).unlink(missing_ok=True)
        self.reporter.committed(level, {self.layout.results.name: rows})

    def trained(self, level: int) -> dict[str, torch.Tensor]:
        if level == 0:
            return self.dense.load(self.dense.layout.weights)
        return self._load(self.layout.weights(level))

    def _prune(self, level: int) -> Mask:
        """Level `level`'s mask, from the previous level's mask and trained ticket."""
        trained = self.trained(level - 1)
        before = self.mask(level - 1)
        rewound = self.dense.state(self.rewind_iter)["model"]
        names = list(before.tensors)
        generator = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "prune", level))
        return prune(before, self.layers, {n: trained[f"{n}.weight"] for n in names},
                     {n: rewound[f"{n}.weight"] for n in names}, self.cfg.prune, level, generator)
