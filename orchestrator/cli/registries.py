"""`lth list`, `lth presets` and `lth data download`."""

from __future__ import annotations

import argparse
import importlib

# What `lth list NAME` lists: every registry, imported without the code of its entries.
REGISTRIES = {"models": "trainables.catalog:MODELS", "datasets": "trainables.catalog:DATASETS",
              "strategies": "trainables.catalog:STRATEGIES", "controls": "trainables.catalog:CONTROLS",
              "methods": "trainables.catalog:METHODS",
              "presets": "trainables.presets:PRESETS", "kinds": "orchestrator.workflows:KINDS"}


def _registry(name: str):
    module, attribute = REGISTRIES[name].split(":")
    return getattr(importlib.import_module(module), attribute)


def listing(args: argparse.Namespace) -> int:
    for entry in _registry(args.kind):
        print(f"{entry.name:<20} {entry.description}")
        for key, values in entry.metadata.get("params", {}).items():
            print(f"{'':<22}{key}: {' | '.join(values)} (default {values[0]}), e.g. {entry.name}({key}={values[-1]})")
        if args.kind == "controls":
            from trainables.catalog import RETRAIN_SCHEDULES

            for mode, what in RETRAIN_SCHEDULES.items():
                print(f"{'':<22}imp.retrain={mode}: {what}")
    return 0


def presets(args: argparse.Namespace) -> int:
    for entry in _registry("presets"):
        print(f"{entry.name:<15} {entry.description}")
    return 0


def download(args: argparse.Namespace) -> int:
    from trainables.data import download_dataset

    print(f"{args.name} is in {download_dataset(args.name, args.root)}")
    return 0
