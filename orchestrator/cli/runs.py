"""`lth imp` and `lth stability`: one run in this process, without Ray, printed as it commits."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from orchestrator.workflows import Rows, Workflow, workflow
from orchestrator.workflows.imp import header
from trainables.catalog import dump_config, load_config
from trainables.config import Config, run_name


class TableReporter:
    """Prints the workflow's lines for each commit; a live progress line on a terminal."""

    def __init__(self, flow: Workflow, stream=None, progress=None):
        self.flow = flow
        self.stream = stream or sys.stdout  # the current one: tests capture it
        self.progress = progress if progress is not None else sys.stderr.isatty()
        self.header = False

    def training(self, level: int, variant: str, start: int, end: int, weights_remaining: float) -> None:
        if not self.header:
            print(header(), file=self.stream, flush=True)
            self.header = True
        self._current = f"level {level} {variant} ({weights_remaining:.1%} remaining)"

    def evaluated(self, level: int, variant: str, evaluation, end: int) -> None:
        if self.progress:
            acc = float(evaluation.metrics["test_accuracy"])  # a logging point: reading back is fine here
            print(f"\r  {self._current}: iteration {evaluation.iteration}/{end}, test acc {acc:.2%}   ",
                  end="", file=sys.stderr, flush=True)

    def committed(self, unit: int, rows: Rows) -> None:
        if self.progress:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
        for line in self.flow.lines(rows):
            print(line, file=self.stream, flush=True)


def _start(args: argparse.Namespace, kind: str, label: str, name: Any) -> tuple[Config, Any, Path] | None:
    """The config, the run and its folder (default runs/<name>); None after printing the config (--dry-run)."""
    cfg = load_config(args.config, args.preset, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / name(cfg)
    if args.dry_run:
        print(dump_config(cfg), end="")
        print(f"# {label}: {name(cfg)}\n# {'output:':<{len(label) + 1}} {out}")
        return None
    flow = workflow(kind)
    return cfg, flow.make_run(cfg, out, TableReporter(flow), None, None), out


def _resumable(run, out: Path, what: str):
    """`run.run()`, or None after saying how to resume if the user interrupts it."""
    try:
        return run.run()
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished {what} are kept in {out}; run the same command again to resume",
              file=sys.stderr)
        return None


def imp(args: argparse.Namespace) -> int:
    # IMP's workflow or, under another prune.method, the same run with masks chosen at initialisation
    if (started := _start(args, "pruning_at_init", "run name", run_name)) is None:
        return 0
    cfg, run, out = started
    per_run = run.end_iter - run.rewind_iter
    total = run.end_iter + cfg.imp.levels * (1 + len(cfg.imp.controls)) * per_run
    print(f"IMP run {run_name(cfg)} -> {out}\n{cfg.imp.levels + 1} levels, {total:,} training iterations "
          f"on {run.device}; finished levels: {run.finished_levels() or 'none'}")
    if (table := _resumable(run, out, "levels")) is None:
        return 130
    print(f"done: {table.num_rows} rows in {run.layout.results}")
    return 0


def stability(args: argparse.Namespace) -> int:
    from trainables.stability import analysis_name

    if (started := _start(args, "stability", "analysis name", analysis_name)) is None:
        return 0
    cfg, run, out = started
    st = cfg.stability
    network = "the dense network" if st.level == 0 else f"IMP level {st.level}'s subnetwork"
    print(f"stability analysis {analysis_name(cfg)} -> {out}\n{network} at k = {run.rewind_iter}: "
          f"{st.replicates} pair(s) of copies trained to {run.end_iter} on {run.device}, {st.alpha_points} alphas; "
          f"finished pairs: {run.finished_replicates() or 'none'}")
    if (summary := _resumable(run, out, "pairs")) is None:
        return 130
    table = summary.to_pylist()
    for split in st.splits:
        values = [r["instability"] for r in table if r["split"] == split]
        mean = sum(values) / len(values)
        verdict = "stable" if mean < st.threshold else "unstable"
        print(f"{split}: instability {mean:.2%} (mean of {len(values)}), {verdict}")
    print(f"done: {run.layout.summary}, {run.layout.path}")
    return 0
