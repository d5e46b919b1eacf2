"""The registry of training methods: each method registers itself, with its options, in its own
file (``@register_method("name", options=SomeOptions)``); drivers build any of them by name.

A method's *options* are its hyperparameters as a frozen dataclass beside its class (Learn&Drop's
is :class:`~learndrop.policy.DropPolicy`). The command line generates one flag per field
(``learndrop.cli``), ``TrainConfig.method_options`` holds the values given, and
:func:`build_method` turns them, with the facts of the run (:class:`RunInfo`), into the method.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Mapping

import torch
from torch import nn

from learndrop.methods.base import Method, MethodOptionError, RunInfo

__all__ = [
    "METHODS", "MethodOptionError", "RunInfo", "UnknownMethodError",
    "build_method", "create_method", "field_help", "method_takes", "option_flag",
    "parse_options", "register_method",
]


class UnknownMethodError(ValueError):
    """A method name that is not registered."""


METHODS: dict[str, type[Method]] = {}


def register_method(name: str, *, options: type | None = None) -> Callable:
    """Class decorator: make the method buildable as ``name``, with ``options`` the frozen
    dataclass of its hyperparameters (``None``: it has none). Sets the class's ``name`` and
    ``options_type``."""
    if options is not None and not dataclasses.is_dataclass(options):
        raise TypeError(f"options of method {name!r} must be a dataclass, got {options!r}")

    def register(cls: type[Method]) -> type[Method]:
        cls.name = name
        cls.options_type = options
        METHODS[name] = cls
        return cls
    return register


def _spec(name: str) -> type[Method]:
    if name not in METHODS:
        raise UnknownMethodError(
            f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def method_takes(name: str, keyword: str, *, required: bool = False) -> bool:
    """Whether method ``name``'s constructor takes the keyword argument ``keyword`` (with
    ``required``: takes it without a default), following constructors that pass ``**kwargs``
    on to their parent's. How a driver asks a method for a fact of the run, e.g.
    ``total_steps``, without testing its type.

    Raises:
        UnknownMethodError: ``name`` is not a registered method.
    """
    for cls in _spec(name).__mro__:
        if "__init__" not in vars(cls):
            continue
        parameters = inspect.signature(cls.__init__).parameters
        if keyword in parameters:
            return not required or parameters[keyword].default is inspect.Parameter.empty
        # A constructor that passes **kwargs on (a subclass fixing one argument) takes what
        # its parent's takes.
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            return False
    return False


def option_flag(field: dataclasses.Field) -> str:
    """The command-line flag of an options field: ``metadata["flag"]`` or ``--field-name``."""
    return "--" + field.metadata.get("flag", field.name.replace("_", "-"))


def field_help(options: type, field: dataclasses.Field) -> str:
    """A field's help text: ``metadata["help"]``, else its line in the class docstring's
    ``Attributes:`` section."""
    if "help" in field.metadata:
        return field.metadata["help"]
    doc = inspect.getdoc(options) or ""
    match = re.search(rf"^\s*{field.name}: (.+(?:\n\s{{8,}}.+)*)", doc, re.MULTILINE)
    return " ".join(match.group(1).split()) if match else ""


def parse_options(name: str, values: Mapping[str, object]) -> object | None:
    """The options dataclass of method ``name`` from ``values`` (field name -> value).

    Raises:
        UnknownMethodError: ``name`` is not registered.
        MethodOptionError: a key the method does not have (the message names the flag and the
            methods that do have it).
        ValueError: an impossible value (raised by the dataclass itself).
    """
    spec = _spec(name)
    fields = {f.name: f for f in _fields(spec)}
    for key in values:
        if key not in fields:
            owners = sorted(m for m, cls in METHODS.items()
                            if key in {f.name for f in _fields(cls)})
            flag = next((option_flag(f) for cls in METHODS.values() for f in _fields(cls)
                         if f.name == key), "--" + key.replace("_", "-"))
            where = (f"it is an option of {', '.join(owners)}" if owners
                     else "no method has it")
            raise MethodOptionError(f"{flag} is not an option of --method {name} ({where})")
    return spec.options_type(**values) if spec.options_type is not None else None


def _fields(cls: type[Method]) -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(cls.options_type) if cls.options_type is not None else ()


def build_method(
    name: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    example_input: torch.Tensor,
    options: Mapping[str, object] | None = None,
    run: RunInfo | None = None,
) -> Method:
    """Build method ``name`` from its options (field name -> value) and the facts of the run:
    what every driver (trainer, stream, bench, a user's loop) calls."""
    spec = _spec(name)
    parsed = parse_options(name, dict(options or {}))
    return spec.from_options(model, optimizer, example_input, parsed, run or RunInfo())


def create_method(
    name: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    example_input: torch.Tensor,
    **kwargs,
) -> Method:
    """Build the training method ``name`` for ``model`` and ``optimizer`` with its constructor's
    keyword arguments (the functional way; :func:`build_method` is the options way)."""
    return _spec(name)(model, optimizer, example_input, **kwargs)
