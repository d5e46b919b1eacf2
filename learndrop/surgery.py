"""Model surgery: drop or freeze a unit, and keep the optimizer consistent.

Dropping replaces each of the unit's modules by ``nn.Identity`` in its parent, removes the unit's
parameters from every optimizer param group *and* deletes their optimizer state, so that
``optimizer.state_dict()`` stays consistent and loads into a freshly built optimizer of the
same (dropped) structure. Param groups that become empty are kept, so that per-group learning
rate schedulers stay aligned.

Freezing keeps the unit in the forward pass, turns off its parameters' gradients and keeps its
BatchNorm layers in eval mode for good, so their running statistics stop moving too.

Fading (:class:`Fade`) takes a unit out gradually before it is dropped: its output is blended
with its own input, ``(1 - a) * F(x) + a * x``, while the caller raises ``a`` from 0 to 1 over
some training steps, so that the rest of the network learns to do without the unit before it
goes. It is the fade-in of progressively grown GANs (Karras et al., "Progressive Growing of
GANs", ICLR 2018, section 3), run backwards. At ``a = 1`` the unit computes the identity, and
dropping it then changes nothing but the running statistics of its own BatchNorm layers.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from learndrop.units import Unit

__all__ = ["Fade", "drop_unit", "freeze_unit", "remove_from_optimizer", "replace_module"]


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


class Fade:
    """A unit on its way out: its output ``F(x)`` replaced by ``(1 - alpha) * F(x) + alpha * x``
    (``x``: the unit's input; same shape, as every unit is shape-preserving), through forward
    hooks on the unit's first and last module (the modules of a unit run one after the other).

    The parameters keep training (their gradients shrink with ``1 - alpha``); the weights and
    the model's ``state_dict`` do not change, so a saved model does not hold the blend: finish
    the fade (``alpha = 1``) and drop the unit, or :meth:`remove` it, before saving.

    ``alpha`` is a 0-dim tensor updated in place, so a compiled forward reads its current value
    without recompiling; a forward compiled before the fade began must be rebuilt to see the
    hooks (dynamo does not guard on hooks added later).

    Args:
        model: the network holding ``unit``.
        unit: the unit to fade out (its modules must run consecutively, as discovered units
            do; the first must not change its input in place).
        alpha: the starting blend weight, in [0, 1].

    Raises:
        ValueError: ``alpha`` outside [0, 1].
    """

    def __init__(self, model: nn.Module, unit: Unit, alpha: float = 0.0) -> None:
        self.unit = unit
        self._alpha = torch.zeros(())
        self.alpha = alpha
        self._inputs: list[torch.Tensor] = []
        first = model.get_submodule(unit.modules[0])
        last = model.get_submodule(unit.modules[-1])
        self._handles = [first.register_forward_pre_hook(self._keep_input),
                         last.register_forward_hook(self._blend)]

    @property
    def alpha(self) -> float:
        """The weight of the unit's input in its output (0: the unit as it is; 1: identity)."""
        return float(self._alpha)

    @alpha.setter
    def alpha(self, value: float) -> None:
        if not 0.0 <= value <= 1.0:  # NaN fails too
            raise ValueError(f"a fade's alpha must be in [0, 1], got {value!r}")
        self._alpha.fill_(value)

    def _keep_input(self, module: nn.Module, args: tuple) -> None:
        self._inputs.append(args[0])

    def _blend(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = self._inputs.pop()
        # A 0-dim CPU tensor multiplies a tensor on any device, in its dtype.
        return output + self._alpha * (x - output)

    def remove(self) -> None:
        """Take the hooks off: the unit computes ``F(x)`` again."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._inputs.clear()
