"""Numeric precision and memory format of training: one decision for every loop.

``resolve_precision("auto", device)`` picks bf16 autocast only where the hardware computes in
bf16 natively, because emulated bf16 is slower than fp32:

- CUDA: ``torch.cuda.is_bf16_supported()`` (Ampere and newer);
- CPU: AVX512_BF16 or AMX tiles, as PyTorch's own CPU feature detection reports them
  (``torch.cpu._is_avx512_bf16_supported()``, ``torch.cpu._is_amx_tile_supported()``).

Measured on this project's CPU machine (Intel Xeon with AVX512 but without AVX512_BF16,
ResNet-56, batch 128, 32x32, 2 threads, the set-ups alternated in one process;
``benchmarks/results/cpu-fastpath/``): fp32 contiguous 186 img/s, fp32 channels_last 233 img/s,
bf16 autocast + channels_last 77 img/s. oneDNN runs bf16 there by conversion, 2.4x slower than
fp32, so ``auto`` keeps fp32 on such CPUs. channels_last (NHWC) is faster for convolutions on both
CPU (oneDNN's native layout) and CUDA (tensor cores), so it is used everywhere.

Under bf16 autocast the loss and softmax are still computed in fp32 (the training loops cast
the logits with ``.float()`` before ``cross_entropy``). FLOPs are counted on meta tensors and do
not depend on the precision.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

__all__ = ["PRECISIONS", "Precision", "PrecisionError", "native_bf16", "resolve_precision"]

PRECISIONS = ("auto", "fp32", "bf16")


class PrecisionError(ValueError):
    """An unknown precision name."""


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (what PyTorch reports; no model-name parsing)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        cpu = torch.cpu
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)
    return False


@dataclass(frozen=True)
class Precision:
    """How a loop runs its forward passes.

    Attributes:
        name: ``"fp32"`` or ``"bf16"`` (bf16 autocast: matmuls and convolutions in bf16,
            parameters, gradients and optimizer state in fp32).
        device_type: ``"cpu"`` or ``"cuda"``.
        channels_last: whether the model and its input batches use the NHWC memory format.
        native: whether the hardware has native bf16 (recorded so that a slow explicit bf16
            run on emulating hardware is visible in its summary).
    """

    name: str
    device_type: str
    channels_last: bool = True
    native: bool = False

    def autocast(self) -> contextlib.AbstractContextManager:
        """A fresh context manager for one forward pass."""
        if self.name == "bf16":
            return torch.autocast(self.device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def __str__(self) -> str:
        """What a run's first log line says, e.g. ``fp32 channels_last``."""
        emulated = (" (emulated: this hardware has no native bf16, expect it slower than fp32)"
                    if self.name == "bf16" and not self.native else "")
        return f"{self.name} {self.memory_format}{emulated}"

    @property
    def memory_format(self) -> str:
        return "channels_last" if self.channels_last else "contiguous"

    def describe(self) -> dict:
        """What a run's log and ``summary.json`` record."""
        return {"precision": self.name, "memory_format": self.memory_format,
                "native_bf16": self.native}


def resolve_precision(requested: str, device: torch.device | str) -> Precision:
    """The precision to train with: ``requested`` is ``auto``, ``fp32`` or ``bf16``.

    ``auto`` gives bf16 where :func:`native_bf16` holds and fp32 elsewhere. An explicit
    ``bf16`` is honoured even on hardware that only emulates it (``native`` is then False).

    Raises:
        PrecisionError: an unknown name.
    """
    if requested not in PRECISIONS:
        raise PrecisionError(f"--precision must be one of {', '.join(PRECISIONS)}, "
                             f"got {requested!r}")
    device = torch.device(device)
    native = native_bf16(device)
    name = ("bf16" if native else "fp32") if requested == "auto" else requested
    return Precision(name, device.type, channels_last=True, native=native)
