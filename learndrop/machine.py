"""Which machine a run trained on: the CPU model and the flags that decide kernel speed, or the
GPU. ``summary.json`` records :func:`machine_name`, so that a bench whose runs were trained on
several machines (one seed in one session, its copies in the next) says so; time ratios
between runs of different machines mean little."""

from __future__ import annotations

import os
import platform
from functools import cache
from pathlib import Path

import torch

__all__ = ["cpu_flags", "cpu_model", "machine_name", "usable_cpus"]


@cache
def _cpuinfo() -> tuple[str | None, tuple[str, ...]]:
    model, flags = None, ()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model is None:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                prefixes = ("avx", "amx", "fma", "f16c")
                flags = tuple(sorted(f for f in have if f.startswith(prefixes)))
                break
    except OSError:  # not Linux: the platform module's answer
        pass
    return model, flags


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` says."""
    return _cpuinfo()[0] or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The CPU's vector and matrix extensions (``avx*``, ``amx*``, ``fma``, ``f16c``); empty
    where unknown."""
    return list(_cpuinfo()[1])


def usable_cpus() -> int | None:
    """The CPUs this process may run on (its affinity, which a container or ``taskset`` may
    narrow below ``os.cpu_count()``); None where unknown."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def machine_name(device: torch.device | str) -> str:
    """A few words for the machine a run trains on: the GPU's name on CUDA, else the CPU model,
    whether it has native bf16 (AVX512_BF16 or AMX) and the torch threads, e.g. ``AMD EPYC
    (AVX512_BF16), 2 threads``."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    bf16 = ", ".join(f.upper() for f in cpu_flags() if f in ("avx512_bf16", "amx_tile"))
    return f"{cpu_model()}{f' ({bf16})' if bf16 else ''}, {torch.get_num_threads()} threads"
