"""BatchNorm recalibration after a structural change.

Dropping a unit changes what every later layer receives, but the BatchNorm layers keep running
statistics of the old network: evaluated right after a drop, the network normalises with the
wrong mean and variance (on the ``make run`` setting the test accuracy fell from 78% to 28% in
the epoch of the first drop). The fix is the one of SWA's ``update_bn`` (Izmailov et al.,
"Averaging Weights Leads to Wider Optima", 2018): recompute the statistics from a few training
batches, no gradients, as a cumulative average (``momentum=None``).

We do not call ``torch.optim.swa_utils.update_bn``: it resets *every* BatchNorm layer and then
runs the network in training mode, which wipes the statistics of frozen units (their layers stay
in eval mode, so they would keep the reset values) and lets dropout run. Here only the named
layers are reset, in training mode, and the rest of the network runs in eval mode, as it will at
evaluation time. :func:`batchnorms_after` names the layers after a given module, or all
trainable ones; which of the two to use after a drop was measured
(``benchmarks/drop_recovery.py``; :meth:`learndrop.methods.base.Method.after_change`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from learndrop.units import record_execution

__all__ = ["batchnorms_after", "recalibrate_batchnorm"]


def _recalibratable(module: nn.Module) -> bool:
    """A BatchNorm layer with running statistics whose own parameters still train (frozen
    layers, e.g. of frozen units, keep their statistics)."""
    if not isinstance(module, nn.modules.batchnorm._BatchNorm) or not module.track_running_stats:
        return False
    return all(p.requires_grad for p in module.parameters(recurse=False))


def batchnorms_after(
    model: nn.Module, example_input: torch.Tensor, module_names: Iterable[str] | None = None
) -> list[str]:
    """Qualified names of the BatchNorm layers that run after the first of ``module_names``
    in one forward pass (execution order, recorded on meta tensors); all of them when
    ``module_names`` is ``None``. Frozen layers are left out (see :func:`_recalibratable`).

    The names may be of modules already replaced by ``nn.Identity`` (a dropped unit): the
    identity still runs at the unit's place.

    Raises:
        ValueError: none of ``module_names`` runs in the forward pass.
    """
    calls = record_execution(model, example_input)
    start = 0
    if module_names is not None:
        wanted = set(module_names)
        hits = [i for i, call in enumerate(calls) if call.name in wanted]
        if not hits:
            raise ValueError(f"none of {sorted(wanted)} runs in the forward pass")
        start = hits[0] + 1
    names = dict.fromkeys(c.name for c in calls[start:] if _recalibratable(c.module))
    return list(names)


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, batches: Sequence[torch.Tensor], names: Iterable[str]
) -> int:
    """Recompute the running statistics of the BatchNorm layers ``names`` from ``batches``.

    Each layer's statistics are reset and re-estimated as the cumulative average over the
    batches (``momentum=None``), with the rest of ``model`` in eval mode; afterwards every
    layer's momentum and every module's train/eval mode are what they were. No parameter and no
    other buffer changes.

    Args:
        model: the network.
        batches: input tensors, each ``(N, C, H, W)`` as the model takes them.
        names: qualified names of BatchNorm layers of ``model`` (e.g. :func:`batchnorms_after`).

    Returns:
        The number of samples run forward (each costs one forward pass of ``model``).

    Raises:
        ValueError: no batch, or a name that is not a BatchNorm layer with running statistics.
    """
    if not batches:
        raise ValueError("recalibrating BatchNorm needs at least one batch")
    names = list(names)
    layers = [model.get_submodule(n) for n in names]
    for name, layer in zip(names, layers):
        if not _recalibratable(layer):
            raise ValueError(f"{name!r} is not a trainable BatchNorm layer with running stats")
    if not layers:
        return 0
    modes = [(m, m.training) for m in model.modules()]
    momenta = [layer.momentum for layer in layers]
    try:
        model.eval()
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None
            layer.train()
        for x in batches:
            model(x)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        for module, training in modes:
            module.training = training
    return sum(len(x) for x in batches)
