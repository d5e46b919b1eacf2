"""Batches straight from in-memory uint8 tensors on the training device.

Small images make per-sample Python (a torch `Dataset` + `DataLoader` with workers) the
bottleneck of CNN training, especially on few CPU cores. Here the whole uint8 set lives on the
device and a batch costs a handful of tensor ops: gather, pad, crop + flip by index, convert,
normalise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from learndrop.data.datasets import ImageDataset

__all__ = ["DeviceLoader", "make_loaders"]


def _epoch_seed(seed: int, epoch: int) -> int:
    # One independent, reproducible stream per (seed, epoch): resuming at epoch e needs no
    # replay of the earlier epochs' random draws. Hashed to 32 bits because the CPU generator
    # (mt19937) only uses the low 32 bits of its seed.
    digest = hashlib.blake2b(f"{seed}:{epoch}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


class DeviceLoader:
    """Iterates (x, y) batches from in-memory uint8 tensors, with augmentation and normalisation
    done on `device` in a few vectorised tensor ops (no per-sample Python, no worker processes).

    - `train=True`: a new seeded permutation each epoch; `drop_last` defaults to `train`
      (a set smaller than one batch still gives that one partial batch).
    - `augment=True`: per sample, random crop with zero padding of min(H, W) // 8 pixels
      (4 for 32x32) and random horizontal flip.
    - Output: `dtype` images `(x / 255 - mean) / std`, optionally channels_last; int64 labels.
    - Randomness depends only on (seed, epoch) and is drawn on the CPU, so it is the same on
      every device. Each `iter()` uses the loader's epoch counter and then advances it;
      `set_epoch(e)` makes the next epoch e (for resume).
    - `rank`/`world_size` (data parallelism): every rank draws the same permutation and
      augmentation and takes positions `rank::world_size` of it (the first
      `len // world_size * world_size` positions, so every rank has the same number of
      samples and batches). With `batch_size` = global batch / `world_size`, the ranks' batch i
      together are exactly batch i of a single process with the global batch size.
    """

    def __init__(
        self,
        x_uint8: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        train: bool,
        augment: bool,
        mean: Sequence[float],
        std: Sequence[float],
        device: str | torch.device = "cpu",
        seed: int = 0,
        drop_last: bool | None = None,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got {rank} of {world_size}")
        if x_uint8.dtype != torch.uint8 or x_uint8.dim() != 4:
            raise TypeError(f"x_uint8 must be a uint8 N x C x H x W tensor, got "
                            f"{x_uint8.dtype} {tuple(x_uint8.shape)}")
        if len(x_uint8) != len(y):
            raise ValueError(f"{len(x_uint8)} images but {len(y)} labels")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        _, c, h, w = x_uint8.shape
        if len(mean) != c or len(std) != c:
            raise ValueError(f"mean/std need {c} values (one per channel)")
        self.device = torch.device(device)
        self.x = x_uint8.to(self.device)  # moved once; batches are gathered on the device
        self.y = y.to(self.device, torch.int64)
        self.batch_size = batch_size
        self.train = train
        self.augment = augment
        self.seed = seed
        self.drop_last = train if drop_last is None else drop_last
        self.channels_last = channels_last
        self.dtype = dtype
        self.pad = min(h, w) // 8
        self.rank = rank
        self.world_size = world_size
        std_t = torch.tensor(std, dtype=torch.float64).view(1, c, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float64).view(1, c, 1, 1)
        # (x / 255 - mean) / std == x * scale - shift: two in-place ops per batch.
        self._scale = (1.0 / (255.0 * std_t)).to(self.device, dtype)
        self._shift = (mean_t / std_t).to(self.device, dtype)
        self._rows = torch.arange(h, device=self.device)
        self._cols = torch.arange(w, device=self.device)
        self.epoch = 0

    def _shard_size(self) -> int:
        """Samples of this rank's shard (all of them in a single process)."""
        if self.world_size == 1:
            return len(self.y)
        if not self.train:  # evaluation: every sample once, shards may differ by one
            return len(range(self.rank, len(self.y), self.world_size))
        return len(self.y) // self.world_size

    @property
    def num_samples(self) -> int:
        """Samples per epoch of this rank (after drop_last)."""
        n = self._shard_size()
        return min(n, len(self) * self.batch_size)

    def __len__(self) -> int:
        """Batches per epoch (of this rank)."""
        n = self._shard_size()
        if self.drop_last and n >= self.batch_size:
            return n // self.batch_size
        return -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration epoch `epoch` (its order and augmentation)."""
        self.epoch = epoch

    def _augment(self, xb: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor,
                 flip: torch.Tensor) -> torch.Tensor:
        b, c, h, w = xb.shape
        p = self.pad
        padded = F.pad(xb, (p, p, p, p)) if p else xb
        # Crop = gather rows oy..oy+h-1, then columns ox..ox+w-1 (reversed when flipped):
        # the flip costs nothing extra.
        rows = oy[:, None] + self._rows[None, :]
        cols = torch.where(flip[:, None], self._cols.flip(0)[None, :], self._cols[None, :])
        cols = cols + ox[:, None]
        out = padded.gather(2, rows[:, None, :, None].expand(b, c, h, padded.shape[3]))
        return out.gather(3, cols[:, None, None, :].expand(b, c, h, w))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        n = len(self.y)
        gen = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
        order = torch.randperm(n, generator=gen) if self.train else None
        if self.augment:
            shifts = torch.randint(0, 2 * self.pad + 1, (2, n), generator=gen)
            flips = torch.randint(0, 2, (n,), generator=gen).bool()
            oy, ox = shifts
        if self.world_size > 1:
            # This rank's positions of the common order (drawn in full on every rank above, so
            # that the shards of one epoch partition the same permutation).
            positions = torch.arange(self.rank, n, self.world_size)[: self._shard_size()]
            if order is None:
                order = positions
            else:
                order = order[positions]
            if self.augment:
                oy, ox, flips = oy[positions], ox[positions], flips[positions]
            n = len(positions)
        if order is not None:
            order = order.to(self.device)
        if self.augment:
            oy, ox, flips = oy.to(self.device), ox.to(self.device), flips.to(self.device)
        for i in range(len(self)):
            sl = slice(i * self.batch_size, min(n, (i + 1) * self.batch_size))
            if order is not None:
                idx = order[sl]
                xb, yb = self.x[idx], self.y[idx]
            else:
                xb, yb = self.x[sl], self.y[sl]
            if self.augment:
                xb = self._augment(xb, oy[sl], ox[sl], flips[sl])
            if self.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            x = xb.to(self.dtype)  # keeps channels_last
            yield x.mul_(self._scale).sub_(self._shift), yb


def make_loaders(
    ds: ImageDataset,
    batch_size: int,
    device: str | torch.device,
    seed: int,
    augment: bool = True,
    eval_batch_size: int | None = None,
    *,
    channels_last: bool = False,
    dtype: torch.dtype = torch.float32,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[DeviceLoader, DeviceLoader]:
    """(train, test) loaders for `ds`. The training loader shuffles, drops the last partial
    batch and augments when `augment` and the dataset is natural; the test loader does none of
    that. Both normalise with the dataset's mean/std. With `world_size` > 1 both give rank
    `rank`'s shard (see :class:`DeviceLoader`); `batch_size` is then per rank."""
    train = DeviceLoader(
        ds.train_x, ds.train_y, batch_size, train=True, augment=augment and ds.natural,
        mean=ds.mean, std=ds.std, device=device, seed=seed, channels_last=channels_last,
        dtype=dtype, rank=rank, world_size=world_size,
    )
    test = DeviceLoader(
        ds.test_x, ds.test_y, eval_batch_size or batch_size, train=False, augment=False,
        mean=ds.mean, std=ds.std, device=device, seed=seed, channels_last=channels_last,
        dtype=dtype, rank=rank, world_size=world_size,
    )
    return train, test
