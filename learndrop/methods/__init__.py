"""Training methods, all on one driver interface (:class:`Method`), built by name.

``create_method(name, model, optimizer, example_input, **kwargs)`` builds any of them; a new
method registers itself with ``@register_method("name")``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from learndrop.methods.base import Event, Full, Method, MissingBatchesError
from learndrop.methods.freezeout import FreezeOut
from learndrop.methods.learndrop import LearnDrop
from learndrop.methods.random_drop import RandomDrop
from learndrop.methods.slim import SlimFromScratch
from learndrop.methods.stochastic_depth import StochasticDepth

__all__ = [
    "Event", "Full", "LearnDrop", "Method", "METHODS", "MissingBatchesError", "UnknownMethodError",
    "create_method", "register_method",
    "FreezeOut", "RandomDrop", "SlimFromScratch", "StochasticDepth",
]

METHODS: dict[str, Callable[..., Method]] = {}


class UnknownMethodError(ValueError):
    """A method name that is not registered."""


def register_method(name: str) -> Callable:
    def register(factory: Callable[..., Method]) -> Callable[..., Method]:
        METHODS[name] = factory
        return factory
    return register


register_method("full")(Full)
register_method("learndrop")(LearnDrop)
register_method("freezeout")(FreezeOut)
register_method("stochastic-depth")(StochasticDepth)
register_method("random-drop")(RandomDrop)
register_method("slim-from-scratch")(SlimFromScratch)


@register_method("freeze")
def _freeze(*args, **kwargs) -> LearnDrop:
    """Learn&Drop's scores and policy, freezing units instead of dropping them."""
    return LearnDrop(*args, mode="freeze", **kwargs)


def create_method(
    name: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    example_input: torch.Tensor,
    **kwargs,
) -> Method:
    """Build the training method ``name`` for ``model`` and ``optimizer``."""
    if name not in METHODS:
        raise UnknownMethodError(
            f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}"
        )
    return METHODS[name](model, optimizer, example_input, **kwargs)
