"""Named starting configs: one per model with its paper's settings, plus a quick offline demo.

Each preset's description is its source in one line; values are partial configs laid over the
defaults (`trainables.config`), so `lth imp --preset resnet20 --set train.lr=0.03` works.
"""

from __future__ import annotations

from typing import Any

from trainables.registry import Registry

# Each entry's target is its partial config: a nested mapping of sections.
PRESETS: Registry[dict[str, Any]] = Registry("preset", "lth presets")


def _preset(name: str, source: str, **values: Any) -> None:
    PRESETS.add(name, source, values)


# Every paper preset evaluates often enough that the early-stop iteration resolves to 1% of training or better
# (the LTH paper plots it for Conv-2/4/6 at 2-10K iterations).


def _conv(name: str, lr: float, iterations: int, conv_rate: float) -> None:
    _preset(name, f"Frankle & Carbin 2019, Fig. 2: {name.capitalize()} on CIFAR-10, Adam {lr:g}, batch 60, "
                  f"{iterations // 1000}K it, conv {conv_rate:.0%} / fc 20% / output 10% per level",
            model={"arch": name}, data={"dataset": "cifar10", "augment": False},
            train={"optimizer": "adam", "lr": lr, "batch_size": 60, "length": f"{iterations}it",
                   "eval_every": f"{iterations // 100}it"},
            prune={"scope": "layerwise", "rate": 0.2, "conv_rate": conv_rate, "output_rate": 0.1},
            imp={"controls": ["reinit", "random_mask"]})


def _cifar_sgd(name: str, source: str, batch: int, length: str, milestones: list[str], exclude: list[str],
               eval_every: str, **model: str) -> None:
    _preset(name, source, model={"arch": name, **model}, data={"dataset": "cifar10"},
            train={"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": batch,
                   "length": length, "milestones": milestones, "eval_every": eval_every},
            prune={"scope": "global", "rate": 0.2, "exclude": exclude},
            imp={"controls": ["reinit", "random_mask"]})


_preset("lenet_300_100", "Frankle & Carbin 2019, Fig. 2: LeNet-300-100 on MNIST, Adam 1.2e-3, batch 60, 50K it, "
                         "fc 20% / output 10% per level",
        model={"arch": "lenet_300_100"}, data={"dataset": "mnist"},
        train={"optimizer": "adam", "lr": 1.2e-3, "batch_size": 60, "length": "50000it", "eval_every": "100it"},
        prune={"scope": "layerwise", "rate": 0.2, "output_rate": 0.1},
        imp={"controls": ["reinit", "random_mask"]})
_conv("conv2", 2e-4, 20000, 0.1)
_conv("conv4", 3e-4, 25000, 0.1)
_conv("conv6", 3e-4, 30000, 0.15)
_cifar_sgd("resnet20", "Frankle & Carbin 2019, §4 and Fig. 2: \"Resnet-18\" (ResNet-20) on CIFAR-10, SGD 0.1 "
                       "momentum 0.9, wd 1e-4, batch 128, 30K it, lr /10 at 20K and 25K, global 20% of convs",
           128, "30000it", ["20000it", "25000it"], ["fc", "*shortcut*"], "300it")
_cifar_sgd("resnet56", "ResNet-20's LTH schedule (Frankle & Carbin 2019, §4) applied to the deeper ResNet-56 "
                       "(He et al. 2016)", 128, "30000it", ["20000it", "25000it"], ["fc", "*shortcut*"], "300it")
_cifar_sgd("vgg19", "Frankle & Carbin 2019, §4 and Fig. 2: VGG-19 on CIFAR-10, SGD 0.1 momentum 0.9, wd 1e-4, "
                    "batch 64, 160 epochs, lr /10 at epochs 80 and 120, global 20% of convs, fc unpruned",
           64, "160ep", ["80ep", "120ep"], ["fc"], "1000it")
# The LMC paper trains 160 epochs of all 50K training images (62,400 iterations at batch 128) and initialises
# as its code does: Kaiming normal, BatchNorm weights U[0, 1).
_cifar_sgd("vgg16", "Frankle et al. 2020 (LMC), Table 1: VGG-16 on CIFAR-10, SGD 0.1 momentum 0.9, wd 1e-4, "
                    "batch 128, 62,400 it (160 epochs of 50K), lr /10 at 31,200 and 46,800, global 20%, fc unpruned",
           128, "62400it", ["31200it", "46800it"], ["fc"], "600it", init="kaiming_normal", bn_init="uniform")
_cifar_sgd("vgg11", "VGG-16's LMC schedule (Frankle et al. 2020, Table 1) applied to VGG-11 (Simonyan & "
                    "Zisserman 2015, CIFAR variant with BatchNorm)", 128, "62400it", ["31200it", "46800it"], ["fc"],
           "600it", init="kaiming_normal", bn_init="uniform")
_preset("quickstart", "LeNet-300-100 on the bundled 5,000 MNIST digits (offline), 5 levels of 50% (to 3% "
                      "remaining, faster than the paper's 20%) with both controls; under a minute on 2 CPU cores",
        model={"arch": "lenet_300_100"}, data={"dataset": "mnist5k"},
        train={"optimizer": "adam", "lr": 1.2e-3, "batch_size": 60, "length": "1500it", "eval_every": "100it"},
        prune={"scope": "layerwise", "rate": 0.5},
        imp={"levels": 5, "controls": ["reinit", "random_mask"]})
