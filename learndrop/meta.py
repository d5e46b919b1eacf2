"""Running a model on meta tensors: its own code runs, on shapes only (no memory, no compute,
no parameter or BatchNorm statistic touched)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["meta_call", "meta_state"]


def meta_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Meta stand-ins for every parameter and buffer of ``model``; trainable parameters keep
    ``requires_grad`` so that a backward pass runs what training would run."""
    state = {}
    for name, value in model.state_dict(keep_vars=True).items():
        t = torch.empty_like(value, device="meta")
        if isinstance(value, nn.Parameter) and value.requires_grad:
            t.requires_grad_(True)
        state[name] = t
    return state


def meta_call(model: nn.Module, example_input: torch.Tensor) -> object:
    """``model(example_input)`` on meta tensors, through ``torch.func.functional_call``."""
    return torch.func.functional_call(
        model, meta_state(model), (example_input.detach().to("meta"),), strict=False
    )
