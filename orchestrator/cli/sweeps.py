"""`lth sweep run`, `lth sweep resume` and `lth mlflow sync`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from orchestrator import fs, sweep_folder
from orchestrator.spec import SweepSpec, load_sweep, total_iterations
from trainables import catalog
from trainables.config import ConfigError


def _print_plan(spec: SweepSpec) -> None:
    trials = spec.grid()
    print(f"sweep {spec.name} ({spec.kind}, {spec.source}) -> {spec.folder}")
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


def _check_data(spec: SweepSpec, address: str | None) -> None:
    """On a local Ray, every dataset the trials read must be on this machine (or may be downloaded): checked
    before Ray starts. A cluster's nodes have their own disks; there a trial that lacks its data stops
    with the same message, not retried."""
    if address or os.environ.get("RAY_ADDRESS"):
        return
    for data in {cfg.data for cfg in spec.configs()}:
        if (problem := catalog.missing_dataset(data)) is not None:
            raise catalog.DatasetNotFoundError(problem)


def run(args: argparse.Namespace) -> int:
    spec = load_sweep(args.file)
    storage = args.storage or os.environ.get("LTH_STORAGE") or spec.storage
    spec = dataclasses.replace(spec, name=args.name or spec.name, storage=storage)
    _print_plan(spec)
    if args.dry_run:
        return 0
    fs.check_storage(spec.storage)
    if sweep_folder.exists(spec.folder):
        raise ConfigError(spec.source, [f"name: the sweep folder {spec.folder} already exists. To finish it: "
                                        f"lth sweep resume {spec.folder}; to start another, pass --name"])
    _check_data(spec, args.address)
    from orchestrator import tuner

    local = tuner.init_ray(args.address, args.num_cpus)
    if args.pack == "auto":
        from orchestrator.packing import pack

        spec = pack(spec, local)
    if local:
        tuner.check_resources(spec)
    return _finish(spec, tuner.run(spec, tracking_uri=args.tracking_uri))


def resume(args: argparse.Namespace) -> int:
    fs.check_storage(args.dir)
    spec = sweep_folder.load_spec(args.dir)
    print(f"resuming sweep {spec.name} in {spec.folder}")
    _check_data(spec, args.address)
    from orchestrator import tuner

    tuner.init_ray(args.address, args.num_cpus)
    return _finish(spec, tuner.run(spec, resume=True, tracking_uri=args.tracking_uri))


def _finish(spec: SweepSpec, results) -> int:
    failed = results.num_errors
    unfinished = len(results) - results.num_terminated - failed
    print(f"{results.num_terminated} trials done, {failed} failed, {unfinished} unfinished; sweep folder "
          f"{spec.folder}")
    if failed or unfinished:
        print(f"to finish it: lth sweep resume {spec.folder}", file=sys.stderr)
    return 1 if failed or unfinished else 0


def mlflow_sync(args: argparse.Namespace) -> int:
    from orchestrator.tracking.client import open_sweep
    from orchestrator.tracking.sync import sweep_params, sync_folder

    fs.check_storage(args.dir)
    spec = sweep_folder.load_spec(args.dir)
    record = sweep_folder.sweep_record(spec, args.tracking_uri)
    if record["tracking_uri"] is None:
        raise ConfigError(args.dir, ["this sweep has no MLflow store; pass --tracking-uri http://HOST:PORT"])
    flow = spec.workflow
    tables = sweep_folder.sweep_tables(spec.folder, spec.name, record["sweep_id"], flow)
    trials = sweep_folder.collect(tables, flow, spec.overrides)
    by_trial: dict[str, dict[str, list]] = {}
    for name, table in tables.items():
        for row in table.table().to_pylist():
            by_trial.setdefault(row["trial_id"], {}).setdefault(name, []).append(row)
    # A trial that did everything is finished; the others stopped with the sweep (a resume reopens them).
    statuses = {trial_id: "FINISHED" if flow.finished(spec.trial_config(json.loads(
        next(iter(rows.values()))[0]["overrides"])), rows) else "KILLED" for trial_id, rows in by_trial.items()}
    target = open_sweep(record["tracking_uri"], record["experiment"], spec.name, record["sweep_id"], spec.text,
                        sweep_params(spec))
    updated = sync_folder(spec, target, {name: t.table() for name, t in tables.items()}, statuses, trials)
    if updated is None:
        return 1
    print(f"MLflow {record['tracking_uri']}: {updated} of {len(by_trial)} trial runs updated, the others were "
          f"already level with the tables in {spec.folder}")
    return 0
