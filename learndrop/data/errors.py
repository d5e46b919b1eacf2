"""The data package's error types: every message is a single line that says what to do."""

from __future__ import annotations

__all__ = [
    "CorruptDatasetError", "DatasetError", "DatasetFormatError", "DatasetNotFoundError",
    "UnknownDatasetError", "one_line",
]


class DatasetError(Exception):
    """Base class of the data package's errors; every message is a single line."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset's files are nowhere to be found (and could not be downloaded)."""


class UnknownDatasetError(DatasetError, ValueError):
    """The dataset name is not one of `DATASET_NAMES` or `folder:PATH`."""


class CorruptDatasetError(DatasetError, ValueError):
    """An archive, IDX file or image cannot be read; the message names the file."""


class DatasetFormatError(DatasetError, ValueError):
    """The files are readable but not laid out as expected (classes, sizes, splits)."""


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines too) as one space."""
    return " ".join(str(text).split())
