"""Datasets as in-memory uint8 tensors, and device-side batching with augmentation.

Independent of the rest of learndrop: imports torch, torchvision (downloads only), PIL, numpy.
"""

from learndrop.data.datasets import (
    DATASET_NAMES,
    SYSTEM_COPIES,
    CorruptDatasetError,
    DatasetError,
    DatasetFormatError,
    DatasetNotFoundError,
    ImageDataset,
    UnknownDatasetError,
    balanced_subset,
    cache_dir,
    load_dataset,
    resize_uint8,
)
from learndrop.data.folder import ImageTree, read_image_tree
from learndrop.data.loader import DeviceLoader, make_loaders

__all__ = [
    "DATASET_NAMES",
    "SYSTEM_COPIES",
    "CorruptDatasetError",
    "DatasetError",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "DeviceLoader",
    "ImageDataset",
    "ImageTree",
    "UnknownDatasetError",
    "balanced_subset",
    "cache_dir",
    "load_dataset",
    "make_loaders",
    "read_image_tree",
    "resize_uint8",
]
