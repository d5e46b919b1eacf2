"""Model surgery: drop or freeze a unit, and keep the optimizer consistent.

Dropping replaces each of the unit's modules by ``nn.Identity`` in its parent, removes the unit's
parameters from every optimizer param group *and* deletes their optimizer state, so that
``optimizer.state_dict()`` stays consistent and loads into a freshly built optimizer of the
same (dropped) structure. Param groups that become empty are kept, so that per-group learning
rate schedulers stay aligned.

Freezing keeps the unit in the forward pass, turns off its parameters' gradients and keeps its
BatchNorm layers in eval mode for good, so their running statistics stop moving too.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from learndrop.units import Unit

__all__ = ["drop_unit", "freeze_unit", "remove_from_optimizer", "replace_module"]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at the qualified ``name`` inside ``model``; return the module it replaced."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = parent.get_submodule(child)
    setattr(parent, child, new)
    return old


def remove_from_optimizer(
    optimizer: torch.optim.Optimizer | None, params: Iterable[torch.Tensor]
) -> int:
    """Remove ``params`` from every param group of ``optimizer`` and delete their state.

    Returns the number of parameters removed.
    """
    if optimizer is None:
        return 0
    doomed = {id(p) for p in params}
    removed = 0
    for group in optimizer.param_groups:
        kept = [p for p in group["params"] if id(p) not in doomed]
        removed += len(group["params"]) - len(kept)
        group["params"] = kept
    for p in [p for p in optimizer.state if id(p) in doomed]:
        del optimizer.state[p]
    return removed


def drop_unit(model: nn.Module, unit: Unit, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Remove ``unit`` from ``model`` (and ``optimizer``). Returns the parameters released."""
    params = unit.parameters(model)
    released = sum(p.numel() for p in params)
    remove_from_optimizer(optimizer, params)
    for name in unit.modules:
        replace_module(model, name, nn.Identity())
    return released


def _stay_in_eval(module: nn.Module, args: tuple) -> None:
    """Forward pre-hook of frozen units: whatever ``model.train()`` did, run in eval mode."""
    if module.training:
        module.eval()


def freeze_unit(
    model: nn.Module, unit: Unit, optimizer: torch.optim.Optimizer | None = None
) -> int:
    """Freeze ``unit``: no parameter gradients, BatchNorm statistics fixed, optimizer state
    released. The unit keeps running in the forward pass. Returns the parameters frozen."""
    params = unit.parameters(model)
    remove_from_optimizer(optimizer, params)
    for p in params:
        p.requires_grad_(False)
        p.grad = None
    for name in unit.modules:
        module = model.get_submodule(name)
        module.eval()
        module.register_forward_pre_hook(_stay_in_eval)
    return sum(p.numel() for p in params)
