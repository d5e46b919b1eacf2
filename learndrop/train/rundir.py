"""The run directory: refuse to clobber results, write every file atomically."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch

from learndrop.atomic import atomic_write

__all__ = ["RunDir", "RunDirExistsError", "atomic_write"]


class RunDirExistsError(FileExistsError):
    """The run directory already holds a run and neither resume nor overwrite was asked for."""


class RunDir:
    """Files of one training run (see the README for their contents)."""

    MARKERS = ("config.json", "metrics.jsonl", "last.ckpt", "summary.json")

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def prepare(self, *, resume: bool, overwrite: bool) -> None:
        """Refuse a directory that holds a run unless resuming or overwriting. Checks only:
        nothing is created or removed until :meth:`begin`, so a run that cannot start (bad
        data, bad weights) leaves an existing run, or the absence of one, as it was."""
        existing = [m for m in self.MARKERS if (self.path / m).exists()]
        if existing and not (resume or overwrite):
            raise RunDirExistsError(
                f"{self.path} already holds a run ({', '.join(existing)}); "
                "pass --resume to continue it, --overwrite to replace it, or choose another --out"
            )

    def begin(self, *, resume: bool, overwrite: bool) -> None:
        """Once the run is built and about to write: remove the files of the run it replaces
        (``overwrite``) and create the directory."""
        if overwrite and not resume:
            self.clear()
        self.path.mkdir(parents=True, exist_ok=True)

    def clear(self) -> None:
        """Remove the files a run writes (the directory and anything else in it stay)."""
        for name in (*self.MARKERS, "model.pt"):
            (self.path / name).unlink(missing_ok=True)
        for png in self.path.glob("*.png"):
            png.unlink()

    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, obj: object) -> None:
        data = json.dumps(obj, indent=2, default=_jsonable).encode()
        atomic_write(self.file(name), lambda f: f.write(data))

    def read_json(self, name: str) -> dict:
        return json.loads(self.file(name).read_text())

    def save_torch(self, name: str, obj: object) -> None:
        atomic_write(self.file(name), lambda f: torch.save(obj, f))

    def write_metrics(self, rows: Iterable[dict]) -> None:
        """Rewrite ``metrics.jsonl`` with ``rows`` (one JSON object per line)."""
        data = "".join(json.dumps(r, default=_jsonable) + "\n" for r in rows).encode()
        atomic_write(self.file("metrics.jsonl"), lambda f: f.write(data))


    def append_metrics(self, row: dict) -> None:
        """Append one row to ``metrics.jsonl`` (streams write thousands: no rewrite)."""
        with self.file("metrics.jsonl").open("a") as f:
            f.write(json.dumps(row, default=_jsonable) + "\n")


def _jsonable(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
