"""Speed options (bf16 autocast, channels-last, torch.compile): recorded with the results, pruned weights
stay zero, and results stay within tolerance of the papers' fp32 eager runs on a short run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables.config import config_hash, from_dict
from orchestrator.packing import gpu_fraction, pack
from tests.sweep_helpers import sweep_spec
from trainables.imp import ImpRun, Reporter, peak_memory
from trainables.masks import Mask
from trainables.train import autocast, for_speed


def config(arch: str = "lenet_300_100", **updates):
    return from_dict({
        "model": {"arch": arch},
        # 8x8 images: at 16x16 a bf16 conv takes a slow oneDNN path on some CPUs (30x fp32's time: 500 s a test)
        "data": {"dataset": "synthetic", "shape": [3, 8, 8] if arch != "lenet_300_100" else [1, 8, 8],
                 "num_classes": 4, "train_size": 600, "test_size": 1000},
        "train": {"length": "120it", "batch_size": 30, "eval_every": "40it"},
        "imp": {"levels": 2, "controls": ["reinit"]},
        "runtime": {"device": "cpu"},
    }).with_updates(updates)


def run(cfg, out):
    table = ImpRun(cfg, out).run().to_pandas().sort_values(["level", "variant"]).reset_index(drop=True)
    return table


def assert_pruned_weights_zero(out, level: int) -> None:
    mask = Mask.from_state(torch.load(out / f"checkpoints/level_{level:03d}/mask.pt"))
    trained = torch.load(out / f"checkpoints/level_{level:03d}/weights.pt")
    assert all((trained[f"{n}.weight"][~keep] == 0).all() for n, keep in mask.tensors.items())


def test_bf16_keeps_batchnorm_and_the_loss_in_fp32():
    model = for_speed(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 14 * 14, 2)),
                      "bf16", channels_last=False, compile=False)
    seen = {}
    model[1].register_forward_hook(lambda m, args, out: seen.update(bn_in=args[0].dtype, bn_out=out.dtype))
    with autocast(torch.device("cpu"), "bf16"):
        logits = model(torch.randn(2, 3, 16, 16))
    assert logits.dtype == torch.bfloat16  # the matmul ran in bf16
    assert seen == {"bn_in": torch.float32, "bn_out": torch.float32}
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["lenet_300_100", "conv2"])
def test_bf16_results_within_tolerance_of_fp32_and_recorded(tmp_path, arch):
    fp32 = run(config(arch), tmp_path / "fp32")
    bf16_cfg = config(arch, **{"train.precision": "bf16"})
    assert config_hash(bf16_cfg) != config_hash(config(arch))  # it changes the numbers: a run of its own
    bf16 = run(bf16_cfg, tmp_path / "bf16")
    assert set(bf16.precision) == {"bf16"} and set(fp32.precision) == {"fp32"} and set(bf16.device) == {"cpu"}
    assert (bf16.weights_remaining == fp32.weights_remaining).all()
    assert (bf16.test_accuracy - fp32.test_accuracy).abs().max() <= 0.05
    assert_pruned_weights_zero(tmp_path / "bf16", 2)


@pytest.mark.slow
def test_channels_last_gives_the_same_run_and_is_recorded(tmp_path):
    plain = run(config("conv2"), tmp_path / "plain")
    cfg = config("conv2", **{"runtime.channels_last": True})
    assert config_hash(cfg) == config_hash(config("conv2"))  # a layout, not a different experiment
    imp = ImpRun(cfg, tmp_path / "nhwc")
    conv = next(m for m in imp.new_model(0).modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    nhwc = imp.run().to_pandas().sort_values(["level", "variant"]).reset_index(drop=True)
    assert nhwc.channels_last.all() and not plain.channels_last.any()
    assert (nhwc.weights_remaining == plain.weights_remaining).all()
    assert (nhwc.test_accuracy - plain.test_accuracy).abs().max() <= 0.03  # float reassociation, amplified by SGD
    assert_pruned_weights_zero(tmp_path / "nhwc", 2)


class GraphCount(Reporter):
    """The number of distinct compiled graphs when each level finishes."""

    def __init__(self):
        self.graphs = []

    def committed(self, level, rows):
        from torch._dynamo.utils import counters

        self.graphs.append(counters["stats"]["unique_graphs"])


@pytest.mark.slow
def test_compile_once_for_all_levels_and_within_tolerance(tmp_path):
    eager = run(config(), tmp_path / "eager")
    torch._dynamo.reset()
    count = GraphCount()
    compiled = ImpRun(config(**{"runtime.compile": True}), tmp_path / "compiled", count).run().to_pandas()
    compiled = compiled.sort_values(["level", "variant"]).reset_index(drop=True)
    # The dense run compiles training and evaluation (grad mode, batch sizes); every later level trains
    # new model objects whose masks change in place between steps, and compiles nothing more.
    assert len(count.graphs) == 3 and count.graphs[0] > 0 and len(set(count.graphs)) == 1, count.graphs
    assert compiled.compiled.all() and not eager.compiled.any()
    assert (compiled.test_accuracy - eager.test_accuracy).abs().max() <= 0.03
    assert_pruned_weights_zero(tmp_path / "compiled", 2)


def test_gpu_fraction_packs_as_many_trials_as_fit():
    mib, gib = 2**20, 2**30
    assert gpu_fraction(100 * mib, 80 * gib) == 1 / 8  # LeNet on an H100: capped at 8 per card
    assert gpu_fraction(3 * gib, 24 * gib) == 1 / 4  # 3 GiB x 1.5 + context: four on an A10G
    assert gpu_fraction(20 * gib, 24 * gib) == 1.0  # VGG-19-sized: a card each


@pytest.mark.slow
def test_pack_auto_without_a_gpu_leaves_resources_alone(log, capsys):
    spec = sweep_spec(log.parent, resources={"cpu": 1})
    assert pack(spec, local=True) is spec
    assert "has no GPU" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_peak_memory_probe_on_cuda_and_the_suggested_fraction(log):
    cfg = config(**{"runtime.device": "cuda"})
    peak = peak_memory(cfg)
    total = torch.cuda.get_device_properties(0).total_memory
    assert 0 < peak < total and 0 < gpu_fraction(peak, total) <= 1
    assert peak_memory(config()) is None  # on CPU there is nothing to measure
