"""Tests of learndrop.data: image trees, named datasets' resolution, cache, subsets, loader."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from learndrop.data import (
    CorruptDatasetError,
    DatasetFormatError,
    DatasetNotFoundError,
    DeviceLoader,
    ImageDataset,
    UnknownDatasetError,
    balanced_subset,
    cache_dir,
    datasets,
    load_dataset,
    make_loaders,
)

CIFAR_TARBALL = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg.tar.gz"
FASHION_SYSTEM = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """Private cache, no $LEARNDROP_DATA, and never the network."""
    monkeypatch.setenv("LEARNDROP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LEARNDROP_DATA", raising=False)
    monkeypatch.delenv("LEARNDROP_OFFLINE", raising=False)

    def no_download(name, root, image_size):
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(datasets, "_download", no_download)


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg
    return msg


# ------------------------------------------------------------------------------ image trees


def _make_tree(root: Path, *, test_split="test", classes=("cat", "dog", "eel"), n_train=4,
               n_test=2, size=8, mode="RGB", fmt="png", seed=0) -> dict:
    """Random images as files; returns {(split, class): [H x W x C arrays in file order]}."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), (test_split, n_test)):
        for cls in classes:
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            arrs = []
            for i in range(n):
                shape = (size, size) if mode == "L" else (size, size, 3)
                a = rng.integers(0, 256, shape, dtype=np.uint8)
                Image.fromarray(a, mode).save(d / f"{i:03d}.{fmt}")
                arrs.append(a if a.ndim == 3 else a[:, :, None])
            out[split, cls] = arrs
    return out


def _tar(src: Path, dest: Path, prefix: str = "") -> Path:
    with tarfile.open(dest, "w:gz" if dest.name.endswith("gz") else "w") as tar:
        for p in sorted(src.rglob("*"), reverse=True):  # archive order must not matter
            tar.add(p, arcname=prefix + str(p.relative_to(src)), recursive=False)
    return dest


def _expected(arrays: dict, split: str, classes) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for k, cls in enumerate(classes):
        for a in arrays[split, cls]:
            xs.append(torch.from_numpy(a).permute(2, 0, 1))
            ys.append(k)
    return torch.stack(xs), torch.tensor(ys)


@pytest.mark.parametrize("form", ["dir", "tar", "tar.gz"])
def test_folder_roundtrip(tmp_path, form):
    arrays = _make_tree(tmp_path / "tree")
    path = tmp_path / "tree"
    if form != "dir":
        path = _tar(path, tmp_path / f"tree.{form}")
    ds = load_dataset(f"folder:{path}")
    assert ds.classes == ["cat", "dog", "eel"]
    assert ds.train_x.shape == (12, 3, 8, 8) and ds.train_x.dtype == torch.uint8
    assert ds.test_x.shape == (6, 3, 8, 8) and ds.train_y.dtype == torch.int64
    assert (ds.num_classes, ds.in_channels, ds.image_size, ds.natural) == (3, 3, 8, True)
    for split, x, y in (("train", ds.train_x, ds.train_y), ("test", ds.test_x, ds.test_y)):
        ex, ey = _expected(arrays, split, ds.classes)
        assert torch.equal(x, ex) and torch.equal(y, ey)  # PNG is lossless: exact pixels
    want = ds.train_x.double().div(255).mean(dim=(0, 2, 3))
    assert torch.allclose(torch.tensor(ds.mean, dtype=torch.float64), want)


def test_val_split_grayscale_and_prefix_folder_in_tar(tmp_path):
    arrays = _make_tree(tmp_path / "tree", test_split="val", mode="L", classes=("a", "b"))
    (tmp_path / "tree" / "train" / "a" / "._junk.png").write_bytes(b"macOS metadata")
    (tmp_path / "tree" / "README.txt").write_text("not an image")
    for path in (tmp_path / "tree", _tar(tmp_path / "tree", tmp_path / "t.tgz", "top/")):
        ds = load_dataset(f"folder:{path}")
        assert ds.train_x.shape == (8, 1, 8, 8) and ds.test_x.shape == (4, 1, 8, 8)
        assert torch.equal(ds.test_x, _expected(arrays, "val", ["a", "b"])[0])


def test_mixed_modes_become_rgb_and_jpeg(tmp_path):
    _make_tree(tmp_path, classes=("a",), mode="L", fmt="jpg")
    _make_tree(tmp_path, classes=("b",), mode="RGB", fmt="jpg", seed=1)
    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.in_channels == 3
    gray = ds.train_x[ds.train_y == 0]
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 0], gray[:, 2])


def test_mismatched_classes(tmp_path):
    _make_tree(tmp_path, classes=("a", "b"))
    (tmp_path / "test" / "b").rename(tmp_path / "test" / "c")
    with pytest.raises(DatasetFormatError) as err:
        load_dataset(f"folder:{tmp_path}")
    assert "'b'" in _one_line(err) and "'c'" in str(err.value)


def test_missing_test_split(tmp_path):
    _make_tree(tmp_path, classes=("a",))
    (tmp_path / "test").rename(tmp_path / "other")
    with pytest.raises(DatasetFormatError) as err:
        load_dataset(f"folder:{tmp_path}")
    assert "test/" in _one_line(err)


@pytest.mark.parametrize("damage", ["garbage", "truncated-jpeg"])
def test_corrupt_image(tmp_path, damage):
    _make_tree(tmp_path, classes=("a",), fmt="jpg", size=12)
    bad = tmp_path / "train" / "a" / "001.jpg"
    data = bad.read_bytes()
    bad.write_bytes(b"not an image at all" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(CorruptDatasetError) as err:
        load_dataset(f"folder:{tmp_path}")
    assert str(bad) in _one_line(err)


def test_truncated_targz(tmp_path):
    _make_tree(tmp_path / "tree", n_train=20)
    arc = _tar(tmp_path / "tree", tmp_path / "d.tar.gz")
    arc.write_bytes(arc.read_bytes()[: arc.stat().st_size // 2])
    with pytest.raises(CorruptDatasetError) as err:
        load_dataset(f"folder:{arc}")
    assert str(arc) in _one_line(err)


def test_mixed_sizes_need_image_size(tmp_path):
    _make_tree(tmp_path, classes=("a",), size=8)
    _make_tree(tmp_path, classes=("b",), size=12)
    with pytest.raises(DatasetFormatError) as err:
        load_dataset(f"folder:{tmp_path}")
    assert "--image-size" in _one_line(err)
    # A flat-colour image must stay that colour through the resize.
    Image.new("RGB", (12, 12), (10, 200, 90)).save(tmp_path / "train" / "b" / "flat.png")
    ds = load_dataset(f"folder:{tmp_path}", image_size=10)
    assert ds.train_x.shape == (9, 3, 10, 10) and ds.test_x.shape == (4, 3, 10, 10)
    flat = ds.train_x[-1]  # "flat.png" sorts last in class b
    assert flat[:, 0, 0].tolist() == [10, 200, 90] and (flat == flat[:, :1, :1]).all()


def test_folder_not_found_and_unknown_name(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset(f"folder:{tmp_path / 'nope'}")
    assert "nope" in _one_line(err)
    with pytest.raises(UnknownDatasetError) as err:
        load_dataset("imagenet-21k")
    msg = _one_line(err)
    assert isinstance(err.value, ValueError)
    assert all(n in msg for n in ("mnist", "fashion-mnist", "cifar10", "imagenette", "folder:"))


# --------------------------------------------------------------------- named datasets (IDX)


def _write_idx(d: Path, value: int = 0, n_train: int = 30, n_test: int = 10, size: int = 8,
               gz: bool = True, names=None) -> None:
    """Fake MNIST-format files: real IDX headers, pixels = value + label, labels = i % 10."""
    d.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = (np.arange(n) % 10).astype(np.uint8)
        x = np.broadcast_to((value + y)[:, None, None], (n, size, size)).astype(np.uint8)
        files = {
            f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 2051, n, size, size) + x.tobytes(),
            f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 2049, n) + y.tobytes(),
        }
        for base, payload in files.items():
            if gz:
                (d / f"{base}.gz").write_bytes(gzip.compress(payload))
            else:
                (d / base).write_bytes(payload)


def _marker(ds: ImageDataset) -> int:
    return int(ds.train_x[0, 0, 0, 0])  # pixel value of image 0 (label 0) = the source's value


def test_resolution_order(tmp_path, monkeypatch):
    _write_idx(tmp_path / "arg" / "FashionMNIST" / "raw", value=10)  # torchvision layout
    _write_idx(tmp_path / "env" / "fashion-mnist", value=20)
    _write_idx(cache_dir() / "datasets" / "fashion-mnist", value=30, gz=False)
    _write_idx(tmp_path / "system", value=40)
    monkeypatch.setitem(datasets.SYSTEM_COPIES, "fashion-mnist", (str(tmp_path / "system"),))
    monkeypatch.setenv("LEARNDROP_DATA", str(tmp_path / "env"))

    ds = load_dataset("fashion-mnist", data_dir=str(tmp_path / "arg"))
    assert _marker(ds) == 10 and "--data-dir" in ds.source
    assert ds.train_x.shape == (30, 1, 8, 8) and ds.natural is False
    assert ds.classes[0] == "T-shirt/top" and ds.num_classes == 10
    assert _marker(load_dataset("fashion-mnist")) == 20
    monkeypatch.delenv("LEARNDROP_DATA")
    assert _marker(load_dataset("fashion_mnist")) == 30  # alias, raw (not gzipped) files
    for f in (cache_dir() / "datasets" / "fashion-mnist").iterdir():
        f.unlink()
    ds = load_dataset("fashion-mnist")
    assert _marker(ds) == 40 and "system copy" in ds.source


def test_relative_system_copy_is_tried_from_cwd(tmp_path, monkeypatch):
    _write_idx(tmp_path / "shared" / "mnist", value=5)
    monkeypatch.setitem(datasets.SYSTEM_COPIES, "mnist", ("../shared/mnist",))
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    ds = load_dataset("mnist")
    assert _marker(ds) == 5 and ds.classes == [str(i) for i in range(10)]


def test_not_found_names_where_to_put_files(tmp_path, monkeypatch):
    monkeypatch.setitem(datasets.SYSTEM_COPIES, "fashion-mnist", (str(tmp_path / "absent"),))
    calls = []

    def failing_download(name, root, image_size):
        calls.append((name, root))
        raise OSError("no route to host")

    monkeypatch.setattr(datasets, "_download", failing_download)
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("fashion-mnist")
    msg = _one_line(err)
    assert isinstance(err.value, FileNotFoundError)
    where = cache_dir() / "datasets" / "fashion-mnist"
    assert calls == [("fashion-mnist", where)]
    for part in (str(where), "train-images-idx3-ubyte.gz", "LEARNDROP_DATA", "--data-dir",
                 "apt-get install dataset-fashion-mnist", "no route to host"):
        assert part in msg
    # An explicit --data-dir without the files is an error, not a fallback.
    _write_idx(where, value=1)
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("fashion-mnist", data_dir=str(tmp_path))
    assert str(tmp_path) in _one_line(err)


def test_download_lands_in_local_cache(tmp_path, monkeypatch):
    monkeypatch.setitem(datasets.SYSTEM_COPIES, "mnist", ())

    def fake_download(name, root, image_size):  # what torchvision.datasets.MNIST leaves
        _write_idx(root / "MNIST" / "raw", value=3)

    monkeypatch.setattr(datasets, "_download", fake_download)
    assert "(download)" in load_dataset("mnist").source
    monkeypatch.setattr(datasets, "_download", None)  # found locally now: not called
    assert "(cache)" in load_dataset("mnist").source


def test_offline_env_skips_download(monkeypatch):
    monkeypatch.setitem(datasets.SYSTEM_COPIES, "mnist", ())
    monkeypatch.setattr(datasets, "_download", None)
    monkeypatch.setenv("LEARNDROP_OFFLINE", "1")
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("mnist")
    assert "t10k-labels-idx1-ubyte.gz" in _one_line(err)


def test_cifar10_torchvision_pickles(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                 b"labels": [0, 1, 2, 9]}
        # Protocol 2 with numpy 1's module names, as in the official files (written by
        # Python 2 and numpy 1: numpy.core.multiarray._reconstruct), and protocol 5 (numpy 2's
        # _frombuffer).
        data = pickle.dumps(batch, protocol=2 if name < "data_batch_4" else 5)
        if name < "data_batch_4":
            assert b"numpy._core.multiarray\n" in data
            data = data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
        (d / name).write_bytes(data)
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % i for i in
                                                                    range(10)]}))
    ds = load_dataset("cifar10", data_dir=str(tmp_path))
    assert ds.train_x.shape == (20, 3, 32, 32) and ds.test_x.shape == (4, 3, 32, 32)
    assert ds.classes[9] == "c9" and ds.train_y.tolist()[:4] == [0, 1, 2, 9]


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)  # what a crafted pickle would call when read


def test_cifar10_pickles_never_run_code(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    marker = tmp_path / "ran"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, 1]}
        if name == "data_batch_3":
            batch[b"labels"] = _RunsCode(marker)
        (d / name).write_bytes(pickle.dumps(batch))
    with pytest.raises(CorruptDatasetError) as err:
        load_dataset("cifar10", data_dir=str(tmp_path))
    assert not marker.exists()
    message = _one_line(err)
    assert "data_batch_3" in message and "mkdir" in message and "official" in message


def test_imagenette_tgz_layout(tmp_path):
    root = tmp_path / "src"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for wnid in ("n01440764", "n02102040"):
            (root / split / wnid).mkdir(parents=True)
            for i in range(2):
                a = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)  # not square
                Image.fromarray(a).save(root / split / wnid / f"{i}.JPEG")
    _tar(root, tmp_path / "imagenette2-160.tgz", "imagenette2-160/")
    ds = load_dataset("imagenette", data_dir=str(tmp_path), image_size=8)
    assert ds.classes == ["tench", "English springer"] and ds.natural
    assert ds.train_x.shape == (4, 3, 8, 8) and ds.test_x.shape == (4, 3, 8, 8)
    assert load_dataset("imagenette", data_dir=str(tmp_path)).image_size == 160  # default


def test_corrupt_idx(tmp_path):
    _write_idx(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08\x03xxxx"))
    with pytest.raises(CorruptDatasetError) as err:
        load_dataset("mnist", data_dir=str(tmp_path))
    assert "t10k-labels-idx1-ubyte.gz" in _one_line(err)


def test_cache_serves_second_load(tmp_path, monkeypatch):
    _write_idx(tmp_path / "d", value=7)
    first = load_dataset("mnist", data_dir=str(tmp_path / "d"), image_size=12)
    assert first.train_x.shape == (30, 1, 12, 12)

    def broken_decode(*args):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(datasets, "_decode", broken_decode)
    again = load_dataset("mnist", data_dir=str(tmp_path / "d"), image_size=12)
    assert torch.equal(first.train_x, again.train_x) and first.mean == again.mean
    files = sorted(p.name for p in (cache_dir() / "arrays").iterdir())
    assert len(files) == 1 and files[0].endswith(".pt")  # no temp files left behind
    # Another image size, or changed source files, are different cache entries.
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset("mnist", data_dir=str(tmp_path / "d"))
    _write_idx(tmp_path / "d", value=8, n_train=40)
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset("mnist", data_dir=str(tmp_path / "d"), image_size=12)


def test_interrupted_cache_write_leaves_nothing(tmp_path, monkeypatch):
    _write_idx(tmp_path / "d")

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.warns(UserWarning, match="could not write"):
        ds = load_dataset("mnist", data_dir=str(tmp_path / "d"))
    assert len(ds.train_y) == 30
    assert list((cache_dir() / "arrays").iterdir()) == []


@pytest.mark.skipif(not FASHION_SYSTEM.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_system_copy():
    ds = load_dataset("fashion-mnist")
    assert "system copy" in ds.source
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert torch.equal(ds.train_y.bincount(), torch.full((10,), 6000))
    assert 0.25 < ds.mean[0] < 0.32 and 0.3 < ds.std[0] < 0.4


# -------------------------------------------------------------------------------- subsets


def test_subset_balanced_seeded(tmp_path):
    _write_idx(tmp_path, n_train=100, n_test=50)
    a = load_dataset("mnist", data_dir=str(tmp_path), subset=25, seed=3, test_subset=20)
    b = load_dataset("mnist", data_dir=str(tmp_path), subset=25, seed=3, test_subset=20)
    c = load_dataset("mnist", data_dir=str(tmp_path), subset=25, seed=4)
    assert a.train_y.bincount().tolist() == [3] * 5 + [2] * 5  # remainder to lowest classes
    assert a.test_y.bincount().tolist() == [2] * 10 and len(c.test_y) == 50
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)
    full = load_dataset("mnist", data_dir=str(tmp_path))
    ia = balanced_subset(full.train_y, 25, 10, seed=3)
    ic = balanced_subset(full.train_y, 25, 10, seed=4)
    assert not torch.equal(ia, ic) and torch.equal(full.train_y[ia], a.train_y)


def test_subset_gives_short_classes_share_to_others():
    y = torch.tensor([0] + [1] * 10 + [2] * 10)
    idx = balanced_subset(y, 9, 3, seed=0)
    assert y[idx].bincount().tolist() == [1, 4, 4]
    assert torch.equal(balanced_subset(y, 100, 3, seed=0), torch.arange(21))


# -------------------------------------------------------------------------------- loader


def _loader(x, y=None, bs=16, **kw) -> DeviceLoader:
    y = torch.arange(len(x)) if y is None else y
    kw.setdefault("mean", (0.0,) * x.shape[1])
    kw.setdefault("std", (1.0,) * x.shape[1])
    kw.setdefault("augment", False)
    return DeviceLoader(x, y, bs, **kw)


def test_loader_normalises():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 8, 8), generator=gen, dtype=torch.uint8)
    x[:, 1] //= 3  # channels with different statistics
    mean, std = datasets._channel_stats(x)
    (xb, yb), = _loader(x, bs=64, train=False, mean=mean, std=std)
    assert xb.shape == (64, 3, 8, 8) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert torch.allclose(xb.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(xb.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    (xh, _), = _loader(x, bs=64, train=False, mean=mean, std=std, dtype=torch.float16,
                       channels_last=True)
    assert xh.dtype == torch.float16 and xh.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(xh.float(), xb, atol=1e-2)


def test_loader_epochs_cover_each_sample_once_and_are_seeded():
    x = torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1).expand(50, 1, 8, 8).contiguous()
    loader = _loader(x, train=True, drop_last=False, augment=True)
    assert len(loader) == 4
    epochs = []
    for _ in range(2):
        batches = list(loader)
        ys = torch.cat([y for _, y in batches])
        assert sorted(ys.tolist()) == list(range(50))
        for xb, yb in batches:  # labels still match their images
            assert torch.equal(xb[:, 0, 4, 4].mul(255).round().long(), yb)
        epochs.append(batches)
    assert not torch.equal(epochs[0][0][1], epochs[1][0][1])  # new order each epoch
    dropping = _loader(x, train=True, augment=False)
    assert len(dropping) == 3 and dropping.num_samples == 48
    assert len(torch.cat([y for _, y in dropping]).unique()) == 48
    # Same seed + epoch -> identical batches (resume with set_epoch).
    again = _loader(x, train=True, drop_last=False, augment=True)
    again.set_epoch(1)
    for (xa, ya), (xb, yb) in zip(epochs[1], again):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other_seed = _loader(x, train=True, drop_last=False, seed=1)
    assert not torch.equal(next(iter(other_seed))[1], epochs[0][0][1])


def test_loader_eval_order_and_partial_batch():
    x = torch.zeros(10, 1, 4, 4, dtype=torch.uint8)
    loader = _loader(x, bs=4, train=False)
    assert len(loader) == 3
    assert torch.equal(torch.cat([y for _, y in loader]), torch.arange(10))
    assert len(_loader(x, bs=32, train=True)) == 1  # smaller than a batch: one partial batch


def test_augmentation_crops_and_flips_but_keeps_content():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (64, 3, 32, 32), generator=gen, dtype=torch.uint8)  # no zeros
    (xb, yb), = _loader(x, bs=64, train=True, augment=True, seed=5)
    got = xb.mul(255).round().to(torch.uint8)
    assert not torch.equal(got, x[yb])
    padded = torch.nn.functional.pad(x[yb], (4, 4, 4, 4))
    shifted = flipped = 0
    for i in range(64):
        img = got[i]
        # zero padding: the nonzero pixels are a sub-multiset of the original image's
        orig = x[yb[i]].flatten().sort().values
        nz = img.flatten()[img.flatten() > 0].sort().values
        assert torch.isin(nz, orig).all() and len(nz) <= len(orig)
        matches = [
            (oy, ox, flip)
            for oy in range(9) for ox in range(9) for flip in (False, True)
            if torch.equal(img, (lambda c: c.flip(-1) if flip else c)(
                padded[i, :, oy : oy + 32, ox : ox + 32]))
        ]
        assert matches, "augmented image is not a padded crop (+ flip) of its source"
        oy, ox, flip = matches[0]
        shifted += (oy, ox) != (4, 4)
        flipped += flip
    assert 10 < flipped < 54 and shifted > 40


def test_make_loaders():
    x = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8)
    y = torch.arange(40) % 4
    ds = ImageDataset("toy", x, y, x[:10], y[:10], list("abcd"), (0.5,), (0.25,), natural=False)
    train, test = make_loaders(ds, batch_size=16, device="cpu", seed=0, eval_batch_size=8)
    assert (len(train), len(test), train.augment, test.train) == (2, 2, False, False)
    ds.natural = True
    assert make_loaders(ds, 16, "cpu", 0)[0].augment
    assert not make_loaders(ds, 16, "cpu", 0, augment=False)[0].augment


# ------------------------------------------------------------------------ real CIFAR-10


@pytest.fixture(scope="session")
def cifar_cache(tmp_path_factory) -> Path:
    """One cache for the session, so the 60,000 JPEGs are decoded at most once."""
    return tmp_path_factory.mktemp("cifar-cache")


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR_TARBALL.is_file(), reason="shared CIFAR-10 tarball absent")
def test_real_cifar10_tarball(cifar_cache, monkeypatch):
    monkeypatch.setenv("LEARNDROP_CACHE", str(cifar_cache))
    # Found as a system copy (an installation lists its own; the library names none of a
    # development checkout).
    monkeypatch.setitem(datasets.SYSTEM_COPIES, "cifar10", (str(CIFAR_TARBALL),))
    t0 = time.perf_counter()
    ds = load_dataset("cifar10")
    decode_s = time.perf_counter() - t0
    assert "cifar10-jpg.tar.gz" in ds.source
    assert ds.train_x.shape == (50000, 3, 32, 32) and ds.test_x.shape == (10000, 3, 32, 32)
    assert ds.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                          "horse", "ship", "truck"]
    assert torch.equal(ds.test_y.bincount(), torch.full((10,), 1000))
    t0 = time.perf_counter()
    again = load_dataset("cifar10", data_dir=str(CIFAR_TARBALL), subset=1000)
    cached_s = time.perf_counter() - t0
    print(f"CIFAR-10: decode {decode_s:.1f} s, cached load {cached_s:.2f} s")
    assert again.train_y.bincount().tolist() == [100] * 10
    assert cached_s < 5.0  # < 1 s on an idle machine; slack for shared CI cores
    assert ds.natural and ds.image_size == 32 and 0.45 < ds.mean[0] < 0.53


# ------------------------------------------------------- one class is not a classification task


def test_a_dataset_with_one_class_is_refused(tmp_path, capsys):
    """A folder with only train/a/ and test/a/ used to train to loss 0 and accuracy 1."""
    from learndrop.cli import main

    _make_tree(tmp_path / "one", classes=("a",))
    with pytest.raises(DatasetFormatError) as err:
        load_dataset(f"folder:{tmp_path / 'one'}")
    assert "at least two classes" in _one_line(err)
    out = tmp_path / "run"
    code = main(["train", "--dataset", f"folder:{tmp_path / 'one'}", "--epochs", "1",
                 "--quiet", "--no-plots", "--out", str(out)])
    err_text = capsys.readouterr().err.strip()
    assert code == 1 and len(err_text.splitlines()) == 1
    assert "at least two classes" in err_text
    assert not out.exists() or not any(out.iterdir())  # nothing written

    # The same kind: a training subset too small to hold two classes.
    _make_tree(tmp_path / "two", classes=("a", "b"))
    with pytest.raises(DatasetFormatError, match="raise --subset"):
        load_dataset(f"folder:{tmp_path / 'two'}", subset=1)
    assert load_dataset(f"folder:{tmp_path / 'two'}", subset=2).num_classes == 2


def test_a_test_set_with_one_class_is_refused(tmp_path):
    """A test set of one class reports accuracy 1.0 for any network."""
    _make_tree(tmp_path / "two", classes=("a", "b"))
    for f in (tmp_path / "two" / "test" / "b").iterdir():
        f.unlink()
    with pytest.raises(DatasetFormatError, match="the test set .* at least two classes: give"):
        load_dataset(f"folder:{tmp_path / 'two'}")
    _make_tree(tmp_path / "ok", classes=("a", "b"))
    with pytest.raises(DatasetFormatError, match="raise --test-subset"):
        load_dataset(f"folder:{tmp_path / 'ok'}", test_subset=1)
    assert load_dataset(f"folder:{tmp_path / 'ok'}", test_subset=2).num_classes == 2
