"""Building, running and resuming a sweep's Ray Tune experiment, and the live progress display."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any, Mapping

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our Progress callback is the display

import pyarrow.fs as pafs  # noqa: E402
import ray  # noqa: E402
import yaml  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune import Callback  # noqa: E402

from orchestrator import store, tracking  # noqa: E402
from orchestrator.dense_cache import claims_actor, filesystem  # noqa: E402
from orchestrator.spec import Domain, SweepSpec, header_comment, parse_sweep  # noqa: E402
from orchestrator.trial import run_trial  # noqa: E402
from trainables.config import ConfigError, to_dict  # noqa: E402



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


def save_spec(spec: SweepSpec) -> None:
    """Store the sweep, its base config fully resolved, in the sweep folder."""
    raw = yaml.safe_load(spec.text)
    raw["base"] = to_dict(spec.base)
    raw["resources"] = dataclasses.asdict(spec.resources)  # as run: `--pack auto` may have changed them
    fs, root = filesystem(spec.experiment)
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(f"{root}/{store.SWEEP_FILE}") as f:
        header = "".join(f"# {line}\n" for line in header_comment(spec.text).splitlines())
        f.write(f"# resolved copy of {spec.source}\n{header}".encode() + yaml.safe_dump(raw, sort_keys=False).encode())


def load_saved_spec(directory: str) -> SweepSpec:
    fs, root = filesystem(directory)
    path = f"{root}/{store.SWEEP_FILE}"
    try:
        with fs.open_input_stream(path) as f:
            text = f.read().decode()
    except (FileNotFoundError, OSError):
        raise ConfigError(directory, [f"no {store.SWEEP_FILE} here: not a sweep folder made by `lth sweep run` "
                                      "(it is <storage>/<sweep name>)"]) from None
    spec = parse_sweep(yaml.safe_load(text), path, text)
    storage = directory.rstrip("/").rsplit("/", 1)[0] if "://" in directory else str(Path(root).parent)
    return dataclasses.replace(spec, storage=storage, name=Path(root).name)


def identity(spec: SweepSpec, tracking_uri: str | None = None) -> dict[str, Any]:
    """The sweep's id and MLflow location, fixed at its first launch (`sweep.json` in its folder);
    a `tracking_uri` given later (to resume against a server) replaces the stored one."""
    stored = store.read_json(spec.experiment, tracking.SWEEP_FILE_JSON)
    if stored is None or tracking_uri:
        uri = tracking.resolve_uri(tracking_uri, spec.tracking.uri, spec.storage) if spec.tracking.enabled else None
        stored = {"sweep_id": (stored or {}).get("sweep_id") or uuid.uuid4().hex[:12], "tracking_uri": uri,
                  "experiment": spec.tracking.experiment or spec.name}
        fs, root = filesystem(spec.experiment)
        fs.create_dir(root, recursive=True)
        with fs.open_output_stream(f"{root}/{tracking.SWEEP_FILE_JSON}") as f:
            f.write(json.dumps(stored, indent=2).encode())
    return stored


def sweep_params(spec: SweepSpec) -> dict[str, str]:
    """The parent run's params: the search, the swept values and the base config."""
    swept = {f"space.{key}": json.dumps(list(d.values)) if d.kind == "grid" else f"{d.kind}{list(d.values)}"
             for key, d in spec.space}
    if spec.cases:
        swept["cases"] = json.dumps([dict(c) for c in spec.cases])[:6000]
    search = {f"search.{k}": str(v) for k, v in dataclasses.asdict(spec.search).items()}
    return {**search, **swept, **tracking.flat_params(to_dict(spec.base), "base.")}


def open_tracking(spec: SweepSpec, ident: Mapping[str, Any]) -> tracking.Target | None:
    """The sweep's MLflow parent run; None (and a note) when MLflow is off or cannot be reached."""
    uri = ident["tracking_uri"]
    if uri is None:
        print("MLflow: not tracked (tracking.enabled: false, or remote storage without a tracking URI: "
              "pass --tracking-uri http://HOST:PORT of an `mlflow server`)", flush=True)
        return None
    try:
        target = tracking.open_sweep(uri, ident["experiment"], spec.name, ident["sweep_id"], spec.text,
                                     sweep_params(spec))
    except Exception as exc:  # noqa: BLE001 - MLflow is a view: the sweep runs without it
        print(f"MLflow: cannot reach {uri} ({type(exc).__name__}: {str(exc)[:200]}); the sweep runs untracked. "
              f"Afterwards: lth mlflow sync {spec.experiment}", flush=True)
        return None
    print(f"MLflow: {uri}, experiment {ident['experiment']!r} (lth ui {spec.storage})", flush=True)
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


def exists(spec: SweepSpec) -> bool:
    fs, root = filesystem(spec.experiment)
    return fs.get_file_info(f"{root}/{store.SWEEP_FILE}").type == pafs.FileType.File


def init_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to `address` (or $RAY_ADDRESS, set by `ray job submit`), else start a local Ray of our own
    (never an unrelated one that happens to run on this machine). Returns whether Ray is local."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        ray.init(address=address or "local", num_cpus=None if address else num_cpus, include_dashboard=False,
                 log_to_driver=False, logging_level="ERROR")
    return address is None


def _display_only(method):
    """Tune stops a sweep when a callback raises; a display problem must not cost a sweep."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - anything, reported and then ignored
            print(f"(progress display failed: {type(exc).__name__}: {exc})", flush=True)

    return wrapper


class Progress(Callback):
    """Live progress: a line per finished level and trial, and trial counts when they change."""

    def __init__(self, spec: SweepSpec, every: float = 30.0):
        self.spec, self.every = spec, every
        self.labels: dict[str, str] = {}
        self.mlflow_failures: dict[str, int] = {}
        self.last_counts: tuple | None = None
        self.last_time = 0.0

    def _print(self, text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)

    def _label(self, trial) -> str:
        """'trial N (swept values)', N as in `--dry-run` for grid sweeps (Tune numbers their trials in order)."""
        if trial.trial_id not in self.labels:
            swept = self.spec.overrides(trial.config)
            values = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in swept.items()) or "base"
            suffix = trial.trial_id.rsplit("_", 1)[-1]  # grid trials end in _NNNNN; searchers' ids are random
            number = int(suffix) + 1 if suffix.isdigit() else len(self.labels) + 1
            self.labels[trial.trial_id] = f"trial {number} ({values})"
        return self.labels[trial.trial_id]

    @_display_only
    def on_trial_result(self, iteration, trials, trial, result, **info):
        parts = [f"level {result['level']}"]
        if "weights_remaining" in result:
            parts.append(f"{result['weights_remaining']:.1%} remaining")
        for variant in ("ticket", "reinit", "random_mask"):
            if f"{variant}_accuracy" in result:
                parts.append(f"{variant} {result[f'{variant}_accuracy']:.2%}")
        if result.get("replicates"):
            parts.append(f"{result['replicates']} pair(s) of copies")
        for split in ("train", "val", "test"):
            if f"instability_{split}" in result:
                parts.append(f"{split} instability {result[f'instability_{split}']:.2%}")
        self._print(f"{self._label(trial)}: " + ", ".join(parts))
        if result.get("mlflow_failures", 0) > self.mlflow_failures.get(trial.trial_id, 0):
            self.mlflow_failures[trial.trial_id] = result["mlflow_failures"]
            self._print(f"{self._label(trial)}: MLflow logging failed {result['mlflow_failures']} time(s), retrying; "
                        "results are safe in Parquet")

    @_display_only
    def on_trial_complete(self, iteration, trials, trial, **info):
        self._print(f"{self._label(trial)}: done")

    @_display_only
    def on_trial_error(self, iteration, trials, trial, **info):
        self._print(f"{self._label(trial)}: FAILED after {self.spec.max_failures} retries; "
                    f"the error is in {trial.path}/error.txt")

    @_display_only
    def on_trial_recover(self, iteration, trials, trial, **info):
        self._print(f"{self._label(trial)}: failed; retrying from its last finished level")

    @_display_only
    def on_step_end(self, iteration, trials, **info):
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.status] = counts.get(t.status, 0) + 1
        key = tuple(sorted(counts.items()))
        if key != self.last_counts or time.time() - self.last_time > self.every:
            self.last_counts, self.last_time = key, time.time()
            names = [("RUNNING", "running"), ("PENDING", "pending"), ("TERMINATED", "done"), ("ERROR", "failed"),
                     ("PAUSED", "paused")]
            self._print("trials: " + ", ".join(f"{counts.get(s, 0)} {n}" for s, n in names if counts.get(s) or
                                               s in ("RUNNING", "PENDING", "TERMINATED")))


class Record(Callback):
    """Keeps the sweep's tables (`results.parquet`, ...) level with the trials' checkpoints."""

    def __init__(self, spec: SweepSpec, tables: dict[str, store.SweepTable]):
        self.spec, self.tables = spec, tables

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        try:
            store.record(self.tables, trial.trial_id, self.spec.overrides(trial.config),
                         lambda name: store.checkpoint_rows(checkpoint.filesystem, checkpoint.path, name))
        except Exception as exc:  # noqa: BLE001 - the checkpoint keeps the rows; resume/sync collects them
            print(f"results.parquet: could not record {trial.trial_id} ({type(exc).__name__}: {exc}); its "
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


def _trainable(spec: SweepSpec, target: tracking.Target | None):
    fn = tune.with_parameters(run_trial, spec=spec, rewind_points=spec.rewind_points(), target=target)
    return tune.with_resources(fn, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


def check_resources(spec: SweepSpec) -> None:
    """On a fixed (local) Ray instance, a trial no node can hold stays pending forever: say so now.
    Not for clusters, whose autoscaler adds the nodes a pending trial asks for."""
    available = ray.cluster_resources()
    for name, need in (("CPU", spec.resources.cpu), ("GPU", spec.resources.gpu)):
        if need > available.get(name, 0):
            raise ConfigError(spec.source, [
                f"resources.{name.lower()}: each trial asks for {need} {name}, but the Ray cluster has "
                f"{available.get(name, 0):g}; lower it, or run on a cluster that has them (--address)"])


def _trial_dirname(trial) -> str:
    return f"{store.TRIAL_PREFIX}{trial.trial_id}"


def run(spec: SweepSpec, *, resume: bool = False, tracking_uri: str | None = None) -> tune.ResultGrid:
    """Run the sweep (or, with `resume`, finish an interrupted one) on the connected Ray cluster."""
    if not spec.is_uri:  # absolute: trials run in other working directories
        spec = dataclasses.replace(spec, storage=filesystem(spec.storage)[1])
    if spec.masks_from:
        load_saved_spec(spec.masks_from)  # a sweep folder, or a ConfigError saying what it is not
        if "://" not in spec.masks_from:
            spec = dataclasses.replace(spec, masks_from=filesystem(spec.masks_from)[1])
    if not resume:
        save_spec(spec)
    ident = identity(spec, tracking_uri)
    if ident["tracking_uri"]:
        check_tracking_reach(ident["tracking_uri"])
    target = open_tracking(spec, ident)
    tables = store.sweep_tables(spec.experiment, spec.name, ident["sweep_id"], spec.kind)
    if resume:
        store.collect(tables, spec.overrides)
    claims = claims_actor(create=True)  # a named actor lives while its creator holds a handle
    trainable = _trainable(spec, target)
    callbacks = [Progress(spec), ReleaseClaims(), Record(spec, tables)]
    if resume:
        tuner = tune.Tuner.restore(spec.experiment, trainable, resume_errored=True, param_space=param_space(spec))
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
                checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.keep_checkpoints)))
    results = tuner.fit()
    ray.kill(claims)
    trials = store.collect(tables, spec.overrides)
    if target is not None:
        statuses = {Path(r.path).name[len(store.TRIAL_PREFIX):]: "FAILED" if r.error else "FINISHED" for r in results}
        tracking.sync_folder(spec, target, {name: t.table() for name, t in tables.items()}, statuses, trials)
    return results
