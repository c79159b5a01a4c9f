"""One IMP run: dense training, pruning levels, rewinding, controls, checkpoints and resume.

A run directory holds:
    config.yaml                      the resolved config (identity: its content hash)
    results.parquet                  one row per level and variant (the commit record)
    history.parquet                  every evaluation of every training run
    checkpoints/rewind.pt            weights and optimiser state at the rewind iteration
    checkpoints/level_NNN/mask.pt    the level's mask, bit-packed (every level)
    checkpoints/level_NNN/weights.pt the level's trained ticket (dense and latest level by default)

A level is finished once its rows are in results.parquet; its checkpoint is written first, so
a run killed at any point resumes at its first unfinished level and reproduces exactly what
an uninterrupted run computes.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import yaml
from torch import nn

from trainables.config import Config, ConfigError, config_hash, dense_hash, dump_config, from_dict, \
    run_name, to_iterations
from trainables.data import Dataset, load_dataset
from trainables.masks import Mask, prunable_layers
from trainables.models import build_model
from trainables.pruning import prune, random_like
from trainables.registry import Registry
from trainables.results import HISTORY_SCHEMA, LEVELS_SCHEMA, append_rows, read_table, replacing
from trainables.train import Evaluation, Evaluator, make_optimizer, summarize, train


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


@dataclass
class Snapshot:
    """Saves weights and optimiser state when training passes the rewind iteration."""

    at: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    path: Path

    def iterations(self, start: int, end: int) -> list[int]:
        return [self.at] if start <= self.at <= end else []

    def __call__(self, it: int) -> None:
        _save({"iteration": it, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()},
              self.path)


class ImpRun:
    """One IMP run of `cfg` in directory `out`; `run()` resumes whatever is already there."""

    def __init__(self, cfg: Config, out: str | Path, reporter: Reporter | None = None):
        self.cfg = cfg
        self.out = Path(out)
        self.reporter = reporter or Reporter()
        self.device = resolve_device(cfg.runtime.device)
        self._claim_directory()
        self.data: Dataset = load_dataset(cfg.data).to(self.device)
        steps = self.data.steps_per_epoch(cfg.train.batch_size)
        self.rewind_iter = to_iterations(cfg.imp.rewind_iter, steps)
        self.end_iter = to_iterations(cfg.train.length, steps)
        self.eval_every = to_iterations(cfg.train.eval_every, steps)
        if self.rewind_iter >= self.end_iter:
            raise ConfigError(str(self.out / "config.yaml"), [
                f"imp.rewind_iter: {cfg.imp.rewind_iter} is not before the end of training "
                f"(train.length = {cfg.train.length} = {self.end_iter} iterations); choose an earlier rewind point"])
        probe = self.new_model(cfg.seed)
        try:
            self.layers = prunable_layers(probe, cfg.prune.exclude)
        except ValueError as exc:
            raise ConfigError(str(self.out / "config.yaml"), [str(exc)]) from None
        self._rewind: dict[str, Any] | None = None
        self.trainings = 0  # training runs started by this process (tests count them)

    # -- directory and checkpoints ---------------------------------------------------------

    def _claim_directory(self) -> None:
        path = self.out / "config.yaml"
        if path.exists():
            try:
                stored = from_dict(yaml.safe_load(path.read_text()), str(path))
            except (ConfigError, yaml.YAMLError) as exc:
                raise ConfigError(str(path), [f"the run directory's config cannot be read ({exc}); "
                                              "use a fresh output directory"]) from None
            if config_hash(stored) != config_hash(self.cfg):
                raise ConfigError(str(path), [
                    f"{self.out} holds a different run ({run_name(stored)}, this config is {run_name(self.cfg)}); "
                    "choose another output directory, or delete that one to discard it"])
        self.out.mkdir(parents=True, exist_ok=True)
        path.write_text(dump_config(self.cfg))

    def _level_dir(self, level: int) -> Path:
        return self.out / "checkpoints" / f"level_{level:03d}"

    def finished_levels(self) -> list[int]:
        return sorted(set(read_table(self.out / "results.parquet", LEVELS_SCHEMA).column("level").to_pylist()))

    def _load(self, path: Path) -> Any:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for truncated or foreign files
            detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            problem = "is missing" if not path.exists() else f"cannot be read ({type(exc).__name__}: {detail})"
            raise CheckpointError(
                f"checkpoint {path} {problem}. The {len(self.finished_levels())} finished level(s) in "
                f"{self.out / 'results.parquet'} are kept. Fix: restore the file from a copy, or start again "
                "with a fresh output directory") from None

    def _rewind_state(self) -> dict[str, Any]:
        if self._rewind is None:
            self._rewind = self._load(self.out / "checkpoints" / "rewind.pt")
        return self._rewind

    # -- starting points -------------------------------------------------------------------

    def new_model(self, seed: int) -> nn.Module:
        return build_model(self.cfg.model, self.data.input_shape, self.data.num_classes, seed).to(self.device)

    def rewound(self, mask: Mask) -> Start:
        """The dense run's weights and optimiser state at the rewind iteration, under `mask`."""
        state = self._rewind_state()
        model = self.new_model(self.cfg.seed)
        model.load_state_dict(state["model"])
        optimizer = make_optimizer(model, self.cfg.train)
        optimizer.load_state_dict(state["optimizer"])
        return Start(model, optimizer, mask)

    # -- running ---------------------------------------------------------------------------

    def run(self):
        """Train every unfinished level; returns the complete results table."""
        finished = self.finished_levels()
        if 0 not in finished:
            self._level(0)
        for level in range(1, self.cfg.imp.levels + 1):
            if level not in finished:
                self._level(level)
        return read_table(self.out / "results.parquet", LEVELS_SCHEMA)

    def _level(self, level: int) -> None:
        """Train one level's variants, then checkpoint it and commit its rows."""
        if level == 0:
            model = self.new_model(self.cfg.seed)
            optimizer = make_optimizer(model, self.cfg.train)
            main = Start(model, optimizer, Mask.dense(model, self.layers))
            snapshot = Snapshot(self.rewind_iter, model, optimizer, self.out / "checkpoints" / "rewind.pt")
            rows, history = self._train(level, "dense", main, [snapshot])
        else:
            main = self.rewound(self._prune(level))
            rows, history = self._train(level, "ticket", main)
            for name in self.cfg.imp.controls:  # built one at a time: only two models live at once
                row, curve = self._train(level, name, CONTROLS.get(name)(self, level, main.mask))
                rows += row
                history += curve
        level_dir = self._level_dir(level)
        _save(main.mask.state(), level_dir / "mask.pt")
        _save(main.model.state_dict(), level_dir / "weights.pt")
        append_rows(self.out / "history.parquet", HISTORY_SCHEMA, history)
        append_rows(self.out / "results.parquet", LEVELS_SCHEMA, rows)  # the commit point
        if self.cfg.imp.keep_weights == "last" and level > 1:
            (self._level_dir(level - 1) / "weights.pt").unlink(missing_ok=True)
        self.reporter.level_done(level, rows)

    def _prune(self, level: int) -> Mask:
        """Level `level`'s mask, from the previous level's mask and trained ticket."""
        previous = self._level_dir(level - 1)
        trained = self._load(previous / "weights.pt")
        before = Mask.from_state(self._load(previous / "mask.pt"))
        rewound = self._rewind_state()["model"]
        names = list(before.tensors)
        generator = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "prune", level))
        return prune(before, self.layers, {n: trained[f"{n}.weight"] for n in names},
                     {n: rewound[f"{n}.weight"] for n in names}, self.cfg.prune, level, generator)

    def _train(self, level: int, variant: str, start: Start, extra: Sequence = ()) -> tuple[list[dict], list[dict]]:
        """One training run from `start`; returns its results row and its evaluation history."""
        cfg = self.cfg
        begin = 0 if variant == "dense" else self.rewind_iter
        remaining = start.mask.weights_remaining()
        self.reporter.training(level, variant, begin, self.end_iter, remaining)
        self.trainings += 1
        evaluator = Evaluator(start.model, self.data, self.eval_every, cfg.runtime.eval_batch_size,
                              on_record=lambda e: self.reporter.evaluated(level, variant, e, self.end_iter))
        tic = time.perf_counter()
        train(start.model, start.optimizer, self.data, cfg.train, data_seed=cfg.data_seed, start=begin,
              keep_mask=start.mask.applier(start.model), callbacks=[evaluator, *extra])
        curve = evaluator.history()  # reads results back: the run's one host sync
        seconds = time.perf_counter() - tic
        row = {"run_name": run_name(cfg), "config_hash": config_hash(cfg), "dense_hash": dense_hash(cfg),
               "arch": cfg.model.arch, "dataset": cfg.data.dataset, "seed": cfg.seed, "level": level,
               "variant": variant, "weights_remaining": remaining, **summarize(curve), "start_iter": begin,
               "end_iter": self.end_iter, "train_seconds": seconds, "finished_at": datetime.now(timezone.utc)}
        return [row], [{"level": level, "variant": variant, **h} for h in curve]
