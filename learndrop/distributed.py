"""Data-parallel training helpers: process group from torchrun's environment, the DDP wrapper,
one global drop decision, and the ``--nproc`` launcher.

Under ``torchrun`` every process (rank) runs the whole training loop on its own shard of every
epoch; DistributedDataParallel all-reduces the gradients, so the parameters stay bit-identical
across ranks. Decisions taken from them (Learn&Drop's scores) are therefore identical too, but
the trainer does not rely on it: rank 0's decision is broadcast and every rank applies exactly
that one (:func:`broadcast_decision`, plugged into :attr:`learndrop.methods.Method.sync`).

Backend: gloo on CPU, NCCL on CUDA. Every collective has a timeout (``timeout_s``): a rank that
dies or hangs makes the others fail with :class:`DistributedError` instead of waiting forever.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistContext", "DistributedError", "all_reduce_sum", "any_rank", "barrier",
    "broadcast_buffers", "broadcast_decision", "broadcast_object", "env_world_size", "explain",
    "init_from_env", "launch", "on_main_first", "strip_option", "wrap_ddp",
]

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 600.0


class DistributedError(RuntimeError):
    """A collective failed: another rank died, hung past the timeout, or raised first."""


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size``, on ``device``.

    A single process is ``DistContext(0, 1, 0, device)``; every helper below is then a no-op.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False  # this context created the process group (and destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def close(self) -> None:
        """Destroy the process group if this context created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def env_world_size() -> int:
    """``WORLD_SIZE`` as set by torchrun (1 outside of it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> DistContext:
    """Join the process group described by torchrun's variables (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), or use the one already initialised.

    ``device`` is the device asked for; a bare ``cuda`` becomes ``cuda:LOCAL_RANK`` (one GPU per
    process). Outside torchrun (no ``WORLD_SIZE`` > 1) this returns a single-process context.
    """
    if not dist.is_initialized() and env_world_size() <= 1:
        return DistContext(0, 1, 0, device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(
            backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
        owns = True
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device, owns)


def _guard(what: str, fn: Callable[[], T]) -> T:
    """Run a collective; turn a backend failure into a one-line :class:`DistributedError`."""
    try:
        return fn()
    except (RuntimeError, dist.DistError) as err:
        if isinstance(err, DistributedError):
            raise
        text = str(err).strip()
        first = text.splitlines()[0].split("] ", 1)[-1] if text else type(err).__name__
        # The same words as explain(): where a hung peer is noticed (DDP's backward or one of
        # our collectives) is a race, and the user's message must not depend on it.
        raise DistributedError(
            f"rank {dist.get_rank()}: lost the other processes ({first}; in {what}); one of "
            "them died, raised an error or hung past the timeout (--dist-timeout)") from err


# Gloo words its timeouts in more than one way ("Timed out ...", "Application timeout caused
# pair closure"), depending on which side of the connection notices first.
_COMM_SIGNS = ("gloo", "NCCL", "nccl", "Connection closed by peer", "Connection reset",
               "Timed out", "timed out", "Application timeout", "pair closure", "Broken pipe")


def explain(err: BaseException) -> BaseException:
    """``err``, or a one-line :class:`DistributedError` when it is a failed collective (one that
    DDP ran, e.g. the gradient all-reduce in ``backward``) of a data-parallel run."""
    if isinstance(err, DistributedError) or not dist.is_initialized():
        return err
    text = str(err).strip()
    if not (isinstance(err, dist.DistError) or any(s in text for s in _COMM_SIGNS)):
        return err
    first = text.splitlines()[0] if text else type(err).__name__
    first = first.split("] ", 1)[-1]  # drop gloo's "[/path/to/file.cc:78] " prefix
    return DistributedError(
        f"rank {dist.get_rank()}: lost the other processes ({first}); one of them died, raised "
        "an error or hung past the timeout (--dist-timeout)")


def broadcast_object(obj: T, ctx: DistContext, src: int = 0) -> T:
    """``obj`` of rank ``src``, on every rank (picklable objects)."""
    if not ctx.distributed:
        return obj
    box = [obj]
    _guard("broadcast", lambda: dist.broadcast_object_list(box, src=src, device=_obj_device(ctx)))
    return box[0]


def _obj_device(ctx: DistContext) -> torch.device | None:
    # NCCL moves pickled objects through the GPU; gloo through the CPU.
    return ctx.device if ctx.device.type == "cuda" else None


def broadcast_decision(ctx: DistContext) -> Callable[[list[str]], list[str]]:
    """A :attr:`Method.sync` callable: every rank gets (and applies) rank 0's list of units."""
    def sync(names: list[str]) -> list[str]:
        return list(broadcast_object(list(names), ctx))
    return sync


def on_main_first(ctx: DistContext, fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on rank 0 only; re-raise its error on every rank (so that no rank waits
    forever for a rank 0 that gave up, e.g. on an existing run directory)."""
    if not ctx.distributed:
        return fn()
    failure: Exception | None = None
    result = None
    if ctx.is_main:
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 - re-raised below, after telling the others
            failure = err
    message = broadcast_object(None if failure is None else str(failure), ctx)
    if failure is not None:
        raise failure
    if message is not None:
        raise DistributedError(f"rank 0 failed: {message}")
    return result


def all_reduce_sum(values: Sequence[float] | torch.Tensor, ctx: DistContext) -> list[float]:
    """Element-wise sum over all ranks (float64, one collective)."""
    t = torch.as_tensor(values, dtype=torch.float64, device=ctx.device).clone()
    if ctx.distributed:
        _guard("all_reduce", lambda: dist.all_reduce(t))
    return t.tolist()


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank when ``flag`` is true on any (e.g. Ctrl-C seen by one process)."""
    if not ctx.distributed:
        return flag
    return all_reduce_sum([1.0 if flag else 0.0], ctx)[0] > 0


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op in a single process)."""
    if ctx.distributed:
        _guard("barrier", dist.barrier)


def broadcast_buffers(model: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts them at the start of each forward; after the last step of an epoch each rank
    holds the statistics of its own last batch, so evaluation and the saved model sync first.
    """
    if not ctx.distributed:
        return
    for buffer in model.buffers():
        _guard("broadcast of buffers", lambda b=buffer: dist.broadcast(b, src=0))


def wrap_ddp(model: nn.Module, ctx: DistContext, *,
             find_unused_parameters: bool = False) -> nn.Module:
    """``model`` in DistributedDataParallel (``model`` itself in a single process).

    Build a new wrapper after every structural change (a dropped unit, a frozen parameter):
    DDP registers the parameters it reduces when it is built, and paying
    ``find_unused_parameters=True`` on every step is the slow alternative. Methods that skip
    units per step (stochastic depth) do need it.
    """
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return _guard("DDP setup", lambda: DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=find_unused_parameters))


# ---- the --nproc launcher ---------------------------------------------------------------------

def strip_option(argv: Sequence[str], option: str) -> list[str]:
    """``argv`` without ``option VALUE`` / ``option=VALUE``."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


def launch(argv: Sequence[str], nproc: int) -> int:
    """Run ``python -m learndrop ARGV`` in ``nproc`` processes under torchrun (one machine,
    a free port chosen by ``--standalone``); returns torchrun's exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "-m", "learndrop", *strip_option(argv, "--nproc")]
    with contextlib.suppress(KeyboardInterrupt):  # torchrun forwards Ctrl-C to the workers
        return subprocess.run(cmd, check=False).returncode
    return 130
