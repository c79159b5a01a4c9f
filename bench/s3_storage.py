"""What S3 storage costs the quickstart sweep against a local folder: bytes uploaded per trial and per
shared dense run, and wall-clock seconds of the same sweep on both.

The S3 endpoint is moto's server on 127.0.0.1 (tests/s3_helpers.py): the seconds measure the S3
protocol's overhead (requests, multipart uploads, listings) on loopback, NOT real S3 latency or
bandwidth, which add per request and per byte. Every checkpoint is kept (checkpoints.keep = levels + 1)
so that what the bucket holds is every byte the trials uploaded; train.length is shortened (default
300 iterations) because the bytes do not depend on it and the seconds' difference barely does.

    flock /tmp/lth-heavy.lock nice -n 5 python bench/s3_storage.py [--length 300it]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' moto fixture, run from anywhere

from tests.s3_helpers import start_moto  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", default="300it")
    parser.add_argument("--sweep", default="sweeps/quickstart.yaml")
    args = parser.parse_args()
    server = start_moto()
    os.environ.update(server.env)  # before Ray starts: its workers take this environment
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="lth-bench-cache-")  # no dense run cached from before
    import ray
    import yaml

    from orchestrator import tuner
    from orchestrator.spec import parse_sweep

    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        raw = yaml.safe_load(Path(args.sweep).read_text())
        raw["base"].setdefault("train", {})["length"] = args.length
        raw["checkpoints"] = {"keep": raw["base"]["imp"]["levels"] + 1}
        raw["tracking"] = {"enabled": False}
        spec = parse_sweep(raw, args.sweep, yaml.safe_dump(raw))
        seconds = {}
        for where, storage in (("local folder", tempfile.mkdtemp(prefix="lth-bench-")), ("moto S3", server.uri("b"))):
            start = time.perf_counter()
            results = tuner.run(dataclasses.replace(spec, storage=storage))
            seconds[where] = time.perf_counter() - start
            assert results.num_errors == 0 and results.num_terminated == len(results)
        keys = server.keys("b/")
        per_trial, per_dense = collections.Counter(), collections.Counter()
        for key, size in keys.items():
            parts = key.split("/")
            if parts[1] == "dense" and len(parts) > 3:
                per_dense[parts[2]] += size
            elif len(parts) > 3 and parts[2].startswith("trial_"):
                per_trial[parts[2]] += size
        sweep_files = {k.split("/", 2)[2]: s for k, s in keys.items() if k.count("/") == 2 and not k.endswith("/")}
        print(f"{spec.name} ({args.sweep}, train.length {args.length}, {spec.base.imp.levels} levels, "
              f"every checkpoint kept): {len(per_trial)} trials, {len(per_dense)} dense runs")
        mib = 1024 * 1024
        print(f"uploaded per trial: {sum(per_trial.values()) / len(per_trial) / mib:.2f} MiB mean "
              f"({min(per_trial.values()) / mib:.2f}-{max(per_trial.values()) / mib:.2f}), "
              f"{sum(per_trial.values()) / len(per_trial) / (spec.base.imp.levels + 1) / mib:.2f} MiB per checkpoint")
        print(f"uploaded per dense run: {sum(per_dense.values()) / len(per_dense) / mib:.2f} MiB mean")
        print("sweep folder's own files (final sizes, rewritten after commits): " + ", ".join(
            f"{name} {size / 1024:.1f} KiB" for name, size in sorted(sweep_files.items())))
        local, s3 = seconds["local folder"], seconds["moto S3"]
        print(f"seconds: local folder {local:.1f}, moto S3 on 127.0.0.1 {s3:.1f}; S3 / local = {s3 / local:.2f} "
              "(loopback: not real S3 latency)")
    finally:
        ray.shutdown()
        server.process.terminate()
        server.process.wait(30)


if __name__ == "__main__":
    main()
