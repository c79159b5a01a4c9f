"""`lth results`, `lth report` and `lth ui`: views of sweep folders."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from orchestrator import fs, sweep_folder
from orchestrator.report.analysis import X_COLUMNS, stability_summary, summary
from orchestrator.report.figures import Options, Table, found_variants, summary_table
from orchestrator.report.stability_figures import stability_table
from trainables.config import ConfigError
from trainables.layout import RESULTS, STABILITY_SUMMARY
from trainables.results import DENSE


def _print_table(table: Table) -> None:
    widths = [max(len(x) for x in column) for column in zip(table.columns, *table.rows)]
    for line in [table.columns, *table.rows]:
        print("  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(line, widths))))


def results(args: argparse.Namespace) -> int:
    """The report's summary table (or its stability table), as text, CSV or JSON."""
    fs.check_storage(args.dir, write=False)
    tables = sweep_folder.read_tables(args.dir)
    if args.compact:
        for name, table in tables.items():
            if table.num_rows:
                sweep_folder.compact(args.dir, name)
                print(f"{args.dir}/{name}: {table.num_rows} rows in one file", file=sys.stderr)
    stability, levels = tables[STABILITY_SUMMARY], tables[RESULTS]
    name = STABILITY_SUMMARY if stability.num_rows else RESULTS
    if not (stability.num_rows or levels.num_rows):
        raise ConfigError(args.dir, [f"no rows in {args.dir}/{RESULTS} (or {STABILITY_SUMMARY}): not a sweep folder, "
                                     "or no trial has finished a level yet"])
    keys, rows = stability_summary(stability) if stability.num_rows else summary(levels, args.column)
    if args.format == "json":
        print(json.dumps(rows, indent=1))
    elif args.format == "csv":
        import csv

        columns = list(rows[0]) if stability.num_rows else [*keys, "level", "weights_remaining", "seeds"] + [
            f"{v}_{s}" for v in (DENSE, *found_variants(rows)) for s in ("mean", "std", *X_COLUMNS[1:])]
        writer = csv.DictWriter(sys.stdout, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    else:
        table = stability_table((keys, rows), True) if stability.num_rows else summary_table(
            (keys, rows), Options(accuracy=args.column), True)
        _print_table(table)
        print(f"\n{tables[name].num_rows} rows from {args.dir}/{name}; {table.caption}")
    return 0


def _tracking_of(directory: str) -> tuple[str | None, str | None, str | None]:
    """(tracking URI, experiment, sweep id) of a sweep folder, or of a storage folder holding mlflow.db."""
    from orchestrator.tracking.client import default_uri

    if (record := sweep_folder.read_record(directory)) is not None:
        return record["tracking_uri"], record["experiment"], record["sweep_id"]
    if (Path(fs.filesystem(directory)[1]) / "mlflow.db").exists():
        return default_uri(directory), None, None
    return None, None, None


def report(args: argparse.Namespace) -> int:
    from orchestrator import report as reports
    from orchestrator.report.analysis import parse_tolerance
    from orchestrator.report.render import write
    from orchestrator.tracking.client import log_report

    def keys(text: str | None) -> tuple[str, ...] | None:
        return None if text is None else tuple(k.strip() for k in text.split(",") if k.strip())

    options = Options(group_by=keys(args.group_by), panel_by=keys(args.panel_by), accuracy=args.accuracy,
                      variants=keys(args.variants), tolerance=args.tolerance, rule=args.rule, x=args.x)
    parse_tolerance(options.tolerance)
    for directory in args.dirs:
        fs.check_storage(directory, write=False)
    tables, header = reports.load(args.dirs)
    roots = [fs.filesystem(d)[1] for d in args.dirs]
    names = [Path(root).name for root in roots]
    if args.out:
        out = Path(args.out)
    elif len(args.dirs) == 1 and not fs.is_uri(args.dirs[0]):
        out = Path(roots[0]) / "report"
    else:
        out = Path("reports") / "+".join(names)
    built = reports.build(tables, options, f"LTH report: {' + '.join(names)}", header)
    files = write(built, out, args.dirs)
    print(f"report of {' + '.join(names)} in {out}:")
    for path in files:
        print(f"  {path.name}")
    for note in built.notes:
        print(note)
    for directory in [] if args.no_mlflow else args.dirs:
        record = sweep_folder.read_record(directory) or {}
        if not record.get("tracking_uri"):
            print(f"MLflow: {directory} is not tracked; the report is only in {out}")
            continue
        try:
            run_id = log_report(record["tracking_uri"], record["experiment"], record["sweep_id"], files)
        except Exception as exc:  # noqa: BLE001 - MLflow is a view; the report is on disk
            print(f"MLflow: could not log the report to {record['tracking_uri']} ({type(exc).__name__}: "
                  f"{str(exc)[:200]}); it is in {out}. Run `lth report` again once MLflow is reachable")
            continue
        print(f"MLflow: {record['tracking_uri']} has no run of this sweep yet (lth mlflow sync {directory}, then "
              "report again)" if run_id is None else
              f"MLflow: logged under report/ in the sweep's run {run_id} ({record['tracking_uri']})")
    return 0


def ui(args: argparse.Namespace) -> int:
    import signal
    import socket
    import subprocess
    import time
    import urllib.request

    from orchestrator.tracking.client import experiment_link, is_local

    directory = args.dir or os.environ.get("LTH_STORAGE") or "runs/sweeps"
    uri, experiment, sweep_id = _tracking_of(directory)
    if uri is None:
        raise ConfigError(directory, ["no MLflow store here: give a sweep folder (<storage>/<name>) or the storage "
                                      "folder holding mlflow.db (runs/sweeps by default)"])
    if not is_local(uri):
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
        link = experiment_link(uri, address, experiment, sweep_id) if experiment else address
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
