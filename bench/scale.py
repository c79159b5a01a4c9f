"""How the driver's work grows with a sweep's size: simulated IMP sweeps of 100, 1,000 (and 10,000) trials.

A simulated trial is a real trial (`orchestrator.trial.run_trial`: the imp workflow, its checkpoints, its
MLflow logger, the driver's callbacks: progress, record, claims) whose run commits its levels at once:
`StubRun` writes each level's rows (dense at level 0, then the ticket and two controls) without training,
and no dense run is computed. The sweep runs on a local Ray against a real `mlflow server` on 127.0.0.1.

Per size it prints: driver CPU seconds per level completion (the whole driver process, Tune included), the
part of it spent keeping the sweep's tables (`record`), wall time, the driver's peak memory, the size of
Tune's experiment state, MLflow throughput (child runs and metric steps logged per second of sweep), and
the wall time of `lth results` and `lth report --no-mlflow` on the finished sweep. Ratios are against the
first size.

    flock /tmp/lth-heavy.lock nice -n 5 python bench/scale.py --trials 100 1000 [--levels 20] [--label after]

Each size runs in a process of its own (peak memory is per size).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]
CONTROLS = ["reinit", "random_mask"]


# ---------------------------------------------------------------------------------------------
# the simulated run, installed in every Ray worker (and the driver) by `install_stub`


class StubRun:
    """An IMP run that commits `imp.levels + 1` levels (0 = dense) at once, with plausible numbers."""

    def __init__(self, cfg, workdir: Path, reporter):
        self.cfg, self.workdir, self.reporter = cfg, Path(workdir), reporter

    def row(self, level: int, variant: str) -> dict:
        import datetime
        import random

        from trainables.config import config_hash, dense_hash

        cfg = self.cfg
        rng = random.Random(f"{config_hash(cfg)}-{level}-{variant}")
        now = datetime.datetime.now(datetime.timezone.utc)
        accuracy = 0.97 - 0.002 * level + rng.gauss(0, 0.003)
        return {"run_name": f"stub-{config_hash(cfg)}", "config_hash": config_hash(cfg), "dense_hash": dense_hash(cfg),
                "arch": cfg.model.arch, "dataset": cfg.data.dataset, "seed": cfg.seed, "lr": cfg.train.lr,
                "prune_rate": cfg.prune.rate, "level": level, "variant": variant,
                "weights_remaining": (1 - cfg.prune.rate) ** level, "test_accuracy": accuracy,
                "test_loss": 1 - accuracy, "val_accuracy": accuracy, "val_loss": 1 - accuracy, "early_stop_iter": 900,
                "early_stop_accuracy": accuracy, "early_stop_val_loss": 1 - accuracy, "start_iter": 0,
                "end_iter": 1500, "train_seconds": 0.0, "started_at": now, "finished_at": now}

    def run(self):
        from trainables.layout import RESULTS, RunLayout
        from trainables.results import DENSE, LEVELS_SCHEMA, TICKET, append_rows

        layout = RunLayout(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        done = set(layout.finished_levels())
        for level in range(self.cfg.imp.levels + 1):
            if level in done:
                continue
            rows = [self.row(level, v) for v in ([DENSE] if level == 0 else [TICKET, *self.cfg.imp.controls])]
            append_rows(layout.results, LEVELS_SCHEMA, rows)
            self.reporter.committed(level, {RESULTS: rows})


def install_stub() -> None:
    from orchestrator import trial
    from orchestrator.workflows.imp import IMP  # the workflow (an instance): its other methods stay

    IMP.make_run = lambda cfg, workdir, reporter, dense_dir, masks_from: StubRun(cfg, workdir, reporter)
    trial.acquire = lambda *args, **kwargs: None


# ---------------------------------------------------------------------------------------------
# one size, in its own process


def sweep_raw(trials: int, levels: int, storage: Path) -> dict:
    lrs = [round(1e-3 * (1 + i), 6) for i in range(min(10, trials))]
    return {"name": f"scale{trials}", "storage": str(storage), "resources": {"cpu": 1}, "max_failures": 0,
            "base": {"preset": "quickstart", "imp": {"levels": levels - 1, "controls": CONTROLS},
                     "runtime": {"device": "cpu"}},
            "space": {"train.lr": lrs, "seed": list(range(trials // len(lrs)))}}


def timed(command: list[str]) -> float:
    """Wall seconds of a command; its CPU seconds (user + system, what a busy machine inflates least) go
    to CPU_SECONDS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    tic = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU_SECONDS.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return time.perf_counter() - tic


CPU_SECONDS: list[float] = []


def one(trials: int, levels: int, uri: str, work: Path, cpus: int) -> dict:
    import ray
    import yaml

    from orchestrator import sweep_folder, tuner
    from orchestrator.spec import parse_sweep
    from orchestrator.tracking.client import client

    raw = sweep_raw(trials, levels, work)
    spec = parse_sweep(raw, "bench/scale.py", yaml.safe_dump(raw))
    spent = [0.0]
    record = sweep_folder.record

    def timed_record(*args, **kwargs):
        tic = time.process_time()
        try:
            return record(*args, **kwargs)
        finally:
            spent[0] += time.process_time() - tic

    sweep_folder.record = timed_record
    from bench.scale import install_stub as hook  # by its module's name: workers cannot import __main__

    hook()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"worker_process_setup_hook": hook, "env_vars": {"PYTHONPATH": str(ROOT)}})
    cpu0, tic = time.process_time(), time.perf_counter()
    results = tuner.run(spec, tracking_uri=uri)
    wall, cpu = time.perf_counter() - tic, time.process_time() - cpu0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ray.shutdown()
    folder = Path(spec.folder)
    state = sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.name.startswith(
        ("experiment_state", "basic-variant-state", "search")))
    mlflow = client(uri)
    experiment = mlflow.get_experiment_by_name(spec.name).experiment_id
    runs, token = 0, None
    while True:
        page = mlflow.search_runs([experiment], max_results=1000, page_token=token)
        runs += len(page)
        if not (token := page.token):
            break
    table = sweep_folder.read_table(str(folder), "results.parquet")
    steps = sum(len(spec.workflow.mlflow_metrics({"results.parquet": rows}))
                for rows in _by_trial(table.to_pylist()).values())
    completions = trials * levels
    lth = [sys.executable, "-m", "orchestrator.cli"]
    return {"trials": trials, "levels": levels, "errors": results.num_errors, "rows": table.num_rows,
            "wall_s": wall, "driver_cpu_s": cpu, "cpu_per_level_ms": 1000 * cpu / completions,
            "record_per_level_ms": 1000 * spent[0] / completions, "peak_mb": peak, "tune_state_kb": state / 1024,
            "mlflow_runs": runs, "mlflow_runs_per_s": runs / wall, "mlflow_steps_per_s": steps / wall,
            "results_s": timed([*lth, "results", str(folder)]), "results_cpu_s": CPU_SECONDS[-1],
            "report_s": timed([*lth, "report", str(folder), "--no-mlflow", "--out", str(work / "report")]),
            "report_cpu_s": CPU_SECONDS[-1]}


def _by_trial(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in rows:
        out.setdefault(row["trial_id"], []).append(row)
    return out


def record_only(trials: int, levels: int, work: Path, sample: int = 0) -> dict:
    """The driver's record of a commit alone (no Ray): `trials` trials record `levels - 1` levels, then every
    trial (or `sample` of them, evenly spaced) commits its last level, each recorded as `Record.on_checkpoint`
    does (its checkpoint's rows, read from a file): the cost per commit at the end of a sweep, where it is
    highest. Then the time of `lth results` on the table as it is mid-sweep, and after `lth results --compact`."""

    import pyarrow.parquet as pq

    from orchestrator import sweep_folder
    from trainables.layout import RESULTS
    from trainables.results import DENSE, LEVELS_SCHEMA, TICKET, table_of

    from orchestrator.spec import parse_sweep

    spec = parse_sweep(sweep_raw(trials, levels, work), "bench/scale.py")
    cfg = spec.trial_config(spec.grid()[0])
    stub = StubRun(cfg, work, None)
    rows = table_of([stub.row(level, v) for level in range(levels)
                     for v in ([DENSE] if level == 0 else [TICKET, *CONTROLS])], LEVELS_SCHEMA)
    before_last = rows.num_rows - 1 - len(CONTROLS)
    table = sweep_folder.SweepTable(str(work), "scale", "abc123", RESULTS)
    for level in range(1, levels):  # as a sweep records them: a file per trial and level
        for i in range(trials):
            table.set(f"t_{i:05d}", {"seed": i}, rows.slice(0, min(before_last, 1 + (1 + len(CONTROLS)) * level)))
        table.save()
    checkpoint = work / "checkpoint.parquet"
    pq.write_table(rows, checkpoint)
    committing = range(0, trials, max(1, trials // sample) if sample else 1)
    tic = time.process_time()
    for i in committing:
        sweep_folder.record({RESULTS: table}, f"t_{i:05d}", {"seed": i},
                            lambda name: pq.read_table(checkpoint, schema=LEVELS_SCHEMA))
    out = {"trials": trials, "record_ms": 1000 * (time.process_time() - tic) / len(committing)}
    lth = [sys.executable, "-m", "orchestrator.cli", "results", str(work)]
    out["results_s"] = timed(lth)  # mid-sweep: the dataset's files (or the single file, before the dataset)
    out["results_cpu_s"] = CPU_SECONDS[-1]
    if (work / RESULTS.removesuffix(".parquet")).is_dir():  # a sweep folder with the dataset
        out["compact_s"] = timed([*lth, "--compact"])
        out["results_compacted_s"] = timed(lth)
        out["results_compacted_cpu_s"] = CPU_SECONDS[-1]
    return out


# ---------------------------------------------------------------------------------------------
# the driver of the benchmark: an mlflow server, one process per size, the table


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow(work: Path) -> tuple[subprocess.Popen, str]:
    import urllib.request

    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{work}/mlflow.db", "--default-artifact-root",
                               str(work / "mlartifacts"), "--workers", "2"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            return server, uri
        except OSError:
            time.sleep(1)
    server.kill()
    raise RuntimeError("mlflow server did not start")


COLUMNS = [("trials", "{:,}"), ("wall_s", "{:.1f}"), ("driver_cpu_s", "{:.1f}"), ("cpu_per_level_ms", "{:.2f}"),
           ("record_per_level_ms", "{:.2f}"), ("peak_mb", "{:.0f}"), ("tune_state_kb", "{:.0f}"),
           ("mlflow_runs_per_s", "{:.1f}"), ("mlflow_steps_per_s", "{:.0f}"), ("results_s", "{:.2f}"),
           ("results_cpu_s", "{:.2f}"), ("report_s", "{:.2f}"), ("report_cpu_s", "{:.2f}")]
RATIOS = ["cpu_per_level_ms", "record_per_level_ms", "results_s", "report_s"]


def table(rows: list[dict], label: str) -> str:
    names = [name for name, _ in COLUMNS] + [f"{r} x" for r in RATIOS]
    lines = [f"### {label}", "", "| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for row in rows:
        cells = [fmt.format(row[name]) for name, fmt in COLUMNS]
        cells += [f"{row[r] / rows[0][r]:.2f}" if rows[0][r] else "-" for r in RATIOS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--levels", type=int, default=20, help="level completions per trial, level 0 included")
    parser.add_argument("--cpus", type=int, default=4, help="the local Ray's CPUs: trials at once")
    parser.add_argument("--label", default="", help="a title for the table (e.g. before, after)")
    parser.add_argument("--record-only", action="store_true", help="time the driver's record of a commit alone, "
                        "without Ray, at the end of a sweep of each size")
    parser.add_argument("--sample", type=int, default=0, help="with --record-only: time this many trials' last "
                        "commits (default: all; the single-table record takes seconds each at 10,000 trials)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--uri", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.record_only:
        for trials in args.trials:
            work = Path(tempfile.mkdtemp(prefix="lth-record-"))
            print(json.dumps(record_only(trials, args.levels, work, args.sample)), flush=True)
        return
    if args.one:
        print(json.dumps(one(args.one, args.levels, args.uri, Path(args.work), args.cpus)), flush=True)
        return
    work = Path(tempfile.mkdtemp(prefix="lth-scale-"))
    server, uri = start_mlflow(work)
    rows = []
    try:
        for trials in args.trials:
            out = subprocess.run([sys.executable, __file__, "--one", str(trials), "--levels", str(args.levels),
                                  "--cpus", str(args.cpus), "--uri", uri, "--work", str(work / str(trials))],
                                 check=True, stdout=subprocess.PIPE, text=True,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        server.terminate()
        server.wait(30)
    print(table(rows, f"{args.label or 'scale'}: {args.levels} levels per trial, {args.cpus} trials at once"))


if __name__ == "__main__":
    main()
