"""Building, running and resuming a sweep's Ray Tune experiment."""

from __future__ import annotations

import dataclasses
import os
import sys
import types
import urllib.parse
from pathlib import Path
from typing import Any, Mapping

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our Progress callback is the display
os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")  # one line per failure (Progress); tracebacks in files
# Tune's own per-result files (result.json, progress.csv, TensorBoard events in every trial folder), written by
# the driver for every result of every trial: the Parquet record and MLflow hold the same numbers.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
# Tune keeps every checkpoint's entry (trials prune their checkpoints themselves: trial_folder.prune);
# without their metrics each entry is a path, so the experiment state grows by a path per commit.
os.environ.setdefault("TUNE_ONLY_STORE_CHECKPOINT_SCORE_ATTRIBUTE", "1")

import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune import Callback  # noqa: E402

from orchestrator import fs, sweep_folder  # noqa: E402
from orchestrator.dense_cache import claims_actor  # noqa: E402
from orchestrator.progress import Progress  # noqa: E402
from orchestrator.spec import Domain, SweepSpec  # noqa: E402
from orchestrator.tracking import client as tracking  # noqa: E402
from orchestrator.tracking.sync import sweep_params, sync_folder  # noqa: E402
from orchestrator.trial import PERMANENT_ERROR, run_trial  # noqa: E402
from trainables.config import ConfigError  # noqa: E402


def _domain(domain: Domain, categorical: bool) -> Any:
    if domain.kind == "grid":
        return tune.choice(list(domain.values)) if categorical else tune.grid_search(list(domain.values))
    if domain.kind == "choice":
        return tune.choice(list(domain.values))
    return getattr(tune, domain.kind)(*domain.values)


def param_space(spec: SweepSpec) -> dict[str, Any]:
    """Tune's search space: dotted keys, plus `case` (an index into `cases`)."""
    categorical = spec.search.algorithm == "optuna"
    return {key: _domain(domain, categorical) for key, domain in spec.axes()}


def _search_alg(spec: SweepSpec):
    if spec.search.algorithm != "optuna":
        return None
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(metric="objective", mode=spec.search.mode,
                        sampler=optuna.samplers.TPESampler(seed=spec.search.seed))


def open_tracking(spec: SweepSpec, record: Mapping[str, Any]) -> tracking.Target | None:
    """The sweep's MLflow parent run; None (and a note) when MLflow is off or cannot be reached."""
    uri = record["tracking_uri"]
    if uri is None:
        print("MLflow: not tracked (tracking.enabled: false, or remote storage without a tracking URI: "
              "pass --tracking-uri http://HOST:PORT of an `mlflow server`)", flush=True)
        return None
    try:
        target = tracking.open_sweep(uri, record["experiment"], spec.name, record["sweep_id"], spec.text,
                                     sweep_params(spec))
    except Exception as exc:  # noqa: BLE001 - MLflow is a view: the sweep runs without it
        print(f"MLflow: cannot reach {uri} ({type(exc).__name__}: {str(exc)[:200]}); the sweep runs untracked. "
              f"Afterwards: lth mlflow sync {spec.folder}", flush=True)
        return None
    print(f"MLflow: {uri}, experiment {record['experiment']!r} (lth ui {spec.storage})", flush=True)
    return target


def check_tracking_reach(uri: str) -> None:
    """A SQLite file, or a server at a loopback address, is reachable from this machine only."""
    here = ray.util.get_node_ip_address()
    others = {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]} - {here}
    loopback = urllib.parse.urlparse(uri).hostname in ("127.0.0.1", "localhost", "::1")
    if others and (tracking.is_local(uri) or loopback):
        raise ConfigError("tracking", [f"tracking URI {uri} is only reachable from this machine, but the Ray "
                                       f"cluster has nodes on {', '.join(sorted(others))}; run `mlflow server "
                                       "--host 0.0.0.0` on a host they reach and pass --tracking-uri "
                                       "http://HOST:PORT with that host's address"])


def init_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to `address` (or $RAY_ADDRESS, set by `ray job submit`), else start a local Ray of our own
    (never an unrelated one that happens to run on this machine). Returns whether Ray is local."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        ray.init(address=address or "local", num_cpus=None if address else num_cpus, include_dashboard=False,
                 log_to_driver=False, logging_level="ERROR")
    return address is None


def check_resources(spec: SweepSpec) -> None:
    """On a fixed (local) Ray instance, a trial no node can hold stays pending forever: say so now.
    Not for clusters, whose autoscaler adds the nodes a pending trial asks for."""
    available = ray.cluster_resources()
    for name, need in (("CPU", spec.resources.cpu), ("GPU", spec.resources.gpu)):
        if need > available.get(name, 0):
            raise ConfigError(spec.source, [
                f"resources.{name.lower()}: each trial asks for {need} {name}, but the Ray cluster has "
                f"{available.get(name, 0):g}; lower it, or run on a cluster that has them (--address)"])


class Record(Callback):
    """Keeps the sweep's tables (`results.parquet`, ...) level with the trials' checkpoints."""

    def __init__(self, spec: SweepSpec, tables: dict[str, sweep_folder.SweepTable]):
        self.spec, self.tables = spec, tables

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        flow = self.spec.workflow
        try:
            sweep_folder.record(self.tables, trial.trial_id, self.spec.overrides(trial.config),
                                lambda name: fs.read_table(checkpoint.filesystem, f"{checkpoint.path}/{name}",
                                                           flow.run_tables[name]))
        except Exception as exc:  # noqa: BLE001 - the checkpoint keeps the rows; resume/sync collects them
            print(f"sweep tables: could not record {trial.trial_id} ({type(exc).__name__}: {exc}); its "
                  "checkpoint keeps the rows, and `lth sweep resume` or `lth mlflow sync` collects them", flush=True)


class ReleaseClaims(Callback):
    """A trial that stops holds no dense-run claim: a waiting (or its retried) trial takes over."""

    def _release(self, trial) -> None:
        if (claims := claims_actor()) is not None:
            claims.release_trial.remote(trial.trial_id)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._release(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._release(trial)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._release(trial)


class PermanentErrors(Callback):
    """A trial that reported a permanent error (`trial.PERMANENT_ERROR`) is not retried when it raises next;
    a resumed sweep runs it again, with the sweep's retries (the fix may have been made meanwhile)."""

    def __init__(self, max_failures: int):
        self.max_failures = max_failures

    def on_trial_start(self, iteration, trials, trial, **info):
        trial.max_failures = self.max_failures

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if PERMANENT_ERROR in result:
            trial.max_failures = 0  # Tune's FailureConfig would retry every exception alike


def _trainable(spec: SweepSpec, target: tracking.Target | None, manifests: bool):
    fn = tune.with_parameters(run_trial, spec=spec, rewind_points=spec.rewind_points(), target=target,
                              manifests=manifests)
    return tune.with_resources(fn, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


def _trial_dirname(trial) -> str:
    return f"{sweep_folder.TRIAL_PREFIX}{trial.trial_id}"


def _restore(spec: SweepSpec, trainable, callbacks: list[Callback]) -> tune.Tuner:
    """Tune restores a sweep's callbacks from the state it pickled at launch, which holds that driver's
    state: they are replaced by this driver's. Sweeps launched before the sweep-folder module existed
    pickled their table class as `orchestrator.store.SweepTable`: that name resolves while unpickling."""
    legacy = types.ModuleType("orchestrator.store")
    legacy.SweepTable = sweep_folder.SweepTable
    sys.modules.setdefault(legacy.__name__, legacy)
    try:
        tuner = tune.Tuner.restore(spec.folder, trainable, resume_errored=True, param_space=param_space(spec))
    finally:
        if sys.modules.get(legacy.__name__) is legacy:
            del sys.modules[legacy.__name__]
    tuner._local_tuner.get_run_config().callbacks = callbacks
    return tuner


def run(spec: SweepSpec, *, resume: bool = False, tracking_uri: str | None = None) -> tune.ResultGrid:
    """Run the sweep (or, with `resume`, finish an interrupted one) on the connected Ray cluster."""
    spec = dataclasses.replace(spec, storage=fs.absolute(spec.storage))  # trials run in other working directories
    if spec.masks_from:
        sweep_folder.load_spec(spec.masks_from)  # a sweep folder, or a ConfigError saying what it is not
        spec = dataclasses.replace(spec, masks_from=fs.absolute(spec.masks_from))
    if not resume:
        sweep_folder.save_spec(spec)
    record = sweep_folder.sweep_record(spec, tracking_uri)
    if record["tracking_uri"]:
        check_tracking_reach(record["tracking_uri"])
    target = open_tracking(spec, record)
    flow = spec.workflow
    tables = sweep_folder.sweep_tables(spec.folder, spec.name, record["sweep_id"], flow)
    if resume:
        sweep_folder.collect(tables, flow, spec.overrides)
    claims = claims_actor(create=True)  # a named actor lives while its creator holds a handle
    trainable = _trainable(spec, target, record.get("manifests", False))
    callbacks = [Progress(spec), ReleaseClaims(), Record(spec, tables), PermanentErrors(spec.max_failures)]
    if resume:
        tuner = _restore(spec, trainable, callbacks)
    else:
        tuner = tune.Tuner(
            trainable, param_space=param_space(spec),
            # Reused trial processes skip a Python + torch start per trial (seconds, for small trials).
            tune_config=tune.TuneConfig(num_samples=spec.search.num_samples, search_alg=_search_alg(spec),
                                        max_concurrent_trials=spec.max_concurrent, reuse_actors=True,
                                        trial_dirname_creator=_trial_dirname),
            run_config=tune.RunConfig(
                name=spec.name, storage_path=spec.storage, verbose=0, callbacks=callbacks,
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                # Not Tune's num_to_keep: it forces an experiment snapshot every num_to_keep commits of any trial.
                checkpoint_config=tune.CheckpointConfig(num_to_keep=None)))
    results = tuner.fit()
    ray.kill(claims)
    trials = sweep_folder.collect(tables, flow, spec.overrides)
    final = {name: sweep_folder.compact(spec.folder, name) for name in tables}  # one file each, for whoever wants it
    if target is not None:
        statuses = {Path(r.path).name[len(sweep_folder.TRIAL_PREFIX):]: "FAILED" if r.error else "FINISHED"
                    for r in results}
        sync_folder(spec, target, final, statuses, trials)
    return results
