"""Datasets as device-resident uint8 tensors with deterministic, resumable training batches."""

from trainables.data.base import Dataset, TrainBatches
from trainables.data.sources import DatasetNotFoundError, download_dataset, load_dataset

__all__ = ["Dataset", "DatasetNotFoundError", "TrainBatches", "download_dataset", "load_dataset"]
