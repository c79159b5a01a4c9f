"""Orchestration overhead: a sweep of N small trials through Ray Tune against the same IMP runs
called directly, one after another, in one process.

The trials differ in seed (so none shares a dense run and both sides do the same training),
and every run uses one CPU thread: the sweep runs one trial at a time, so the ratio is the
cost of orchestration alone: starting Ray, Tune's scheduling, trial processes, a checkpoint
per level, the dense-run claims. It also times the sweep as a user would run it (one trial
per core), where running trials side by side more than pays for that cost.

One thread on both sides because Tune runs a trial's code in a thread of its own, and there
multi-threaded torch CPU kernels were about 2x slower than in a process's main thread on
this project's 2-core machine (a torch/OpenMP effect, the same without Ray): one CPU per
trial, the sweep files' default, does not pay it.

    python bench/sweep_overhead.py [--trials 6] [--length 3000it] [--levels 3]

Prints wall-clock seconds and ratios (target: sweep / direct <= 1.15).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import torch  # noqa: E402

from trainables.imp import ImpRun  # noqa: E402


def sweep_raw(args, storage: Path, name: str, cpu: float, concurrent: int) -> dict:
    """`trials` seeds of a small LeNet IMP run, `concurrent` trials at a time."""
    return {"name": name, "storage": str(storage), "resources": {"cpu": cpu}, "max_concurrent": concurrent,
            "base": {"preset": "quickstart", "train": {"length": args.length},
                     "imp": {"levels": args.levels, "controls": []}, "runtime": {"device": "cpu"}},
            "space": {"seed": list(range(args.trials))}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--length", default="3000it")
    parser.add_argument("--levels", type=int, default=3)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="lth-bench-"))

    from orchestrator.spec import parse_sweep

    serial = parse_sweep(sweep_raw(args, work / "serial", "serial", 1, 1), "bench")
    configs = [serial.trial_config(t) for t in serial.grid()]

    torch.set_num_threads(1)
    tic = time.perf_counter()
    for i, cfg in enumerate(configs):
        ImpRun(cfg, work / "direct" / str(i)).run()
    direct = time.perf_counter() - tic

    tic = time.perf_counter()
    from orchestrator import tuner

    tuner.init_ray(num_cpus=cores)
    started = time.perf_counter()
    results = tuner.run(serial)
    sweep_serial = time.perf_counter() - tic
    ray_start = started - tic
    assert results.num_terminated == len(configs), "the sweep did not finish every trial"

    parallel = parse_sweep(sweep_raw(args, work / "parallel", "parallel", 1, cores), "bench")  # no dense to reuse
    tic = time.perf_counter()
    tuner.run(parallel)
    sweep_parallel = time.perf_counter() - tic + ray_start  # a user's sweep starts Ray too

    print(f"\n{len(configs)} IMP runs of LeNet-300-100 on mnist5k, {args.levels + 1} trainings of {args.length} "
          f"each, one CPU thread each; {cores} CPU cores, torch {torch.__version__}")
    print(f"  direct, one after another:           {direct:7.1f} s")
    print(f"  sweep, one trial at a time:          {sweep_serial:7.1f} s  (of which starting Ray {ray_start:.1f} s)")
    print(f"  sweep, one trial per core:           {sweep_parallel:7.1f} s")
    print(f"  overhead ratio sweep/direct:         {sweep_serial / direct:7.3f}  (target <= 1.15)")
    print(f"  without starting Ray:                {(sweep_serial - ray_start) / direct:7.3f}")
    print(f"  one trial per core, sweep/direct:    {sweep_parallel / direct:7.3f}")


if __name__ == "__main__":
    main()
