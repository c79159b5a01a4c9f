"""The `lth` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from trainables.config import Config, ConfigError, dump_config, load_config, run_name

_TABLE = [("level", 5, "{:>5}"), ("variant", 11, "{:<11}"), ("remaining", 9, "{:>8.1%} "),
          ("test acc", 8, "{:>8.2%}"), ("test loss", 9, "{:>9.4f}"), ("es iter", 7, "{:>7}"),
          ("es acc", 7, "{:>7.2%}"), ("seconds", 7, "{:>7.1f}")]
_KEYS = ["level", "variant", "weights_remaining", "test_accuracy", "test_loss", "early_stop_iter",
         "early_stop_accuracy", "train_seconds"]


def _table_line(values: Sequence[Any]) -> str:
    return "  ".join(fmt.format(v) for (_, _, fmt), v in zip(_TABLE, values))


class TableReporter:
    """Prints a row per level and variant as it finishes; a live progress line on a terminal."""

    def __init__(self, stream=None, progress=None):
        self.stream = stream or sys.stdout  # the current one: tests capture it
        self.progress = progress if progress is not None else sys.stderr.isatty()
        self.header = False

    def training(self, level: int, variant: str, start: int, end: int, weights_remaining: float) -> None:
        if not self.header:
            print("  ".join(f"{name:<{width}}" if name == "variant" else f"{name:>{width}}"
                            for name, width, _ in _TABLE), file=self.stream, flush=True)
            self.header = True
        self._current = f"level {level} {variant} ({weights_remaining:.1%} remaining)"

    def evaluated(self, level: int, variant: str, evaluation, end: int) -> None:
        if self.progress:
            acc = float(evaluation.metrics["test_accuracy"])  # a logging point: reading back is fine here
            print(f"\r  {self._current}: iteration {evaluation.iteration}/{end}, test acc {acc:.2%}   ",
                  end="", file=sys.stderr, flush=True)

    def level_done(self, level: int, rows: list[dict[str, Any]]) -> None:
        if self.progress:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
        for row in rows:
            print(_table_line([row[k] for k in _KEYS]), file=self.stream, flush=True)

    def analysed(self, replicate: int, summary_rows: list[dict[str, Any]], path_rows: list[dict[str, Any]]) -> None:
        if self.progress:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
        for r in summary_rows:
            print(f"pair {replicate} {r['split']:<5}  ends {r['error_1']:.2%} / {r['error_2']:.2%} error, max along "
                  f"the path {r['max_error']:.2%}: instability {r['instability']:.2%} "
                  f"({'stable' if r['stable'] else 'unstable'} at {r['threshold']:.0%})", file=self.stream, flush=True)


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.preset, args.overrides)


def _output(args: argparse.Namespace, cfg: Config, label: str, name: str) -> Path | None:
    """The run directory (default runs/<name>); None after printing the config for --dry-run."""
    out = Path(args.out) if args.out else Path("runs") / name
    if args.dry_run:
        print(dump_config(cfg), end="")
        print(f"# {label}: {name}\n# {'output:':<{len(label) + 1}} {out}")
        return None
    return out


def _resumable(run, out: Path, what: str):
    """`run.run()`, or None after saying how to resume if the user interrupts it."""
    try:
        return run.run()
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished {what} are kept in {out}; run the same command again to resume",
              file=sys.stderr)
        return None


def cmd_imp(args: argparse.Namespace) -> int:
    from trainables.imp import ImpRun

    cfg = _load(args)
    if (out := _output(args, cfg, "run name", run_name(cfg))) is None:
        return 0
    run = ImpRun(cfg, out, TableReporter())
    per_run = run.end_iter - run.rewind_iter
    total = run.end_iter + cfg.imp.levels * (1 + len(cfg.imp.controls)) * per_run
    print(f"IMP run {run_name(cfg)} -> {out}\n{cfg.imp.levels + 1} levels, {total:,} training iterations "
          f"on {run.device}; finished levels: {run.finished_levels() or 'none'}")
    if (table := _resumable(run, out, "levels")) is None:
        return 130
    print(f"done: {table.num_rows} rows in {out / 'results.parquet'}")
    return 0


def cmd_stability(args: argparse.Namespace) -> int:
    from trainables.stability import StabilityRun, analysis_name

    cfg = _load(args)
    if (out := _output(args, cfg, "analysis name", analysis_name(cfg))) is None:
        return 0
    run = StabilityRun(cfg, out, TableReporter())
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
        print(f"{split}: instability {mean:.2%} (mean of {len(values)}), {'stable' if mean < st.threshold else 'unstable'}")
    print(f"done: {out / 'stability_summary.parquet'}, {out / 'stability.parquet'}")
    return 0


def _print_plan(spec, trials) -> None:
    from orchestrator.spec import total_iterations

    print(f"sweep {spec.name} ({spec.source}) -> {spec.experiment}")
    if trials is None:
        swept = ", ".join(f"{k} ~ {d.kind}{list(d.values)}" for k, d in spec.space)
        iterations, dense, trainings = total_iterations(spec, [{}])
        n = spec.search.num_samples
        print(f"{n} trials chosen by {spec.search.algorithm} ({spec.search.mode} {spec.search.metric}) over: "
              f"{swept}\nestimated from the base config (sampled values change it): at most "
              f"{n * (dense + trainings):,} trainings, {n * iterations:,} training iterations, fewer where trials "
              "share dense runs")
        return
    width = len(str(len(trials)))
    for i, trial in enumerate(trials, 1):
        swept = ", ".join(f"{k}={v}" for k, v in spec.overrides(trial).items()) or "the base config"
        print(f"  {i:>{width}}  {swept}")
    iterations, dense, trainings = total_iterations(spec, trials)
    print(f"{len(trials)} trials sharing {dense} dense run(s): {dense + trainings:,} trainings, "
          f"{iterations:,} training iterations")


def cmd_sweep_run(args: argparse.Namespace) -> int:
    import dataclasses

    from orchestrator.spec import load_sweep

    spec = load_sweep(args.file)
    storage = args.storage or os.environ.get("LTH_STORAGE") or spec.storage
    spec = dataclasses.replace(spec, name=args.name or spec.name, storage=storage)
    _print_plan(spec, spec.grid())
    if args.dry_run:
        return 0
    from orchestrator import tuner

    if tuner.exists(spec):
        raise ConfigError(spec.source, [f"name: the sweep folder {spec.experiment} already exists. To finish it: "
                                        f"lth sweep resume {spec.experiment}; to start another, pass --name"])
    local = tuner.init_ray(args.address, args.num_cpus)
    if args.pack == "auto":
        from orchestrator.packing import pack

        spec = pack(spec, local)
    if local:
        tuner.check_resources(spec)
    return _finish(spec, tuner.run(spec, tracking_uri=args.tracking_uri))


def cmd_sweep_resume(args: argparse.Namespace) -> int:
    from orchestrator import tuner

    spec = tuner.load_saved_spec(args.dir)
    print(f"resuming sweep {spec.name} in {spec.experiment}")
    tuner.init_ray(args.address, args.num_cpus)
    return _finish(spec, tuner.run(spec, resume=True, tracking_uri=args.tracking_uri))


def _finish(spec, results) -> int:
    failed = results.num_errors
    unfinished = len(results) - results.num_terminated - failed
    print(f"{results.num_terminated} trials done, {failed} failed, {unfinished} unfinished; sweep folder "
          f"{spec.experiment}")
    if failed or unfinished:
        print(f"to finish it: lth sweep resume {spec.experiment}", file=sys.stderr)
    return 1 if failed or unfinished else 0


def _percent(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.2%}" if std is None else f"{mean:.2%} ± {std:.2%}"


def _print_table(header: list[str], lines: list[list[str]]) -> None:
    widths = [max(len(x) for x in column) for column in zip(header, *lines)]
    for line in [header, *lines]:
        print("  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(line, widths))))


def cmd_results(args: argparse.Namespace) -> int:
    from orchestrator import store

    stability = store.read_results(args.dir, store.SUMMARY_FILE)
    table = stability if stability.num_rows else store.read_results(args.dir)
    if table.num_rows == 0:
        raise ConfigError(args.dir, [f"no rows in {args.dir}/{store.RESULTS_FILE} (or stability_summary.parquet): "
                                     "not a sweep folder, or no trial has finished a level yet"])
    keys, rows = (store.stability_summary if stability.num_rows else store.summary)(table)
    if args.format == "json":
        print(json.dumps(rows, indent=1))
        return 0
    if args.format == "csv":
        import csv

        columns = list(rows[0]) if stability.num_rows else [*keys, "level", "weights_remaining", "seeds"] + [
            f"{v}_{s}" for v in store.SUMMARY_VARIANTS for s in ("mean", "std")]
        writer = csv.DictWriter(sys.stdout, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        return 0
    setting = [", ".join(f"{k}={r[k]}" for k in keys) or "base" for r in rows]
    if stability.num_rows:
        _print_table(["setting", "split", "remaining", "pairs", "instability", "endpoint error", "stable"],
                     [[name, r["split"], f"{r['weights_remaining']:.1%}", str(r["pairs"]),
                       _percent(r["instability_mean"], r["instability_std"]), f"{r['endpoint_error']:.2%}",
                       f"{r['stable_fraction']:.0%}"] for name, r in zip(setting, rows)])
        print(f"\n{table.num_rows} rows from {args.dir}/stability_summary.parquet; instability mean ± std over "
              f"pairs of copies, stable: below {rows[0]['threshold']:.0%}")
        return 0
    variants = [v for v in store.SUMMARY_VARIANTS if any(f"{v}_mean" in r for r in rows)]
    _print_table(["setting", "level", "remaining", "seeds", *variants],
                 [[name, str(r["level"]), f"{r['weights_remaining']:.1%}", str(r["seeds"]),
                   *(_percent(r.get(f"{v}_mean"), r.get(f"{v}_std")) for v in variants)]
                  for name, r in zip(setting, rows)])
    print(f"\n{table.num_rows} rows from {args.dir}/{store.RESULTS_FILE}; mean ± std of test accuracy over seeds "
          "(level 0's ticket is the dense network)")
    return 0


def _sweep_identity(directory: str) -> dict[str, Any] | None:
    """A sweep folder's sweep.json: its id, tracking URI and experiment."""
    from orchestrator import store, tracking

    return store.read_json(directory, tracking.SWEEP_FILE_JSON)


def _tracking_of(directory: str) -> tuple[str | None, str | None]:
    """(tracking URI, experiment) of a sweep folder, or of a storage folder holding mlflow.db."""
    from orchestrator import tracking
    from orchestrator.dense_cache import filesystem

    if (ident := _sweep_identity(directory)) is not None:
        return ident["tracking_uri"], ident["experiment"]
    if (Path(filesystem(directory)[1]) / "mlflow.db").exists():
        return tracking.default_uri(directory), None
    return None, None


def cmd_report(args: argparse.Namespace) -> int:
    from orchestrator import report, tracking
    from orchestrator.dense_cache import filesystem

    def keys(text: str | None) -> tuple[str, ...] | None:
        return None if text is None else tuple(k.strip() for k in text.split(",") if k.strip())

    options = report.Options(group_by=keys(args.group_by), panel_by=keys(args.panel_by),
                             variants=keys(args.variants), accuracy=args.accuracy, tolerance=args.tolerance)
    report.parse_tolerance(options.tolerance)
    tables, header = report.load(args.dirs)
    roots = [filesystem(d) for d in args.dirs]
    names = [Path(root).name for _, root in roots]
    if args.out:
        out = Path(args.out)
    elif len(args.dirs) == 1 and "://" not in args.dirs[0]:
        out = Path(roots[0][1]) / "report"
    else:
        out = Path("reports") / "+".join(names)
    built = report.build(tables, options, f"LTH report: {' + '.join(names)}", header)
    files = report.write(built, out, args.dirs)
    print(f"report of {' + '.join(names)} in {out}:")
    for path in files:
        print(f"  {path.name}")
    for note in built.notes:
        print(note)
    for directory in [] if args.no_mlflow else args.dirs:
        ident = _sweep_identity(directory) or {}
        if not ident.get("tracking_uri"):
            print(f"MLflow: {directory} is not tracked; the report is only in {out}")
            continue
        try:
            run_id = tracking.log_report(ident["tracking_uri"], ident["experiment"], ident["sweep_id"], files)
        except Exception as exc:  # noqa: BLE001 - MLflow is a view; the report is on disk
            print(f"MLflow: could not log the report to {ident['tracking_uri']} ({type(exc).__name__}: "
                  f"{str(exc)[:200]}); it is in {out}. Run `lth report` again once MLflow is reachable")
            continue
        print(f"MLflow: {ident['tracking_uri']} has no run of this sweep yet (lth mlflow sync {directory}, then "
              "report again)" if run_id is None else
              f"MLflow: logged under report/ in the sweep's run {run_id} ({ident['tracking_uri']})")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    import signal
    import socket
    import subprocess
    import time
    import urllib.request

    from orchestrator import tracking

    directory = args.dir or os.environ.get("LTH_STORAGE") or "runs/sweeps"
    uri, experiment = _tracking_of(directory)
    if uri is None:
        raise ConfigError(directory, ["no MLflow store here: give a sweep folder (<storage>/<name>) or the storage "
                                      "folder holding mlflow.db (runs/sweeps by default)"])
    if not tracking.is_local(uri):
        print(f"this sweep is tracked on the MLflow server {uri}: open it in a browser")
        return 0
    port = args.port
    if port == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # a browser needs no job runner
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], env=env)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    address = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while server.poll() is None and time.time() < deadline:
            try:
                urllib.request.urlopen(f"{address}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        if server.poll() is not None:
            print(f"error: mlflow server exited ({server.returncode}); is port {port} in use? (--port)",
                  file=sys.stderr)
            return 1
        link = address
        if experiment:
            client = tracking.client(uri)
            found = client.get_experiment_by_name(experiment)
            if found is not None:
                link = f"{address}/#/experiments/{found.experiment_id}/runs?workflowType=machine_learning"
        print(f"MLflow UI for {uri}:\n  {link}\n(Ctrl-C stops it)", flush=True)
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
    return 0


def cmd_mlflow_sync(args: argparse.Namespace) -> int:
    from orchestrator import store, tracking, tuner

    spec = tuner.load_saved_spec(args.dir)
    ident = tuner.identity(spec, args.tracking_uri)
    if ident["tracking_uri"] is None:
        raise ConfigError(args.dir, ["this sweep has no MLflow store; pass --tracking-uri http://HOST:PORT"])
    tables = store.sweep_tables(spec.experiment, spec.name, ident["sweep_id"], spec.kind)
    trials = store.collect(tables, spec.overrides)
    commit = tables[store.RESULTS_FILE if spec.kind == "imp" else store.SUMMARY_FILE].table().to_pylist()
    done: dict[str, set] = {}
    for row in commit:
        done.setdefault(row["trial_id"], set()).add(row["level"] if spec.kind == "imp" else row["replicate"])
    overrides = {row["trial_id"]: json.loads(row["overrides"]) for row in commit}

    def complete(trial_id: str) -> bool:
        cfg = spec.base.with_updates(overrides[trial_id])
        return len(done[trial_id]) == (cfg.imp.levels + 1 if spec.kind == "imp" else cfg.stability.replicates)

    # A trial with all its levels (replicates) is finished; the others stopped with the sweep (a resume
    # reopens them).
    statuses = {t: "FINISHED" if complete(t) else "KILLED" for t in done}
    target = tracking.open_sweep(ident["tracking_uri"], ident["experiment"], spec.name, ident["sweep_id"],
                                 spec.text, tuner.sweep_params(spec))
    updated = tracking.sync_folder(spec, target, {name: t.table() for name, t in tables.items()}, statuses, trials)
    if updated is None:
        return 1
    print(f"MLflow {ident['tracking_uri']}: {updated} of {len(done)} trial runs updated, the others were "
          f"already level with the tables in {spec.experiment}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from trainables.presets import PRESETS

    for entry in PRESETS:
        print(f"{entry.name:<15} {entry.description}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from trainables.data import DATASETS
    from trainables.imp import CONTROLS
    from trainables.models import MODELS
    from trainables.presets import PRESETS
    from trainables.pruning import STRATEGIES

    registry = {"models": MODELS, "datasets": DATASETS, "strategies": STRATEGIES, "controls": CONTROLS,
                "presets": PRESETS}[args.kind]
    for entry in registry:
        print(f"{entry.name:<20} {entry.description}")
    return 0


def cmd_data_download(args: argparse.Namespace) -> int:
    from trainables.data import download_dataset

    print(f"{args.name} is in {download_dataset(args.name, args.root)}")
    return 0


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML config (sections model, data, train, prune, imp, runtime)")
    parser.add_argument("--preset", help="start from a preset (`lth presets` lists them)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a dotted key, e.g. --set train.lr=0.01 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lth", description="Lottery-ticket (IMP) runs and sweeps.")
    sub = parser.add_subparsers(dest="command", required=True)

    imp = sub.add_parser("imp", help="run (or resume) one IMP run in this process, without Ray")
    _config_arguments(imp)
    imp.add_argument("--out", help="run directory (default runs/<arch>-<dataset>-<config hash>)")
    imp.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    imp.set_defaults(func=cmd_imp)

    stab = sub.add_parser("stability", help="one stability (linear mode connectivity) analysis in this process: "
                                            "the network at k = imp.rewind_iter, dense or stability.level L")
    _config_arguments(stab)
    stab.add_argument("--out", help="analysis directory (default runs/<arch>-<dataset>-<stability hash>)")
    stab.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    stab.set_defaults(func=cmd_stability)

    sweep = sub.add_parser("sweep", help="sweeps of IMP runs on Ray Tune").add_subparsers(dest="sweep_command",
                                                                                        required=True)
    ray_args = argparse.ArgumentParser(add_help=False)
    ray_args.add_argument("--address", help="a running Ray cluster ('auto' on its head node; default: "
                                            "$RAY_ADDRESS, set by `ray job submit`, else a new local Ray)")
    ray_args.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
    srun = sweep.add_parser("run", parents=[ray_args], help="run a sweep file (sweeps/*.yaml)")
    srun.add_argument("file")
    srun.add_argument("--dry-run", action="store_true", help="print the trials and their training iterations")
    srun.add_argument("--name", help="the sweep's folder name (default: the file's `name`)")
    srun.add_argument("--storage", help="a folder or URI for sweep folders (default: $LTH_STORAGE, else the "
                                        "file's `storage`)")
    srun.add_argument("--tracking-uri", help="an MLflow server (http://HOST:PORT) or store URI (default: "
                                             "$MLFLOW_TRACKING_URI, else the file's tracking.uri, else "
                                             "<storage>/mlflow.db)")
    srun.add_argument("--pack", choices=["auto", "off"], default="off",
                      help="auto: probe a trial's peak GPU memory and pack as many trials per GPU as fit "
                           "(sets resources.gpu to a fraction); off: resources as in the file")
    srun.set_defaults(func=cmd_sweep_run)
    resume = sweep.add_parser("resume", parents=[ray_args], help="finish an interrupted sweep")
    resume.add_argument("--tracking-uri", help="log to this MLflow server from now on (default: the sweep's store)")
    resume.add_argument("dir", help="the sweep folder: <storage>/<name>")
    resume.set_defaults(func=cmd_sweep_resume)

    results = sub.add_parser("results", help="a sweep's results: mean ± std over seeds per setting and level")
    results.add_argument("dir", help="the sweep folder: <storage>/<name>")
    results.add_argument("--format", choices=["table", "csv", "json"], default="table")
    results.set_defaults(func=cmd_results)

    rep = sub.add_parser("report", help="figures (PNG), tables (CSV) and one HTML page from sweeps' Parquet tables; "
                                        "logged to each sweep's MLflow run")
    rep.add_argument("dirs", nargs="+", metavar="DIR", help="sweep folders (<storage>/<name>); several are drawn "
                                                            "together, the sweep becoming a setting")
    rep.add_argument("--out", help="output folder (default DIR/report; with several sweeps or a URI, "
                                   "reports/<names>)")
    rep.add_argument("--group-by", metavar="KEYS", help="comma-separated swept keys whose values make the lines "
                                                        "(default: all, split into panels beyond 4 lines)")
    rep.add_argument("--panel-by", metavar="KEYS", help="comma-separated swept keys whose values make the panels")
    rep.add_argument("--variants", default="ticket,reinit,random_mask",
                     help="which of ticket, reinit, random_mask to draw (default: all the sweep has)")
    rep.add_argument("--accuracy", choices=["test_accuracy", "early_stop_accuracy"], default="test_accuracy",
                     help="test accuracy at the end of training or at the early-stop iteration")
    rep.add_argument("--tolerance", default="1std", help="matching: within N std of dense over seeds (1std, the "
                                                         "LMC paper's definition) or N accuracy points (0.5pt)")
    rep.add_argument("--no-mlflow", action="store_true", help="do not log the report to MLflow")
    rep.set_defaults(func=cmd_report)

    ui = sub.add_parser("ui", help="start the MLflow UI on a sweep's (or a storage folder's) MLflow store")
    ui.add_argument("dir", nargs="?", help="a sweep folder or storage folder (default $LTH_STORAGE, else "
                                           "runs/sweeps)")
    ui.add_argument("--port", type=int, default=5000, help="0: any free port")
    ui.set_defaults(func=cmd_ui)

    mlflow = sub.add_parser("mlflow", help="MLflow views of sweeps").add_subparsers(dest="mlflow_command",
                                                                                    required=True)
    msync = mlflow.add_parser("sync", help="(re)log a sweep to MLflow from its Parquet table; never duplicates")
    msync.add_argument("dir", help="the sweep folder: <storage>/<name>")
    msync.add_argument("--tracking-uri", help="log there from now on (default: the sweep's store)")
    msync.set_defaults(func=cmd_mlflow_sync)

    sub.add_parser("presets", help="list the presets and their sources").set_defaults(func=cmd_presets)

    lst = sub.add_parser("list", help="list a registry")
    lst.add_argument("kind", choices=["models", "datasets", "strategies", "controls", "presets"])
    lst.set_defaults(func=cmd_list)

    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    download = data.add_parser("download", help="download a torchvision dataset (needs internet)")
    download.add_argument("name")
    download.add_argument("--root", help="data folder (default $LTH_DATA_ROOT or ~/.cache/lth-sweeps/data)")
    download.set_defaults(func=cmd_data_download)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from trainables.data import DatasetNotFoundError
    from trainables.imp import CheckpointError
    from orchestrator.report import ReportError
    from trainables.registry import UnknownNameError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DatasetNotFoundError, CheckpointError, UnknownNameError, ReportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
