"""Measured drop cost: what removing a unit does to the network's function, before it goes.

"Has stopped learning" is not "contributes nothing" (DESIGN.md section 1, our direction beyond
the paper). The cost of dropping a unit is the increase of the training loss on a few recent
batches when the unit is bypassed (its modules replaced by the identity)::

    cost(u) = mean_b loss(model without u, b) - mean_b loss(model, b)      (nats per sample)

measured with the BatchNorm layers in training mode (each batch normalised by its own
statistics, as in training, so that stale running statistics after a drop, which recalibration
fixes, do not count against the unit) and everything else in eval mode (no dropout noise, no
random numbers drawn). This is the layer-removal ablation behind ShortGPT's block influence
(Men et al., "ShortGPT: Layers in Large Language Models are More Redundant Than You Expect",
2024), measured on the loss itself rather than on the hidden state.

Nothing is trained and nothing is kept: no gradient is computed, the parameters are not touched
and every BatchNorm buffer (running mean, variance and batch count) is restored bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from learndrop.surgery import replace_module
from learndrop.units import Unit

__all__ = ["LossFn", "batch_loss", "drop_costs", "joint_drop_cost"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor]


@contextmanager
def _probe(model: nn.Module) -> Iterator[None]:
    """BatchNorm layers in training mode, the rest in eval mode, no gradients; afterwards the
    modes and every BatchNorm buffer are restored exactly."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [{k: b.clone() for k, b in m.named_buffers(recurse=False) if b is not None}
             for m in norms]
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        for m in norms:
            m.train()
        with torch.no_grad():
            yield
    finally:
        for m, buffers in zip(norms, saved):
            for k, value in buffers.items():
                getattr(m, k).copy_(value)
        for m, training in modes:
            m.training = training


def _mean_loss(model: nn.Module, batches: Sequence[Batch], loss_fn: LossFn) -> float:
    total = sum(loss_fn(model(x).float(), y) * len(y) for x, y in batches)
    return float(total) / sum(len(y) for _, y in batches)


def batch_loss(model: nn.Module, batches: Sequence[Batch],
               loss_fn: LossFn = F.cross_entropy) -> float:
    """Mean loss per sample of ``model`` on ``batches`` (``(x, y)`` pairs), BatchNorm in
    training mode, nothing changed (see the module docstring).

    Raises:
        ValueError: no batch.
    """
    if not batches:
        raise ValueError("measuring the loss needs at least one batch")
    with _probe(model):
        return _mean_loss(model, batches, loss_fn)


@contextmanager
def _bypassed(model: nn.Module, units: Sequence[Unit]) -> Iterator[None]:
    """Every module of ``units`` replaced by the identity, put back afterwards."""
    replaced = []
    try:
        for unit in units:
            for name in unit.modules:
                replaced.append((name, replace_module(model, name, nn.Identity())))
        yield
    finally:
        for name, module in reversed(replaced):  # those replaced, should one fail
            replace_module(model, name, module)


def joint_drop_cost(
    model: nn.Module,
    units: Sequence[Unit],
    batches: Sequence[Batch],
    loss_fn: LossFn = F.cross_entropy,
    base: float | None = None,
) -> float:
    """The cost of dropping ``units`` together: the module docstring's formula with all of them
    bypassed at once (nats per sample). Several units' costs do not add up to this in general.

    Args:
        base: the loss of ``model`` on ``batches`` measured the same way (e.g.
            :func:`drop_costs`' first value); measured here when omitted.

    Returns:
        The cost; one forward pass per sample (two without ``base``).

    Raises:
        ValueError: no batch.
    """
    if not batches:
        raise ValueError("measuring a drop cost needs at least one batch")
    with _probe(model):
        if base is None:
            base = _mean_loss(model, batches, loss_fn)
        with _bypassed(model, units):
            return _mean_loss(model, batches, loss_fn) - base


def drop_costs(
    model: nn.Module,
    units: Sequence[Unit],
    batches: Sequence[Batch],
    loss_fn: LossFn = F.cross_entropy,
) -> tuple[float, dict[str, float]]:
    """The loss of ``model`` on ``batches`` and each unit's drop cost (the module docstring's
    formula), in nats per sample; a negative cost means the network does better without it.

    Args:
        model: the network (not modified: parameters, buffers and modes are restored).
        units: live units of ``model`` to measure.
        batches: ``(x, y)`` pairs, ``x`` an input batch, ``y`` its targets for ``loss_fn``.
        loss_fn: ``loss_fn(logits, targets)``, a mean over the batch (default cross-entropy).

    Returns:
        ``(loss, {unit name: cost})``. Costs ``len(units) + 1`` forward passes per sample.

    Raises:
        ValueError: no batch.
    """
    if not batches:
        raise ValueError("measuring drop costs needs at least one batch")
    costs = {}
    with _probe(model):
        base = _mean_loss(model, batches, loss_fn)
        for unit in units:
            with _bypassed(model, [unit]):
                costs[unit.name] = _mean_loss(model, batches, loss_fn) - base
    return base, costs
