"""Read `train/<class>/*` + `test/<class>/*` (or `val/<class>/*`) image trees.

The tree may be a folder or a `.tar` / `.tar.gz` archive (optionally inside one top-level
folder, as in `imagenette2-160.tgz`). Archives are streamed once with `tarfile` and every
image is decoded with PIL straight from memory: nothing is extracted to disk.
"""

from __future__ import annotations

import io
import os
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from learndrop.data.errors import CorruptDatasetError, DatasetError, DatasetFormatError
from learndrop.data.images import resize_uint8

__all__ = ["IMAGE_EXTENSIONS", "ImageTree", "find_tree_root", "read_image_tree"]

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".jfif", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
     ".pgm", ".pbm"}
)
_TEST_SPLITS = ("test", "val")  # "test" wins when both are there
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"}


@dataclass
class ImageTree:
    """Decoded image tree: uint8 N x C x H x W images, int64 labels, sorted class names."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _has_splits(d: Path) -> bool:
    return (d / "train").is_dir() and any((d / s).is_dir() for s in _TEST_SPLITS)


def find_tree_root(d: Path) -> Path | None:
    """`d` if it holds train/ and test/ (or val/), else its only sub-folder if that does."""
    d = Path(d)
    if not d.is_dir():
        return None
    if _has_splits(d):
        return d
    subs = [p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(subs) == 1 and _has_splits(subs[0]):
        return subs[0]
    return None


def _decode(data: bytes | Path, label: str, image_size: int | None) -> np.ndarray:
    """One image as an H x W x C uint8 array, C = 1 (grayscale) or 3 (anything else)."""
    try:
        src = io.BytesIO(data) if isinstance(data, bytes) else data
        with Image.open(src) as img:
            if image_size is not None and img.format == "JPEG":
                # Let libjpeg decode at a reduced scale (>= image_size): much faster for
                # big photos (Imagenette); the exact resize follows.
                img.draft(None, (image_size, image_size))
            img.load()
            if img.mode not in ("L", "RGB"):
                img = img.convert("L" if img.mode in _GRAY_MODES else "RGB")
            arr = np.asarray(img, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise CorruptDatasetError(" ".join(f"cannot decode image {label}: {err}".split())) from err
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if image_size is not None and arr.shape[:2] != (image_size, image_size):
        t = torch.from_numpy(np.array(arr)).permute(2, 0, 1).unsqueeze(0)  # writable copy
        arr = resize_uint8(t, image_size)[0].permute(1, 2, 0).numpy()
    return arr


class _Collector:
    """Gathers decoded images per (prefix, split) and the class folders seen."""

    def __init__(self, source: str, image_size: int | None) -> None:
        self.source = source
        self.image_size = image_size
        # prefix -> split -> list of (class, file name, array)
        self.images: dict[tuple[str, ...], dict[str, list]] = {}
        self.class_dirs: dict[tuple[str, ...], dict[str, set[str]]] = {}

    def add_class_dir(self, prefix: tuple[str, ...], split: str, cls: str) -> None:
        self.class_dirs.setdefault(prefix, {}).setdefault(split, set()).add(cls)

    def add_image(self, prefix: tuple[str, ...], split: str, cls: str, fname: str,
                  data: bytes | Path, label: str) -> None:
        self.add_class_dir(prefix, split, cls)
        arr = _decode(data, label, self.image_size)
        self.images.setdefault(prefix, {}).setdefault(split, []).append((cls, fname, arr))

    def finish(self) -> ImageTree:
        src = self.source
        if len(self.images) > 1:
            roots = ", ".join(sorted("/".join(p) + "/" for p in self.images))
            raise DatasetFormatError(f"{src} holds several image trees ({roots}); keep one")
        prefix = next(iter(self.images), ())
        splits = self.images.get(prefix, {})
        dirs = self.class_dirs.get(prefix, {})
        test_split = next((s for s in _TEST_SPLITS if splits.get(s)), None)
        if not splits.get("train") or test_split is None:
            raise DatasetFormatError(
                f"{src} needs images in train/<class>/ and in test/<class>/ (or val/<class>/)"
            )
        classes = sorted(dirs["train"])
        test_classes = sorted(dirs[test_split])
        if classes != test_classes:
            missing = sorted(set(classes) - set(test_classes))
            extra = sorted(set(test_classes) - set(classes))
            raise DatasetFormatError(
                f"{src}: {test_split}/ classes differ from train/ classes "
                f"(missing in {test_split}/: {missing}, not in train/: {extra})"
            )
        records = {s: splits[s] for s in ("train", test_split)}
        all_recs = [r for recs in records.values() for r in recs]
        if self.image_size is None:
            sizes: dict[tuple[int, int], str] = {}
            for cls, fname, arr in all_recs:
                sizes.setdefault(arr.shape[:2], f"{cls}/{fname}")
            if len(sizes) > 1:
                shown = ", ".join(f"{w}x{h} ({ex})" for (h, w), ex in list(sizes.items())[:3])
                raise DatasetFormatError(
                    f"images in {src} have different sizes: {shown}; pass --image-size "
                    "(image_size=...) to resize them"
                )
        # Mixed grayscale and colour images: everything becomes RGB.
        channels = 3 if any(arr.shape[2] == 3 for _, _, arr in all_recs) else 1
        index = {c: i for i, c in enumerate(classes)}
        out: list[torch.Tensor] = []
        for recs in records.values():
            recs.sort(key=lambda r: (index[r[0]], r[1]))  # deterministic, whatever the order
            arrs = [
                np.repeat(a, 3, axis=2) if a.shape[2] != channels else a for _, _, a in recs
            ]
            x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()
            y = torch.tensor([index[r[0]] for r in recs], dtype=torch.int64)
            out += [x, y]
        return ImageTree(*out, classes=classes)


def _read_dir(root: Path, image_size: int | None) -> ImageTree:
    col = _Collector(str(root), image_size)
    for split in ("train", *_TEST_SPLITS):
        sdir = root / split
        if not sdir.is_dir():
            continue
        for cdir in sorted(p for p in sdir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            col.add_class_dir((), split, cdir.name)
            for f in sorted(cdir.iterdir()):
                if f.is_file() and _is_image_name(f.name):
                    col.add_image((), split, cdir.name, f.name, f, str(f))
    return col.finish()


def _read_tar(path: Path, image_size: int | None) -> ImageTree:
    col = _Collector(str(path), image_size)
    try:
        # "r|*": one sequential pass (gzip or plain), no seeking, nothing written to disk.
        with tarfile.open(path, mode="r|*") as tar:
            for m in tar:
                parts = tuple(p for p in m.name.split("/") if p and p != ".")
                if m.isdir() and len(parts) >= 2 and parts[-2] in ("train", *_TEST_SPLITS):
                    if not parts[-1].startswith("."):
                        col.add_class_dir(parts[:-2], parts[-2], parts[-1])
                    continue
                if (
                    not m.isfile()
                    or len(parts) < 3
                    or parts[-3] not in ("train", *_TEST_SPLITS)
                    or parts[-2].startswith(".")
                    or not _is_image_name(parts[-1])
                ):
                    continue
                f = tar.extractfile(m)
                data = f.read() if f is not None else b""
                col.add_image(parts[:-3], parts[-3], parts[-2], parts[-1], data,
                              f"{path}:{m.name}")
    except DatasetError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise CorruptDatasetError(
            " ".join(f"cannot read archive {path}: {type(err).__name__}: {err}".split())
        ) from err
    return col.finish()


def read_image_tree(path: str | os.PathLike, image_size: int | None = None) -> ImageTree:
    """Decode a class-tree folder or archive; resize to image_size x image_size if given.

    Class names are the sorted folder names under train/; test/ (or val/) must have the same.
    Grayscale trees stay 1-channel; a tree mixing modes becomes RGB. Images of different
    sizes need `image_size`. Errors are one-line `DatasetFormatError` / `CorruptDatasetError`.
    """
    p = Path(path)
    if p.is_file():
        return _read_tar(p, image_size)
    root = find_tree_root(p)
    if root is None:
        raise DatasetFormatError(
            f"{p} has no train/<class>/ and test/<class>/ (or val/<class>/) folders"
        )
    return _read_dir(root, image_size)
