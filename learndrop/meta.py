"""Running a model on meta tensors: its own code runs, on shapes only (no memory, no compute,
no parameter or BatchNorm statistic touched)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["meta_batch", "meta_call", "meta_state"]

#: Smallest batch a meta pass runs on: training-mode BatchNorm refuses a single value per
#: channel (a batch of one before ``BatchNorm1d``), and on meta tensors a batch costs nothing.
MIN_META_BATCH = 2


def meta_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Meta stand-ins for every parameter and buffer of ``model``; trainable parameters keep
    ``requires_grad`` so that a backward pass runs what training would run. A tensor the model
    holds under several names (tied weights) gets one stand-in under all of them, so the tie
    holds in the meta pass too."""
    state: dict[str, torch.Tensor] = {}
    stand_ins: dict[int, torch.Tensor] = {}
    for name, value in model.state_dict(keep_vars=True).items():
        t = stand_ins.get(id(value))
        if t is None:
            t = torch.empty_like(value, device="meta")
            if isinstance(value, nn.Parameter) and value.requires_grad:
                t.requires_grad_(True)
            stand_ins[id(value)] = t
        state[name] = t
    return state


def meta_batch(example_input: torch.Tensor) -> torch.Tensor:
    """A meta tensor shaped like ``example_input`` (batch first), with at least
    :data:`MIN_META_BATCH` samples: only the shape of one sample matters to a meta pass."""
    shape = (max(MIN_META_BATCH, example_input.shape[0]), *example_input.shape[1:])
    return torch.empty(shape, dtype=example_input.dtype, device="meta")


def meta_call(model: nn.Module, batch: torch.Tensor) -> object:
    """``model(batch)`` on meta tensors, through ``torch.func.functional_call``; ``batch`` is
    moved to the meta device (use :func:`meta_batch` to build it from an example input)."""
    return torch.func.functional_call(
        model, meta_state(model), (batch.detach().to("meta"),), strict=False
    )
