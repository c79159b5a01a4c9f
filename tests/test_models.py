import math

import pytest
import torch
from torch import nn

from trainables.config import ModelConfig
from trainables.catalog import MODELS
from trainables.models import build_model
from trainables.registry import UnknownNameError


def natural_shape(arch: str) -> tuple[int, int, int]:
    return (1, 28, 28) if arch.startswith("lenet") else (3, 32, 32)


def build(arch: str, seed: int = 0, init: str = "glorot_normal", shape=None) -> nn.Module:
    return build_model(ModelConfig(arch=arch, init=init), shape or natural_shape(arch), 10, seed)


def prunable(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def count(model: nn.Module, kind: type = nn.Module, name: str = "") -> int:
    return sum(m.weight.numel() for n, m in prunable(model).items() if isinstance(m, kind) and name in n)


@pytest.mark.parametrize("arch", MODELS.names())
def test_builds_and_forwards_with_fc_as_output_layer(arch):
    model = build(arch)
    with torch.no_grad():
        assert model(torch.randn(2, *natural_shape(arch))).shape == (2, 10)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert linears[-1] == "fc"
    assert all(m.bias is None or not m.bias.any() for m in prunable(model).values())


@pytest.mark.parametrize("arch, total, conv", [
    ("lenet_300_100", 266_200, 0),
    ("conv2", 4_300_992, 38_592),  # paper: 4.3M, conv 38K
    ("conv4", 2_425_024, 259_776),  # paper: 2.4M, conv 260K
    ("conv6", 2_261_184, 1_144_512),  # paper: 1.7M (inconsistent with its own layer list), conv 1.1M
    ("vgg19", 20_024_000, 20_018_880),  # paper: 20.0M
    ("resnet20", 270_896, 270_256),  # paper: 274K
])
def test_weight_counts_match_the_papers(arch, total, conv):
    model = build(arch)
    assert (count(model), count(model, nn.Conv2d)) == (total, conv)


def test_resnet20_and_vgg19_output_and_shortcut_layers():
    resnet, vgg = build("resnet20"), build("vgg19")
    assert count(resnet, name="shortcut") == 2560
    assert isinstance(resnet.get_submodule("blocks.3.shortcut.0"), nn.Conv2d)
    assert resnet.fc.weight.numel() == 640
    assert count(resnet) == pytest.approx(274_000, rel=0.02)
    assert vgg.fc.weight.numel() == 5120
    assert count(vgg) == pytest.approx(20.0e6, rel=0.01)


def test_lenet_infers_input_size_and_vgg_takes_other_sizes():
    lenet = build("lenet_300_100", shape=(3, 32, 32))
    assert lenet.fc1.in_features == 3072
    assert lenet(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert build("vgg11", shape=(3, 64, 64))(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_seed_alone_decides_weights_and_global_rng_is_untouched():
    rng = torch.get_rng_state()
    a, b, c = build("conv2", seed=1), build("conv2", seed=1), build("conv2", seed=2)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(a.fc1.weight, c.fc1.weight)


@pytest.mark.parametrize("init, std", [
    ("glorot_normal", math.sqrt(2 / (784 + 300))),
    ("glorot_uniform", math.sqrt(2 / (784 + 300))),
    ("kaiming_normal", math.sqrt(2 / 784)),
    ("kaiming_uniform", math.sqrt(2 / 784)),
])
def test_init_scheme_sets_weight_std(init, std):
    weight = build("lenet_300_100", init=init).fc1.weight  # 235K samples: std within ~0.3%
    assert weight.std().item() == pytest.approx(std, rel=0.02)
    assert abs(weight.mean().item()) < 0.01 * std


def test_batchnorm_starts_as_identity():
    bn = build("resnet20").bn
    assert torch.equal(bn.weight, torch.ones(16)) and not bn.bias.any()
    assert not bn.running_mean.any() and torch.equal(bn.running_var, torch.ones(16))


def test_channels_last_gives_same_logits():
    model, x = build("resnet20").eval(), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        assert torch.allclose(model(x.to(memory_format=torch.channels_last)), expected, atol=1e-5)


def test_unknown_arch_lists_known_names():
    with pytest.raises(UnknownNameError, match="resnet20") as info:
        build_model(ModelConfig(arch="resnet18"), (3, 32, 32), 10, 0)
    assert all(name in str(info.value) for name in MODELS.names())


@pytest.mark.parametrize("arch", MODELS.names())
def test_width_scales_every_hidden_layer_and_keeps_inputs_and_outputs(arch):
    base = build_model(ModelConfig(arch=arch, width=0.25), natural_shape(arch), 10, 0)  # small: a fast test
    wide = build_model(ModelConfig(arch=arch, width=0.5), natural_shape(arch), 10, 0)
    narrow, broad = prunable(base), prunable(wide)
    assert narrow.keys() == broad.keys()
    for name, m in narrow.items():
        out, inp = m.weight.shape[:2]
        assert broad[name].weight.shape[0] == (out if name == "fc" else 2 * out)
        assert broad[name].weight.shape[1] in ((inp,) if m is next(iter(narrow.values())) else (2 * inp,))
    with torch.no_grad():
        assert wide(torch.randn(2, *natural_shape(arch))).shape == (2, 10)
