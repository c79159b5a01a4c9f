"""The `lth` command: a table of commands, each a small function in the module named beside it.

Commands import their modules when they run, so `lth results` and `lth sweep run FILE --dry-run` load
neither torch nor Ray.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

from orchestrator.cli.registries import REGISTRIES
from trainables.config import UserError


@dataclass(frozen=True)
class Arg:
    flags: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


def arg(*flags: str, **options: Any) -> Arg:
    return Arg(flags, options)


@dataclass(frozen=True)
class Command:
    path: tuple[str, ...]  # ("sweep", "run"): `lth sweep run`
    help: str
    function: str  # "module:function" in orchestrator.cli
    args: tuple[Arg, ...] = ()


CONFIG_ARGS = (
    arg("config", nargs="?", help="YAML config (sections model, data, train, prune, imp, stability, runtime)"),
    arg("--preset", help="start from a preset (`lth presets` lists them)"),
    arg("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a dotted key, e.g. --set train.lr=0.01 (repeatable)"),
    arg("--dry-run", action="store_true", help="print the resolved config and exit"))
RAY_ARGS = (
    arg("--address", help="a running Ray cluster ('auto' on its head node; default: $RAY_ADDRESS, set by "
                          "`ray job submit`, else a new local Ray)"),
    arg("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)"))

COMMANDS = (
    Command(("imp",), "run (or resume) one IMP run in this process, without Ray", "runs:imp", (
        *CONFIG_ARGS, arg("--out", help="run directory (default runs/<arch>-<dataset>-<config hash>)"))),
    Command(("stability",), "one stability (linear mode connectivity) analysis in this process: the network at "
                            "k = imp.rewind_iter, dense or stability.level L", "runs:stability", (
        *CONFIG_ARGS, arg("--out", help="analysis directory (default runs/<arch>-<dataset>-<stability hash>)"))),
    Command(("sweep", "run"), "run a sweep file (sweeps/*.yaml)", "sweeps:run", (
        arg("file"), *RAY_ARGS,
        arg("--dry-run", action="store_true", help="print the trials and their training iterations"),
        arg("--name", help="the sweep's folder name (default: the file's `name`)"),
        arg("--storage", help="a folder or URI for sweep folders (default: $LTH_STORAGE, else the file's `storage`)"),
        arg("--tracking-uri", help="an MLflow server (http://HOST:PORT) or store URI (default: $MLFLOW_TRACKING_URI, "
                                   "else the file's tracking.uri, else <storage>/mlflow.db)"),
        arg("--pack", choices=["auto", "off"], default="off",
            help="auto: probe a trial's peak GPU memory and pack as many trials per GPU as fit (sets "
                 "resources.gpu to a fraction); off: resources as in the file"))),
    Command(("sweep", "resume"), "finish an interrupted sweep", "sweeps:resume", (
        arg("dir", help="the sweep folder: <storage>/<name>"), *RAY_ARGS,
        arg("--tracking-uri", help="log to this MLflow server from now on (default: the sweep's store)"))),
    Command(("results",), "a sweep's results: mean ± std over seeds per setting and level", "views:results", (
        arg("dir", help="the sweep folder: <storage>/<name>"),
        arg("--format", choices=["table", "csv", "json"], default="table"),
        arg("--column", choices=["test_accuracy", "early_stop_accuracy", "start_accuracy"], default="test_accuracy",
            help="what is summarised: accuracy at the end, at the early-stop iteration, or before training"),
        arg("--compact", action="store_true", help="also write each table as one file (results.parquet), as a "
                                                   "finished sweep has it"))),
    Command(("report",), "figures (PNG), tables (CSV) and one HTML page from sweeps' Parquet tables; logged to "
                         "each sweep's MLflow run", "views:report", (
        arg("dirs", nargs="+", metavar="DIR", help="sweep folders (<storage>/<name>); several are drawn together, "
                                                   "the sweep becoming a setting"),
        arg("--out", help="output folder (default DIR/report; with several sweeps or a URI, reports/<names>)"),
        arg("--group-by", metavar="KEYS", help="comma-separated swept keys whose values make the lines (default: "
                                               "all, split into panels beyond 4 lines)"),
        arg("--panel-by", metavar="KEYS", help="comma-separated swept keys whose values make the panels"),
        arg("--variants", help="which of the ticket and its controls to draw, comma-separated (default: all the "
                               "sweep has)"),
        arg("--accuracy", choices=["test_accuracy", "early_stop_accuracy"], default="test_accuracy",
            help="test accuracy at the end of training or at the early-stop iteration"),
        arg("--tolerance", default="1std", help="matching: within N std of dense over seeds (1std, the LMC "
                                                "paper's definition) or N accuracy points (0.5pt)"),
        arg("--rule", choices=["lmc", "lth"], default="lmc",
            help="what the matching table calls matching: lmc (within the tolerance of dense, Frankle et al. "
                 "2020) or lth (no lower early-stop accuracy in no more iterations, Frankle & Carbin 2019)"),
        arg("--x", default="weights_remaining", help="the sparsity on the x axis: weights_remaining, "
                                                     "effective_weights_remaining (weights on an input-output "
                                                     "path) or flops_remaining"),
        arg("--no-mlflow", action="store_true", help="do not log the report to MLflow"))),
    Command(("ui",), "start the MLflow UI on a sweep's (or a storage folder's) MLflow store", "views:ui", (
        arg("dir", nargs="?", help="a sweep folder or storage folder (default $LTH_STORAGE, else runs/sweeps)"),
        arg("--port", type=int, default=5000, help="0: any free port"))),
    Command(("mlflow", "sync"), "(re)log a sweep to MLflow from its Parquet tables; never duplicates",
            "sweeps:mlflow_sync", (
                arg("dir", help="the sweep folder: <storage>/<name>"),
                arg("--tracking-uri", help="log there from now on (default: the sweep's store)"))),
    Command(("presets",), "list the presets and their sources", "registries:presets"),
    Command(("list",), "list a registry: " + ", ".join(REGISTRIES), "registries:listing",
            (arg("kind", choices=list(REGISTRIES)),)),
    Command(("data", "download"), "download a torchvision dataset (needs internet)", "registries:download", (
        arg("name"), arg("--root", help="data folder (default $LTH_DATA_ROOT or ~/.cache/lth-sweeps/data)"))),
)
GROUPS = {"sweep": "sweeps of runs on Ray Tune", "mlflow": "MLflow views of sweeps", "data": "datasets"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lth", description="Lottery-ticket (IMP) runs and sweeps.")
    groups = {(): parser.add_subparsers(dest="command", required=True)}
    for command in COMMANDS:
        for depth in range(1, len(command.path)):
            prefix = command.path[:depth]
            if prefix not in groups:
                group = groups[prefix[:-1]].add_parser(prefix[-1], help=GROUPS[prefix[-1]])
                groups[prefix] = group.add_subparsers(dest=f"{'_'.join(prefix)}_command", required=True)
        sub = groups[command.path[:-1]].add_parser(command.path[-1], help=command.help)
        for a in command.args:
            sub.add_argument(*a.flags, **a.options)
        sub.set_defaults(function=command.function)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module, name = args.function.split(":")
    function = getattr(importlib.import_module(f"orchestrator.cli.{module}"), name)
    try:
        return function(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
