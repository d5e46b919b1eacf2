"""Build any supported network by name.

Each model family lives in its own file and registers small builder functions with
`register_model`; everything else (the CLI, the trainer, the tests) goes through
`create_model`, so a new architecture needs nothing but one more registered builder.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

ModelBuilder = Callable[..., nn.Module]
_B = TypeVar("_B", bound=ModelBuilder)

# Lower-case name -> builder(num_classes=..., in_channels=..., **kwargs).
_MODELS: dict[str, ModelBuilder] = {}


class UnknownModelError(ValueError):
    """Raised by `create_model` for a name that no builder was registered under."""


def register_model(fn: _B, name: str | None = None) -> _B:
    """Register `fn` as the builder of model `name` (default: the function's name).

    Use it as a decorator (`@register_model`) or call it directly to register
    builders made in a loop. A builder takes `num_classes` and `in_channels`
    keyword arguments and returns a freshly initialised `nn.Module`.
    """
    key = (name or fn.__name__).lower()
    if key in _MODELS:
        raise ValueError(f"model {key!r} is already registered")
    _MODELS[key] = fn
    return fn


def _natural_key(name: str) -> list[Any]:
    # "resnet20" < "resnet110": compare the digit runs as numbers.
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def list_models() -> list[str]:
    """Names of all registered models, in natural order (resnet20 before resnet110)."""
    return sorted(_MODELS, key=_natural_key)


def has_pretrained_weights(name: str) -> bool:
    """Whether model ``name``'s builder takes ``pretrained=True`` (torchvision's ImageNet
    models, and a registered builder with a ``pretrained`` or ``**kwargs`` parameter); False
    for an unknown name."""
    builder = _MODELS.get(name.strip().lower())
    if builder is None:
        return False
    params = inspect.signature(builder).parameters.values()
    return any(p.name == "pretrained" or p.kind is p.VAR_KEYWORD for p in params)


def create_model(
    name: str, num_classes: int = 10, in_channels: int = 3, **kwargs: Any
) -> nn.Module:
    """Build model `name` (case-insensitive) for `num_classes` outputs.

    `in_channels` is the number of input image channels (1 for MNIST-like data);
    further keyword arguments go to the builder (e.g. `pretrained=True` for the
    torchvision models).

    Raises:
        UnknownModelError: no model is registered under `name`; the one-line message
            names the closest matches.
    """
    key = name.strip().lower()
    if key not in _MODELS:
        raise UnknownModelError(_unknown_model_message(name))
    if num_classes < 1 or in_channels < 1:
        raise ValueError(
            f"num_classes and in_channels must be >= 1, got {num_classes} and {in_channels}"
        )
    return _MODELS[key](num_classes=num_classes, in_channels=in_channels, **kwargs)


def _unknown_model_message(name: str) -> str:
    # One line, so that it reads well as a CLI error: close matches when there are
    # some, otherwise every available name.
    names = list_models()
    close = difflib.get_close_matches(name.strip().lower(), names, n=5, cutoff=0.6)
    if close:
        choices = f"did you mean: {', '.join(close)}?"
    else:
        choices = f"choose one of: {', '.join(names)}"
    return f"unknown model {name!r}; {choices} (see `learndrop models`)"


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Swap the model's classifier for a fresh `nn.Linear` with `num_classes` outputs.

    The classifier is taken to be the last `nn.Linear` in module order (`fc` of a
    ResNet, `classifier.6` of a torchvision VGG, `classifier` of our CIFAR models).
    The new layer keeps the old one's input size, bias, device and dtype. The model
    is changed in place and returned.
    """
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear head to replace")
    path = linears[-1]
    old = model.get_submodule(path)
    new = nn.Linear(
        old.in_features,
        num_classes,
        bias=old.bias is not None,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    parent_path, _, attr = path.rpartition(".")
    # setattr also works on nn.Sequential children, whose attribute names are "0", "1"...
    setattr(model.get_submodule(parent_path), attr, new)
    return model
