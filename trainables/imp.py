"""One IMP run: dense training, pruning levels, rewinding, controls, checkpoints and resume.

Dense training (level 0) is its own directory, a `DenseRun`, so that runs differing only in
what happens after it (pruning, rewind point, levels, controls) can share one; a standalone
run keeps it in `dense/` inside its run directory. A dense directory holds:
    config.yaml                      the sections that decide dense training (its `dense_hash`)
    results.parquet, history.parquet the dense row and learning curve (the commit record)
    weights.pt                       the trained dense network (what level 1 prunes)
    rewind/it_NNNNNNN.pt             weights and optimiser state at each rewind point asked for
A run directory holds:
    config.yaml                      the resolved config (identity: its content hash)
    results.parquet                  one row per level and variant (the commit record)
    history.parquet                  every evaluation of every training run
    checkpoints/level_NNN/mask.pt    the level's mask, bit-packed (every level)
    checkpoints/level_NNN/weights.pt the level's trained ticket (latest level by default)

A level is finished once its rows are in results.parquet; its checkpoint is written first, so
a run killed at any point resumes at its first unfinished level and reproduces exactly what
an uninterrupted run computes. A rewind point asked for after dense training finished is
recreated by training from the nearest earlier stored state, which (batches being a pure
function of seed and iteration) gives the same state the first pass would have saved.
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

from trainables.config import DENSE_SECTIONS, Config, ConfigError, config_hash, dense_hash, from_dict, \
    run_name, to_dict, to_iterations
from trainables.data import Dataset, load_dataset
from trainables.masks import Mask, prunable_layers
from trainables.models import build_model
from trainables.pruning import prune, random_like
from trainables.registry import Registry
from trainables.results import HISTORY_SCHEMA, LEVELS_SCHEMA, append_rows, read_table, replacing, table_of, \
    write_atomic
from trainables.train import Evaluation, Evaluator, evaluate, for_speed, make_optimizer, summarize, train


class CheckpointError(RuntimeError):
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

    def level_done(self, level: int, rows: list[dict[str, Any]]) -> None: ...

    def analysed(self, replicate: int, summary_rows: list[dict[str, Any]], path_rows: list[dict[str, Any]]) -> None:
        """A stability analysis committed one replicate (`trainables.stability`)."""


@dataclass
class Start:
    """What one training run of a level begins from."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    mask: Mask


# control(run, level, ticket_mask) -> the control's starting point at the same level.
Control = Callable[["ImpRun", int, Mask], Start]
CONTROLS: Registry[Control] = Registry("control", "lth list controls")


@CONTROLS.register("reinit", "same mask, fresh random weights and optimiser, trained from the rewind iteration "
                             "(Frankle & Carbin 2019)")
def _reinit(run: ImpRun, level: int, mask: Mask) -> Start:
    model = run.new_model(derive_seed(run.cfg.seed, "reinit", level))
    return Start(model, make_optimizer(model, run.cfg.train), mask)


@CONTROLS.register("random_mask", "random positions with the ticket's per-layer sparsity, rewound weights "
                                  "(Frankle & Carbin 2019)")
def _random_mask(run: ImpRun, level: int, mask: Mask) -> Start:
    generator = torch.Generator().manual_seed(derive_seed(run.cfg.seed, "random_mask", level))
    return run.rewound(random_like(mask, generator))


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
    """Record `cfg`'s `sections` as the directory's config, refusing a directory that holds another run."""
    if path.exists():
        try:
            stored = from_dict(yaml.safe_load(path.read_text()), str(path))
        except (ConfigError, yaml.YAMLError) as exc:
            raise ConfigError(str(path), [f"the run directory's config cannot be read ({exc}); "
                                          "use a fresh output directory"]) from None
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


class Trainer:
    """What a dense run and an IMP run share: the config, data on the device, and training a `Start`."""

    def __init__(self, cfg: Config, reporter: Reporter | None, data: Dataset | None = None):
        self.cfg = cfg
        self.reporter = reporter or Reporter()
        self.device = resolve_device(cfg.runtime.device)
        self.data: Dataset = data if data is not None else load_dataset(cfg.data).to(self.device)
        self.end_iter = self.iterations(cfg.train.length)
        self.eval_every = self.iterations(cfg.train.eval_every)
        self.trainings = 0  # training runs started by this object (tests count them)

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

    def describe(self) -> dict[str, Any]:
        """The run's identity and hyperparameters, as result-table columns."""
        cfg, rates = self.cfg, self.cfg.prune.rate_for
        return {"run_name": run_name(cfg), "config_hash": config_hash(cfg), "dense_hash": dense_hash(cfg),
                "arch": cfg.model.arch, "dataset": cfg.data.dataset, "seed": cfg.seed, "data_seed": cfg.data_seed,
                "optimizer": cfg.train.optimizer, "lr": cfg.train.lr,
                "momentum": cfg.train.momentum if cfg.train.optimizer == "sgd" else None,
                "weight_decay": cfg.train.weight_decay, "batch_size": cfg.train.batch_size,
                "warmup_iters": self.iterations(cfg.train.warmup), "rewind_iter": self.iterations(cfg.imp.rewind_iter),
                "prune_strategy": cfg.prune.strategy, "prune_scope": cfg.prune.scope, "prune_rate": rates("linear"),
                "prune_conv_rate": rates("conv"), "prune_output_rate": rates("output"), **self.speed()}

    def speed(self) -> dict[str, Any]:
        """How this run executes, as result-table columns (`results.SPEED_COLUMNS`)."""
        return {"precision": self.cfg.train.precision, "channels_last": self.cfg.runtime.channels_last,
                "compiled": self.cfg.runtime.compile, "device": self.device.type}

    def train(self, level: int, variant: str, start: Start, begin: int,
              extra: Sequence = ()) -> tuple[list[dict], list[dict]]:
        """One training run from `start` at iteration `begin`; returns its results row and evaluation history."""
        cfg = self.cfg
        remaining = start.mask.weights_remaining()
        self.reporter.training(level, variant, begin, self.end_iter, remaining)
        self.trainings += 1
        evaluator = Evaluator(start.model, self.data, self.eval_every, cfg.runtime.eval_batch_size,
                              precision=cfg.train.precision,
                              on_record=lambda e: self.reporter.evaluated(level, variant, e, self.end_iter))
        started, tic = datetime.now(timezone.utc), time.perf_counter()
        train(start.model, start.optimizer, self.data, cfg.train, data_seed=cfg.data_seed, start=begin,
              keep_mask=start.mask.applier(start.model), callbacks=[evaluator, *extra])
        curve = evaluator.history()  # reads results back: the run's one host sync
        seconds = time.perf_counter() - tic
        row = {**self.describe(), "level": level, "variant": variant, "weights_remaining": remaining,
               **summarize(curve), "start_iter": begin, "end_iter": self.end_iter, "train_seconds": seconds,
               "started_at": started, "finished_at": datetime.now(timezone.utc)}
        return [row], [{"level": level, "variant": variant, **h} for h in curve]


def peak_memory(cfg: Config, iterations: int = 20) -> int | None:
    """Bytes of GPU memory one run of `cfg` holds at its peak (data on the device, model, optimiser, a
    training step and an evaluation), measured over `iterations` steps; None off CUDA."""
    trainer = Trainer(cfg, None)
    if trainer.device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats(trainer.device)
    model = trainer.new_model(cfg.seed)
    train(model, make_optimizer(model, cfg.train), trainer.data, cfg.train, data_seed=cfg.data_seed, stop=iterations)
    evaluate(model, trainer.data, ("val", "test"), cfg.runtime.eval_batch_size, cfg.train.precision)
    torch.cuda.synchronize(trainer.device)
    return torch.cuda.max_memory_reserved(trainer.device)


class DenseRun(Trainer):
    """Level 0 of IMP in directory `out`: the dense network trained once, with its state kept at
    every rewind point asked for. `ensure(points)` does whatever is missing, nothing more."""

    def __init__(self, cfg: Config, out: str | Path, reporter: Reporter | None = None, data: Dataset | None = None):
        super().__init__(cfg, reporter, data)
        self.out = Path(out)
        _claim(self.out / "config.yaml", cfg, DENSE_SECTIONS, lambda c: f"dense run {dense_hash(c)}")
        self._cached: tuple[int | None, Any] = (None, None)

    def snapshot_path(self, iteration: int) -> Path:
        return self.out / "rewind" / f"it_{iteration:07d}.pt"

    def stored(self) -> list[int]:
        return sorted(int(p.stem[3:]) for p in (self.out / "rewind").glob("it_*.pt"))

    @property
    def trained(self) -> bool:
        return (self.out / "results.parquet").exists()

    def ensure(self, points: Sequence[int]) -> None:
        points = sorted({0, *points})  # the initial state lets any later point be recreated
        if not self.trained:
            self._train(points)
        for point in sorted(set(points) - set(self.stored())):
            self._recreate(point)

    def _train(self, points: list[int]) -> None:
        model = self.new_model(self.cfg.seed)
        optimizer = make_optimizer(model, self.cfg.train)
        snapshots = [Snapshot(k, model, optimizer, self.snapshot_path(k)) for k in points]
        rows, history = self.train(0, "dense", Start(model, optimizer, Mask({})), 0, snapshots)
        _save(model.state_dict(), self.out / "weights.pt")
        write_atomic(table_of(history, HISTORY_SCHEMA), self.out / "history.parquet")
        write_atomic(table_of(rows, LEVELS_SCHEMA), self.out / "results.parquet")  # the commit point

    def _recreate(self, point: int) -> None:
        base = max(k for k in self.stored() if k <= point)
        start = self.state_at(base)
        train(start.model, start.optimizer, self.data, self.cfg.train, data_seed=self.cfg.data_seed, start=base,
              stop=point, callbacks=[Snapshot(point, start.model, start.optimizer, self.snapshot_path(point))])

    def load(self, name: str | Path) -> Any:
        return _load(self.out / name, f"The dense run in {self.out} is otherwise kept.")

    def state(self, point: int) -> dict[str, Any]:
        if self._cached[0] != point:  # a run rewinds every level to the same point: read it once
            self._cached = (point, self.load(self.snapshot_path(point).relative_to(self.out)))
        return self._cached[1]

    def state_at(self, point: int, mask: Mask | None = None) -> Start:
        """The dense network and its optimiser as they were at iteration `point`."""
        state = self.state(point)
        model = self.new_model(self.cfg.seed)
        model.load_state_dict(state["model"])
        optimizer = make_optimizer(model, self.cfg.train)
        # load_state_dict keeps same-device tensors by reference: training would then update the
        # cached state in place and every later rewind would start from the wrong momentum.
        optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        return Start(model, optimizer, mask or Mask({}))


class ImpRun(Trainer):
    """One IMP run of `cfg` in directory `out`; `run()` resumes whatever is already there.

    `dense_dir` is the dense run to build on (a shared one, in a sweep); by default `out/dense`.
    `data`: the dataset already on the device, when the caller holds it (a stability analysis).
    """

    def __init__(self, cfg: Config, out: str | Path, reporter: Reporter | None = None,
                 dense_dir: str | Path | None = None, data: Dataset | None = None):
        super().__init__(cfg, reporter, data)
        self.out = Path(out)
        _claim(self.out / "config.yaml", cfg, [f.name for f in fields(cfg)], run_name)
        # The same device-resident data: a second copy on a GPU would cost its memory twice.
        self.dense = DenseRun(cfg, self.out / "dense" if dense_dir is None else dense_dir, reporter, self.data)
        self.rewind_iter = self.rewind_iteration(self.out / "config.yaml")
        try:
            self.layers = prunable_layers(self.new_model(cfg.seed), cfg.prune.exclude)
        except ValueError as exc:
            raise ConfigError(str(self.out / "config.yaml"), [str(exc)]) from None

    # -- checkpoints -----------------------------------------------------------------------

    def _level_dir(self, level: int) -> Path:
        return self.out / "checkpoints" / f"level_{level:03d}"

    def finished_levels(self) -> list[int]:
        return sorted(set(read_table(self.out / "results.parquet", LEVELS_SCHEMA).column("level").to_pylist()))

    def _load(self, path: Path) -> Any:
        return _load(path, f"The {len(self.finished_levels())} finished level(s) in "
                           f"{self.out / 'results.parquet'} are kept.")

    def mask(self, level: int) -> Mask:
        """The mask of a finished level."""
        return Mask.from_state(self._load(self._level_dir(level) / "mask.pt"))

    def rewound(self, mask: Mask) -> Start:
        """The dense run's weights and optimiser state at the rewind iteration, under `mask`."""
        return self.dense.state_at(self.rewind_iter, mask)

    # -- running ---------------------------------------------------------------------------

    def run(self):
        """Train every unfinished level; returns the complete results table."""
        finished = self.finished_levels()
        if 0 not in finished:
            self._dense_level()
        for level in range(1, self.cfg.imp.levels + 1):
            if level not in finished:
                self._level(level)
        return read_table(self.out / "results.parquet", LEVELS_SCHEMA)

    def _dense_level(self) -> None:
        """Level 0: this run's copy of the (possibly shared) dense run's record."""
        self.dense.ensure([self.rewind_iter])
        self.trainings += self.dense.trainings
        identity = self.describe()  # the dense row may come from a run with other pruning settings
        rows = [row | identity for row in read_table(self.dense.out / "results.parquet", LEVELS_SCHEMA).to_pylist()]
        history = read_table(self.dense.out / "history.parquet", HISTORY_SCHEMA).to_pylist()
        _save(Mask.dense(self.new_model(self.cfg.seed), self.layers).state(), self._level_dir(0) / "mask.pt")
        self._commit(0, rows, history)

    def _level(self, level: int) -> None:
        """Train one level's variants, then checkpoint it and commit its rows."""
        main = self.rewound(self._prune(level))
        rows, history = self.train(level, "ticket", main, self.rewind_iter)
        for name in self.cfg.imp.controls:  # built one at a time: only two models live at once
            row, curve = self.train(level, name, CONTROLS.get(name)(self, level, main.mask), self.rewind_iter)
            rows += row
            history += curve
        _save(main.mask.state(), self._level_dir(level) / "mask.pt")
        _save(main.model.state_dict(), self._level_dir(level) / "weights.pt")
        self._commit(level, rows, history)

    def _commit(self, level: int, rows: list[dict], history: list[dict]) -> None:
        append_rows(self.out / "history.parquet", HISTORY_SCHEMA, history)
        append_rows(self.out / "results.parquet", LEVELS_SCHEMA, rows)  # the commit point
        if self.cfg.imp.keep_weights == "last" and level > 1:  # before reporting: checkpoints copy the directory
            (self._level_dir(level - 1) / "weights.pt").unlink(missing_ok=True)
        self.reporter.level_done(level, rows)

    def _trained(self, level: int) -> dict[str, torch.Tensor]:
        if level == 0:
            return self.dense.load("weights.pt")
        return self._load(self._level_dir(level) / "weights.pt")

    def _prune(self, level: int) -> Mask:
        """Level `level`'s mask, from the previous level's mask and trained ticket."""
        trained = self._trained(level - 1)
        before = self.mask(level - 1)
        rewound = self.dense.state(self.rewind_iter)["model"]
        names = list(before.tensors)
        generator = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "prune", level))
        return prune(before, self.layers, {n: trained[f"{n}.weight"] for n in names},
                     {n: rewound[f"{n}.weight"] for n in names}, self.cfg.prune, level, generator)
