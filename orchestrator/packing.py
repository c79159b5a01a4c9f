"""Packing small trials onto GPUs: each trial asks for a fraction of a card, sized from a measured probe.

Ray's `gpu: 0.25` is a scheduling label, not a memory limit: four such trials share a card only if
their memory fits. `suggest` runs one short training of each distinct trial shape on a GPU node,
reads the peak memory PyTorch reserved, and picks the largest number of trials per card whose
peaks (with headroom, plus a CUDA context each) fit in the card's memory. Small models leave most
of a GPU's compute idle, so sharing a card raises a sweep's throughput.
"""

from __future__ import annotations

import dataclasses

import ray

from orchestrator.spec import SweepSpec
from trainables.config import Config

CONTEXT_BYTES = 600 * 2**20  # per process, outside PyTorch's allocator (CUDA context, cuDNN/cuBLAS handles)
HEADROOM = 1.5  # peaks vary with batches and evaluation; fragmentation
MAX_PER_GPU = 8  # beyond this, small trials compete for the card's compute more than they share it


def gpu_fraction(peak: int, total: int) -> float:
    """The GPU fraction per trial: 1/n for the largest n <= MAX_PER_GPU whose trials fit in `total` bytes."""
    per_trial = peak * HEADROOM + CONTEXT_BYTES
    return 1 / max(1, min(MAX_PER_GPU, int(total // per_trial)))


@ray.remote(num_gpus=1)
def _probe(cfg: Config) -> tuple[int, int, str]:
    import torch

    from trainables.imp import peak_memory

    device = torch.device("cuda")
    return peak_memory(cfg), torch.cuda.get_device_properties(device).total_memory, torch.cuda.get_device_name(device)


def _shape(cfg: Config) -> tuple:
    """What decides a trial's memory (not its learning rate or seed)."""
    return (cfg.model.arch, cfg.data, cfg.train.batch_size, cfg.train.precision, cfg.runtime.channels_last,
            cfg.runtime.eval_batch_size)


def suggest(spec: SweepSpec, local: bool) -> tuple[float | None, str]:
    """(GPU fraction per trial, a line saying why); None where there is no GPU to probe on."""
    if local and not ray.cluster_resources().get("GPU"):
        return None, "--pack auto: this Ray instance has no GPU; trials keep resources as in the sweep file"
    trials = spec.grid()
    configs = [spec.trial_config(t) for t in trials] if trials is not None else [spec.base]
    shapes = {_shape(c): c.with_updates({"runtime.device": "cuda"}) for c in configs}
    probes = ray.get([_probe.remote(c) for c in shapes.values()])
    peak, total, name = max(probes)
    fraction = gpu_fraction(peak, total)
    return fraction, (f"--pack auto: peak {peak / 2**20:,.0f} MiB per trial (largest of {len(probes)} probe(s) on "
                      f"{name}, {total / 2**30:.0f} GiB): gpu {fraction:g}, {round(1 / fraction)} trial(s) per GPU")


def pack(spec: SweepSpec, local: bool) -> SweepSpec:
    """`spec` with the suggested GPU fraction per trial (unchanged where there is no GPU)."""
    fraction, line = suggest(spec, local)
    print(line, flush=True)
    if fraction is None:
        return spec
    return dataclasses.replace(spec, resources=dataclasses.replace(spec.resources, gpu=fraction))
