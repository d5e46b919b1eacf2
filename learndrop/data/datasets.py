"""Named datasets and `folder:PATH` datasets as in-memory uint8 tensors.

`load_dataset(name, ...)` finds the dataset's files (see `load_dataset` for the order),
decodes them once into uint8 arrays, caches those arrays under `cache_dir()` and returns an
`ImageDataset` with everything in memory. No network access is needed for any dataset that
is already on disk; torchvision's download is the last resort.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import json
import os
import pickle
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from learndrop.atomic import atomic_write
from learndrop.data.errors import (
    CorruptDatasetError,
    DatasetError,
    DatasetFormatError,
    DatasetNotFoundError,
    UnknownDatasetError,
    one_line,
)
from learndrop.data.images import resize_uint8

__all__ = [
    "CorruptDatasetError",
    "DATASET_NAMES",
    "DatasetError",
    "DatasetNotFoundError",
    "ImageDataset",
    "SYSTEM_COPIES",
    "UnknownDatasetError",
    "balanced_subset",
    "cache_dir",
    "load_dataset",
    "resize_uint8",
]

# Bump when the cached arrays' layout or the decoding changes: old cache files are then ignored.
_CACHE_VERSION = 1

DATASET_NAMES: tuple[str, ...] = ("mnist", "fashion-mnist", "cifar10", "imagenette")
_ALIASES = {
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "imagenette2": "imagenette",
}

#: Known system-wide copies of the named datasets, tried after `--data-dir`, `$LEARNDROP_DATA`
#: and the local cache, in the order given (a relative path is read from the current directory;
#: no entry names a path of a development checkout: CIFAR-10 there is passed with `--data-dir`,
#: `$LEARNDROP_DATA` or `folder:PATH`). Each entry may be any layout that the dataset accepts
#: (IDX files, a class-tree folder or archive, torchvision's folders).
SYSTEM_COPIES: dict[str, tuple[str, ...]] = {
    "mnist": ("/usr/share/datasets/mnist",),
    "fashion-mnist": ("/usr/share/datasets/fashion-mnist",),  # Debian: dataset-fashion-mnist
    "cifar10": (),
    "imagenette": (),
}

_FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
_CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]
# Imagenette's folders are WordNet ids; sorted, they give the canonical label order.
_IMAGENETTE_WNIDS = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888605": "parachute",
}
_IMAGENETTE_DEFAULT_SIZE = 160

_IDX_FILES = {  # role -> base file name (with or without .gz; '.' instead of '-idx' accepted)
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
_CIFAR_PICKLES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


# ---------------------------------------------------------------------------------- dataset


@dataclass(repr=False)
class ImageDataset:
    """A whole dataset in memory: uint8 N x C x H x W images and int64 labels."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]  # per channel, of the full training set, in [0, 1] units
    std: tuple[float, ...]
    natural: bool  # True: random crop + flip augmentation suits it; False: digits / fashion
    source: str = ""  # where the files were read from (for logs)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        """Image height (== width: all datasets here are square unless a folder is not)."""
        return int(self.train_x.shape[2])

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in self.train_x.shape[1:])
        return (
            f"ImageDataset({self.name!r}, train={len(self.train_y)}, test={len(self.test_y)}, "
            f"{shape}, classes={self.num_classes}, natural={self.natural}, "
            f"source={self.source!r})"
        )


# ---------------------------------------------------------------------------- array helpers


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std in [0, 1] units, via a 256-bin histogram per channel
    (no float copy of the whole set)."""
    means, stds = [], []
    values = torch.arange(256, dtype=torch.float64) / 255.0
    for ch in range(x.shape[1]):
        counts = torch.zeros(256, dtype=torch.float64)
        for i in range(0, x.shape[0], 8192):
            counts += torch.bincount(x[i : i + 8192, ch].reshape(-1), minlength=256).double()
        total = counts.sum().clamp_min(1.0)
        mean = float((counts * values).sum() / total)
        var = float((counts * (values - mean) ** 2).sum() / total)
        means.append(mean)
        stds.append(max(var, 1e-12) ** 0.5)
    return tuple(means), tuple(stds)


def balanced_subset(y: torch.Tensor, n: int, num_classes: int, seed: int) -> torch.Tensor:
    """Sorted indices of a fixed, class-balanced, seeded subset of `n` samples of labels `y`.

    Each class gets n // num_classes samples; the remainder goes one each to the lowest
    class indices. A class with too few samples gives its share to the others. The same seed
    gives the same subset on every machine (CPU `torch.Generator`).
    """
    if n <= 0:
        raise ValueError(f"subset size must be positive, got {n}")
    if n >= len(y):
        return torch.arange(len(y))
    y = y.cpu()
    by_class = [torch.nonzero(y == k).flatten() for k in range(num_classes)]
    avail = [len(ix) for ix in by_class]
    quota = [0] * num_classes
    left = n
    # Round-robin water filling: deterministic and balanced as far as each class allows.
    while left > 0:
        open_classes = [k for k in range(num_classes) if quota[k] < avail[k]]
        share, extra = divmod(left, len(open_classes))
        for rank, k in enumerate(open_classes):
            take = min(share + (1 if rank < extra else 0), avail[k] - quota[k])
            quota[k] += take
            left -= take
    gen = torch.Generator().manual_seed(seed)
    picked = [ix[torch.randperm(len(ix), generator=gen)[:q]] for ix, q in zip(by_class, quota)]
    return torch.cat(picked).sort().values


# ----------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    """Where a dataset's files are: `kind` is "idx", "cifar-pickle", "tree-dir" or "tree-tar"."""

    kind: str
    path: Path
    origin: str  # "--data-dir", "$LEARNDROP_DATA", "cache", "system copy", "download", "folder"
    files: tuple[Path, ...] = ()  # for "idx" / "cifar-pickle": the files, in role order


def cache_dir() -> Path:
    """The cache root: `$LEARNDROP_CACHE`, else `~/.cache/learndrop`."""
    env = os.environ.get("LEARNDROP_CACHE")
    return Path(env).expanduser() if env else Path("~/.cache/learndrop").expanduser()


def _local_dir(name: str) -> Path:
    """Per-dataset folder of the local cache: downloads land here, and users may put files."""
    return cache_dir() / "datasets" / name


def _is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith((".tar", ".tar.gz", ".tgz"))


def _find_idx(d: Path) -> tuple[Path, ...] | None:
    files = []
    for base in _IDX_FILES.values():
        dotted = base.replace("-idx", ".idx")
        for cand in (base + ".gz", base, dotted + ".gz", dotted):
            if (d / cand).is_file():
                files.append(d / cand)
                break
        else:
            return None
    return tuple(files)


def _find_tree_dir(d: Path) -> Path | None:
    from learndrop.data.folder import find_tree_root

    return find_tree_root(d)


def _probe(name: str, path: Path, origin: str) -> Source | None:
    """The dataset's source at `path` (itself or a known sub-folder of it), if any."""
    if _is_archive(path) and name in ("cifar10", "imagenette"):
        return Source("tree-tar", path, origin)
    if not path.is_dir():
        return None
    if name in ("mnist", "fashion-mnist"):
        torch_name = "MNIST" if name == "mnist" else "FashionMNIST"
        subs = ("", name, f"{name}/raw", torch_name, f"{torch_name}/raw", name.replace("-", "_"))
        for sub in subs:
            files = _find_idx(path / sub)
            if files:
                return Source("idx", path / sub, origin, files)
        return None
    if name == "cifar10":
        subs = ("", "cifar10", "cifar-10", "CIFAR10", "cifar10-jpg", "cifar-10-batches-py")
        for sub in subs:
            d = path / sub
            if all((d / f).is_file() for f in _CIFAR_PICKLES):
                return Source("cifar-pickle", d, origin, tuple(d / f for f in _CIFAR_PICKLES))
            if d.is_dir() and (root := _find_tree_dir(d)) is not None:
                return Source("tree-dir", root, origin)
        for arc in ("cifar10-jpg.tar.gz", "cifar10.tar.gz", "cifar10.tgz", "cifar10.tar"):
            if _is_archive(path / arc):
                return Source("tree-tar", path / arc, origin)
        return None
    # imagenette: torchvision's folders first, smallest images first (fastest to decode).
    subs = ("", "imagenette", "imagenette2-160", "imagenette2-320", "imagenette2")
    for sub in subs:
        d = path / sub
        if d.is_dir() and (root := _find_tree_dir(d)) is not None:
            return Source("tree-dir", root, origin)
    for arc in ("imagenette2-160.tgz", "imagenette2-320.tgz", "imagenette2.tgz"):
        if _is_archive(path / arc):
            return Source("tree-tar", path / arc, origin)
    return None


def _system_candidates(name: str) -> list[Path]:
    out: list[Path] = []
    for entry in SYSTEM_COPIES.get(name, ()):
        p = Path(entry).expanduser()
        out.append(p.resolve() if p.is_absolute() else (Path.cwd() / p).resolve())
    return out


def _download(name: str, root: Path, image_size: int | None) -> None:
    """Fetch `name` into `root` with torchvision (needs the internet); raises on failure."""
    import torchvision.datasets as tvd

    root.mkdir(parents=True, exist_ok=True)
    if name == "mnist":
        tvd.MNIST(str(root), train=True, download=True)
        tvd.MNIST(str(root), train=False, download=True)
    elif name == "fashion-mnist":
        tvd.FashionMNIST(str(root), train=True, download=True)
        tvd.FashionMNIST(str(root), train=False, download=True)
    elif name == "cifar10":
        tvd.CIFAR10(str(root), train=True, download=True)
    elif name == "imagenette":
        size = image_size or _IMAGENETTE_DEFAULT_SIZE
        variant = "160px" if size <= 160 else "320px" if size <= 320 else "full"
        tvd.Imagenette(str(root), split="train", size=variant, download=True)
    else:  # pragma: no cover - guarded by the caller
        raise ValueError(name)


_WHAT_TO_PUT = {
    "mnist": "the four IDX .gz files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz)",
    "fashion-mnist": "the four IDX .gz files (train-images-idx3-ubyte.gz, "
    "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz)",
    "cifar10": "cifar10-jpg.tar.gz, a folder with train/<class>/ and test/<class>/ images, "
    "or torchvision's cifar-10-batches-py",
    "imagenette": "imagenette2-160 (a folder or .tgz with train/<wnid>/ and val/<wnid>/ images)",
}
_EXTRA_HINT = {"fashion-mnist": ", or `apt-get install dataset-fashion-mnist`"}


def _not_found(name: str, why: str = "", where: Path | None = None) -> DatasetNotFoundError:
    env = os.environ.get("LEARNDROP_DATA")
    if where is None:
        where = Path(env).expanduser() / name if env else _local_dir(name)
    hint = _EXTRA_HINT.get(name, "")
    why = f" ({one_line(why)})" if why else ""
    return DatasetNotFoundError(
        f"{name} not found{why}; put {_WHAT_TO_PUT[name]} in {where}, set LEARNDROP_DATA, "
        f"pass --data-dir{hint}"
    )


def resolve_source(name: str, data_dir: str | os.PathLike | None = None,
                   image_size: int | None = None) -> Source:
    """Find the files of the named dataset `name` (see `load_dataset` for the order)."""
    if data_dir is not None:
        # An explicit --data-dir that lacks the data is an error, never a silent fallback.
        p = Path(data_dir).expanduser()
        src = _probe(name, p, "--data-dir")
        if src is None:
            raise _not_found(name, f"nothing usable in --data-dir {p}", where=p)
        return src
    env = os.environ.get("LEARNDROP_DATA")
    if env:
        p = Path(env).expanduser()
        if src := (_probe(name, p / name, "$LEARNDROP_DATA") or _probe(name, p, "$LEARNDROP_DATA")):
            return src
    if src := _probe(name, _local_dir(name), "cache"):
        return src
    for p in _system_candidates(name):
        if src := _probe(name, p, "system copy"):
            return src
    if os.environ.get("LEARNDROP_OFFLINE"):
        raise _not_found(name, "LEARNDROP_OFFLINE is set, no download")
    try:
        _download(name, _local_dir(name), image_size)
    except Exception as err:  # no internet, server down, disk full: all end the same way
        raise _not_found(name, f"download failed: {type(err).__name__}: {err}") from err
    src = _probe(name, _local_dir(name), "download")
    if src is None:
        raise _not_found(name, "download gave no usable files")
    return src


# ---------------------------------------------------------------------------------- decoding


@dataclass
class _Arrays:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]


def _read_idx(path: Path, expect_magic: int) -> np.ndarray:
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise CorruptDatasetError(one_line(f"cannot read {path}: {err}")) from err
    if len(data) < 8:
        raise CorruptDatasetError(f"cannot read {path}: too short for an IDX file")
    magic = struct.unpack(">I", data[:4])[0]
    if magic != expect_magic:
        raise CorruptDatasetError(f"cannot read {path}: IDX magic {magic}, expected {expect_magic}")
    ndim = magic & 0xFF
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    count = int(np.prod(dims))
    body = data[4 + 4 * ndim :]
    if len(body) != count:
        raise CorruptDatasetError(
            f"cannot read {path}: {len(body)} data bytes, header says {count}"
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _decode_idx(src: Source, name: str) -> _Arrays:
    tx, ty, vx, vy = src.files
    arrays = []
    for xf, yf in ((tx, ty), (vx, vy)):
        x = _read_idx(xf, 2051)
        y = _read_idx(yf, 2049)
        if len(x) != len(y):
            raise CorruptDatasetError(f"cannot read {yf}: {len(y)} labels for {len(x)} images")
        arrays += [torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64))]
    classes = _FASHION_CLASSES if name == "fashion-mnist" else [str(i) for i in range(10)]
    return _Arrays(*arrays, classes=list(classes))


#: What a CIFAR batch file may name: numpy's array reconstructors and types, and the codec that
#: protocol 2 pickles of Python 3 bytes call; nothing that runs other code. ``numpy.core`` is
#: numpy 1's name of numpy 2's ``numpy._core`` (the official files were written by numpy 1).
_PICKLE_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}

_NUMPY_CORE = "numpy._core." if int(np.__version__.split(".")[0]) >= 2 else "numpy.core."


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes, numbers and numpy arrays, and refuses every other global:
    a pickle names the functions it calls when read, so a crafted "batch file" could otherwise
    run any code (the rule ``torch.load(..., weights_only=True)`` keeps for checkpoints)."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(
                f"it names {module}.{name}, and a CIFAR batch holds only arrays, lists and "
                "bytes (the file may run code when read: replace it with the official "
                "cifar-10-python.tar.gz)")
        if module.startswith("numpy.core."):
            module = _NUMPY_CORE + module.removeprefix("numpy.core.")
        return getattr(importlib.import_module(module), name)


def _load_pickle(path: Path) -> object:
    with open(path, "rb") as fh:
        return _ArraysOnlyUnpickler(fh, encoding="bytes").load()


def _decode_cifar_pickle(src: Source) -> _Arrays:
    xs, ys = [], []
    for f in src.files:
        try:
            d = _load_pickle(f)
            xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[b"labels"], dtype=np.int64))
        except Exception as err:
            raise CorruptDatasetError(one_line(f"cannot read {f}: {err}")) from err
    classes = list(_CIFAR10_CLASSES)
    meta = src.path / "batches.meta"
    if meta.is_file():
        try:
            classes = [c.decode() for c in _load_pickle(meta)[b"label_names"]]
        except Exception as err:
            raise CorruptDatasetError(one_line(f"cannot read {meta}: {err}")) from err
    return _Arrays(
        torch.from_numpy(np.concatenate(xs[:5])), torch.from_numpy(np.concatenate(ys[:5])),
        torch.from_numpy(xs[5]), torch.from_numpy(ys[5]), classes,
    )


def _decode(src: Source, name: str, image_size: int | None) -> _Arrays:
    """Decode the source's files into uint8 arrays, resized to image_size when given."""
    if src.kind in ("tree-dir", "tree-tar"):
        from learndrop.data.folder import read_image_tree

        tree = read_image_tree(src.path, image_size=image_size)
        arrays = _Arrays(tree.train_x, tree.train_y, tree.test_x, tree.test_y, tree.classes)
    elif src.kind == "idx":
        arrays = _decode_idx(src, name)
    elif src.kind == "cifar-pickle":
        arrays = _decode_cifar_pickle(src)
    else:  # pragma: no cover
        raise ValueError(f"unknown source kind {src.kind}")
    if image_size is not None:
        arrays.train_x = resize_uint8(arrays.train_x, image_size)
        arrays.test_x = resize_uint8(arrays.test_x, image_size)
    return arrays


# ------------------------------------------------------------------------------------- cache


def _fingerprint(src: Source) -> list:
    """What identifies the source's content cheaply: paths, sizes and mtimes of its files."""
    if src.files:
        paths = list(src.files)
    elif src.path.is_file():
        paths = [src.path]
    else:
        paths = sorted(
            Path(dp) / f
            for split in ("train", "test", "val")
            for dp, _, fs in os.walk(src.path / split)
            for f in fs
        )
    out = []
    for p in paths:
        st = p.stat()
        out.append([str(p), st.st_size, st.st_mtime_ns])
    if len(out) > 64:  # keep the key small for big trees
        out = [hashlib.sha256(json.dumps(out).encode()).hexdigest(), len(out)]
    return out


def _cache_file(name: str, src: Source, image_size: int | None) -> Path:
    key = json.dumps(
        [_CACHE_VERSION, name, src.kind, str(src.path.resolve()), _fingerprint(src), image_size]
    )
    stem = "folder" if name.startswith("folder:") else name
    return cache_dir() / "arrays" / f"{stem}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.pt"


def _load_cache(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if obj.get("version") == _CACHE_VERSION:
            return obj
    except Exception as err:  # a damaged cache file is re-made, never fatal
        warnings.warn(one_line(f"ignoring unreadable cache file {path}: {err}"), stacklevel=3)
    return None


def _load_arrays(name: str, src: Source, image_size: int | None) -> dict:
    path = _cache_file(name, src, image_size)
    cached = _load_cache(path)
    if cached is not None:
        return cached
    arrays = _decode(src, name, image_size)
    mean, std = _channel_stats(arrays.train_x)
    obj = {
        "version": _CACHE_VERSION,
        "train_x": arrays.train_x.contiguous(), "train_y": arrays.train_y,
        "test_x": arrays.test_x.contiguous(), "test_y": arrays.test_y,
        "classes": list(arrays.classes), "mean": list(mean), "std": list(std),
    }
    try:
        atomic_write(path, lambda f: torch.save(obj, f))
    except OSError as err:  # read-only home, full disk: go on without a cache
        warnings.warn(one_line(f"could not write the dataset cache {path}: {err}"), stacklevel=3)
    return obj


# -------------------------------------------------------------------------------------- API


def _normalise_name(name: str) -> str:
    if name.startswith("folder:"):
        return name
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in DATASET_NAMES:
        raise UnknownDatasetError(
            f"unknown dataset {name!r}; choose one of: {', '.join(DATASET_NAMES)}, folder:PATH"
        )
    return key


def _folder_source(spec: str) -> Source:
    raw = spec[len("folder:") :]
    if not raw:
        raise UnknownDatasetError("folder:PATH needs a path, e.g. folder:/data/my-images")
    p = Path(raw).expanduser()
    if not p.exists():
        raise DatasetNotFoundError(
            f"{p} not found; folder:PATH needs a folder, .tar or .tar.gz with "
            "train/<class>/* and test/<class>/* (or val/<class>/*) images"
        )
    if p.is_file():
        return Source("tree-tar", p, "folder")
    root = _find_tree_dir(p)
    if root is None:
        raise DatasetFormatError(
            f"{p} has no train/<class>/ and test/<class>/ (or val/<class>/) folders"
        )
    return Source("tree-dir", root, "folder")


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    subset: int | None = None,
    seed: int = 0,
    test_subset: int | None = None,
) -> ImageDataset:
    """Load a dataset into memory as uint8 tensors.

    `name` is one of `mnist`, `fashion-mnist`, `cifar10`, `imagenette` or `folder:PATH`, where
    PATH is a folder, `.tar` or `.tar.gz` holding `train/<class>/*` and `test/<class>/*` (or
    `val/<class>/*`) images. Named datasets are looked for in this order: `data_dir`
    (`--data-dir`; if given it must hold the data), `$LEARNDROP_DATA` (itself or its `<name>`
    sub-folder), the local cache `cache_dir()/datasets/<name>`, the known system copies
    (`SYSTEM_COPIES`), then torchvision's download into the local cache (skipped when
    `$LEARNDROP_OFFLINE` is set). Decoded arrays are cached under `cache_dir()/arrays`.

    `image_size`: resize every image to image_size x image_size once, at load time (cached).
    Imagenette defaults to 160. A folder dataset whose images differ in size needs it.
    `subset` / `test_subset`: a fixed, class-balanced subset of that many training / test
    images, chosen with `seed`. `mean` / `std` are those of the full training set.

    Raises `UnknownDatasetError`, `DatasetNotFoundError`, `CorruptDatasetError` or
    `DatasetFormatError` (also for fewer than two classes, in the dataset or in the training or
    test set after subsetting), each with a one-line message.
    """
    key = _normalise_name(name)
    if image_size is not None and image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if key == "imagenette" and image_size is None:
        image_size = _IMAGENETTE_DEFAULT_SIZE
    if key.startswith("folder:"):
        src = _folder_source(key)
    else:
        src = resolve_source(key, data_dir, image_size)
    obj = _load_arrays(key, src, image_size)
    classes = list(obj["classes"])
    if key == "imagenette" and all(c in _IMAGENETTE_WNIDS for c in classes):
        classes = [_IMAGENETTE_WNIDS[c] for c in classes]
    train_x, train_y, test_x, test_y = obj["train_x"], obj["train_y"], obj["test_x"], obj["test_y"]
    if subset is not None:
        idx = balanced_subset(train_y, subset, len(classes), seed)
        train_x, train_y = train_x[idx], train_y[idx]
    if test_subset is not None:
        idx = balanced_subset(test_y, test_subset, len(classes), seed)
        test_x, test_y = test_x[idx], test_y[idx]
    # One class "trains" to loss 0 and accuracy 1 and learns nothing: refuse it, whichever the
    # source (a folder with one class directory, or a training subset too small for two).
    if len(classes) < 2:
        raise DatasetFormatError(
            f"{name} has {len(classes)} class ({', '.join(classes)}); classification needs at "
            "least two classes (e.g. train/<class>/ and test/<class>/ folders for two classes)")
    # A test set of one class reports accuracy 1.0 for any network: refuse it too.
    for split, y, full_y, option, size in (
        ("training", train_y, obj["train_y"], "--subset", subset),
        ("test", test_y, obj["test_y"], "--test-subset", test_subset),
    ):
        if int(torch.unique(y).numel()) >= 2:
            continue
        if size is not None and int(torch.unique(full_y).numel()) >= 2:
            fix = f"raise {option} (now {size})"
        else:
            fix = f"give its {split} split images of at least two classes"
        raise DatasetFormatError(
            f"the {split} set of {name} holds {len(y)} image(s) of at most one class; "
            f"classification needs at least two classes: {fix}")
    return ImageDataset(
        name=key,
        train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
        classes=classes,
        mean=tuple(float(m) for m in obj["mean"]),
        std=tuple(float(s) for s in obj["std"]),
        natural=key not in ("mnist", "fashion-mnist"),
        source=f"{src.path} ({src.origin})",
    )
