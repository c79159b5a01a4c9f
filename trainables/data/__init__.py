"""Datasets as device-resident uint8 tensors with deterministic, resumable training batches."""

from trainables.data.base import Dataset, TrainBatches
from trainables.data.sources import (DATASETS, DatasetNotFoundError, Loader, data_root, download_dataset,
                                     load_dataset, steps_per_epoch)

__all__ = ["DATASETS", "Dataset", "DatasetNotFoundError", "Loader", "TrainBatches", "data_root",
           "download_dataset", "load_dataset", "steps_per_epoch"]
