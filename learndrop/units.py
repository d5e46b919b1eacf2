"""Discovering droppable units: the parts of a network whose removal leaves a valid network.

A unit is one of (DESIGN.md section 1):

* ``residual``: a block whose output is ``F(x) + x`` with the identity as its shortcut and the
  same input and output shape. Dropping it makes the block return its input.
* ``conv``: in a plain stack (VGG), a stride-1, shape-preserving ``Conv2d`` with
  ``in_channels == out_channels``, together with the BatchNorm and activation modules that run
  right after it. Dropping it replaces the whole group by the identity.
* ``module``: a shape-preserving module the user named explicitly.

Discovery runs the model once on a *meta* copy of the example input (no memory, no compute, no
side effects on BatchNorm statistics) and records which modules actually run, in which order and
with which shapes: module registration order is not execution order. Residual blocks are
recognised by tracing each shape-preserving block with ``torch.fx`` and looking for an addition
whose operand is the block's own input, possibly through a shortcut module that computes the
identity (``nn.Identity``, an empty ``nn.Sequential``, or any parameter-free module whose traced
forward returns its input).

Two rules keep a structurally droppable part out of the units, with the reason reported by
:func:`discover` (and ``learndrop units``):

* it has no parameter (nothing to score, nothing to save);
* one of its parameters is shared with a module outside it (tied weights): dropping it would
  remove that parameter from the optimizer and stop the other module from learning.

Whether a unit's parameters are trainable *now* is not a discovery question (fine-tuning recipes
freeze and unfreeze layers during training): a unit with no trainable parameter is never scored
or dropped by Learn&Drop (see :mod:`learndrop.scores`).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from learndrop.meta import meta_batch, meta_call

__all__ = [
    "Discovery", "NoDroppableUnitsError", "Unit", "computes_identity", "discover", "find_units",
    "record_execution", "unit_stages",
]

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.Hardswish, nn.Mish)
_NORMS = (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.LayerNorm)
_FOLLOWERS = _NORMS + _ACTIVATIONS + (nn.Dropout, nn.Dropout2d, nn.Identity)


class NoDroppableUnitsError(ValueError):
    """The model has no unit that can be dropped (and none was named)."""


@dataclass(frozen=True)
class Unit:
    """A droppable part of a model.

    Attributes:
        name: qualified name of the unit's main module (``"layer1.0"``, ``"features.7"``).
        kind: ``"residual"``, ``"conv"`` or ``"module"``.
        modules: qualified names of every module replaced by the identity when it is dropped
            (the block itself, or a convolution with its BatchNorm and activation).
        index: position of the unit in execution order (0 = first to run).
    """

    name: str
    kind: str
    modules: tuple[str, ...]
    index: int

    def parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The unit's parameters, in a stable order."""
        params: list[nn.Parameter] = []
        for module_name in self.modules:
            params.extend(model.get_submodule(module_name).parameters())
        return params

    def num_parameters(self, model: nn.Module) -> int:
        return sum(p.numel() for p in self.parameters(model))


@dataclass
class Discovery:
    """What :func:`discover` found.

    Attributes:
        units: the droppable units, in execution order.
        rejected: qualified name -> why a structurally droppable part is not a unit.
    """

    units: list[Unit]
    rejected: dict[str, str] = field(default_factory=dict)


@dataclass
class _Call:
    name: str
    module: nn.Module
    in_shape: tuple[int, ...] | None
    out_shape: tuple[int, ...] | None


def _shape(value: object) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def record_execution(model: nn.Module, example_input: torch.Tensor) -> list[_Call]:
    """Modules that run in one forward pass of ``model``, in execution order, with the shape of
    their first positional input and of their output."""
    names = {id(m): n for n, m in model.named_modules() if n}
    calls: list[_Call] = []
    handles = []

    def hook(module: nn.Module, args: tuple, output: object) -> None:
        first = args[0] if args else None
        calls.append(_Call(names[id(module)], module, _shape(first), _shape(output)))

    for module in model.modules():
        if id(module) in names:
            handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            meta_call(model, meta_batch(example_input))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return calls


def _through_identity(node: torch.fx.Node, module: nn.Module) -> torch.fx.Node:
    """Follow calls of identity submodules back to the node they pass through."""
    while (node.op == "call_module" and node.args
           and computes_identity(module.get_submodule(node.target))):
        node = node.args[0]
    return node


def computes_identity(module: nn.Module) -> bool:
    """True when ``module(x)`` returns ``x`` itself, however it is spelled: ``nn.Identity``, an
    empty ``nn.Sequential`` (the widely copied CIFAR ResNet's shortcut), a ``Sequential`` of
    such, or any parameter-free module whose traced forward returns its input."""
    if isinstance(module, nn.Identity):
        return True
    if any(True for _ in module.parameters()):
        return False
    try:
        graph = _ShallowTracer().trace(module)
    except Exception:  # noqa: BLE001 - untraceable: not recognised as the identity
        return False
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    output = next((n for n in graph.nodes if n.op == "output"), None)
    if len(placeholders) != 1 or output is None or not isinstance(output.args[0], torch.fx.Node):
        return False
    return _through_identity(output.args[0], module) is placeholders[0]


_ADDS = {operator.add, operator.iadd, torch.add}


class _ShallowTracer(torch.fx.Tracer):
    """Traces only the module's own ``forward``: every submodule is a leaf, so a stage that
    merely contains residual blocks is not mistaken for one."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def is_residual_block(module: nn.Module) -> bool:
    """True when ``module``'s forward adds its own input to something else (``F(x) + x``).

    Blocks that torch.fx cannot trace (data-dependent control flow) are not recognised; name
    them explicitly with ``find_units(..., names=[...])``.
    """
    if not any(True for _ in module.children()):
        return False
    try:
        graph = _ShallowTracer().trace(module)
    except Exception:  # noqa: BLE001 - any tracing failure just means "not recognised"
        return False
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if not placeholders:
        return False
    block_input = placeholders[0]
    for node in graph.nodes:
        is_add = (node.op == "call_function" and node.target in _ADDS) or (
            node.op == "call_method" and node.target in ("add", "add_")
        )
        if not is_add:
            continue
        operands = [a for a in node.args if isinstance(a, torch.fx.Node)]
        if len(operands) == 2 and any(
            _through_identity(a, module) is block_input for a in operands
        ):
            return True
    return False


def _is_descendant(name: str, ancestor: str) -> bool:
    return name.startswith(ancestor + ".")


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _conv_groups(model: nn.Module, calls: list[_Call]) -> list[Unit]:
    """Shape-preserving stride-1 convolutions of plain stacks, with their followers."""
    units: list[Unit] = []
    counts: dict[str, int] = {}
    for call in calls:
        counts[call.name] = counts.get(call.name, 0) + 1
    for i, call in enumerate(calls):
        conv = call.module
        if not isinstance(conv, nn.Conv2d) or counts[call.name] != 1:
            continue
        if conv.in_channels != conv.out_channels or conv.stride not in ((1, 1), 1):
            continue
        if call.in_shape is None or call.in_shape != call.out_shape:
            continue
        # Replacing a convolution by the identity removes it from a plain stack only when every
        # container between it and the root is a Sequential. This also keeps convolutions inside
        # residual blocks (downsampling ones included) out: removing one would break the block.
        ancestors = _ancestors(call.name)
        if not all(isinstance(model.get_submodule(a), nn.Sequential) for a in ancestors):
            continue
        parent = call.name.rpartition(".")[0]
        group = [call.name]
        for follower in calls[i + 1:]:
            if follower.name.rpartition(".")[0] != parent or not isinstance(
                follower.module, _FOLLOWERS
            ) or counts[follower.name] != 1:
                break
            group.append(follower.name)
        units.append(Unit(call.name, "conv", tuple(group), i))
    return units


def _owners(model: nn.Module) -> dict[int, list[str]]:
    """``id`` of every parameter -> every qualified name it is held under (a tied weight, or a
    module registered at two places, has several)."""
    owners: dict[int, list[str]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for param_name, p in module._parameters.items():
            if p is not None:
                full = f"{module_name}.{param_name}" if module_name else param_name
                owners.setdefault(id(p), []).append(full)
    return owners


def _why_not(model: nn.Module, unit: Unit, owners: dict[int, list[str]]) -> str | None:
    """Why ``unit`` cannot be dropped although its structure allows it; None when it can."""
    params = unit.parameters(model)
    if not params:
        return "has no parameter (nothing to score, nothing to save)"
    for p in params:
        names = owners.get(id(p), [])
        inside = [n for n in names if any(_is_descendant(n, m) for m in unit.modules)]
        outside = [n for n in names if n not in inside]
        if outside:
            return (f"shares its parameter {inside[0] if inside else names[0]} with "
                    f"{outside[0]} outside it (dropping it would stop that module learning)")
    return None


def discover(
    model: nn.Module,
    example_input: torch.Tensor,
    names: Iterable[str] | None = None,
) -> Discovery:
    """The droppable units of ``model`` and the reasons that keep other candidates out.

    Args: as :func:`find_units`.

    Raises:
        NoDroppableUnitsError: no unit found, or a named module is not droppable (the message
            says why).
    """
    calls = record_execution(model, example_input)
    first_index: dict[str, int] = {}
    for i, call in enumerate(calls):
        first_index.setdefault(call.name, i)
    owners = _owners(model)

    if names is not None:
        names = list(names)
        for i, name in enumerate(names):
            for other in names[:i]:
                if name == other or _is_descendant(name, other) or _is_descendant(other, name):
                    what = "twice" if name == other else f"together with {other!r}, which " + (
                        "contains it" if _is_descendant(name, other) else "it contains")
                    raise NoDroppableUnitsError(
                        f"unit {name!r} is named {what}; name each unit once, none inside "
                        "another")
        units = []
        for name in names:
            if name not in first_index:
                raise NoDroppableUnitsError(
                    f"module {name!r} does not run in the forward pass; check the name with "
                    "`learndrop units MODEL`"
                )
            call = calls[first_index[name]]
            if call.in_shape != call.out_shape:
                raise NoDroppableUnitsError(
                    f"module {name!r} changes the shape {call.in_shape} -> {call.out_shape}; "
                    "only shape-preserving modules can be dropped"
                )
            kind = "residual" if is_residual_block(call.module) else "module"
            unit = Unit(name, kind, (name,), first_index[name])
            why = _why_not(model, unit, owners)
            if why is not None:
                raise NoDroppableUnitsError(f"module {name!r} cannot be a unit: it {why}")
            units.append(unit)
        return Discovery(sorted(units, key=lambda u: u.index))

    residual: list[Unit] = []
    seen: set[str] = set()
    for i, call in enumerate(calls):
        if call.name in seen:
            continue
        seen.add(call.name)
        if call.in_shape is None or call.in_shape != call.out_shape:
            continue
        # The outermost residual block is the unit: dropping it drops whatever it nests.
        if any(_is_descendant(call.name, u.name) for u in residual):
            continue
        if any(True for _ in call.module.parameters()) and is_residual_block(call.module):
            residual.append(Unit(call.name, "residual", (call.name,), i))

    found = sorted(residual + _conv_groups(model, calls), key=lambda u: u.index)
    rejected = {u.name: why for u in found if (why := _why_not(model, u, owners)) is not None}
    units = [u for u in found if u.name not in rejected]
    if not units:
        reasons = "; ".join(f"{n} {why}" for n, why in rejected.items())
        raise NoDroppableUnitsError(
            f"{type(model).__name__} has no droppable unit (no identity-shortcut residual block "
            "and no shape-preserving stride-1 convolution in a plain stack"
            + (f"; not droppable: {reasons}" if reasons else "")
            + "); name units explicitly with names=[...] / --units"
        )
    return Discovery(units, rejected)


def find_units(
    model: nn.Module,
    example_input: torch.Tensor,
    names: Iterable[str] | None = None,
) -> list[Unit]:
    """Find the droppable units of ``model``, in execution order.

    Args:
        model: any ``nn.Module``; it is not modified and its statistics are not touched.
        example_input: one input batch (any device and batch size; only the shape of a sample
            and the dtype are used).
        names: optional qualified module names to use as units instead of automatic discovery.
            Each must run once in the forward pass, keep its input's shape, have parameters and
            share none with a module outside it.

    Raises:
        NoDroppableUnitsError: no unit found (or a named module is not droppable).
    """
    return discover(model, example_input, names).units


def unit_stages(model: nn.Module, example_input: torch.Tensor, units: Iterable[Unit]
                ) -> dict[str, tuple[int, ...]]:
    """The stage of each unit: ``(k, *shape)``, where ``shape`` is the shape of one sample of
    the unit's input (``(channels, height, width)`` for a convolutional network) and ``k``
    counts the stages in execution order. A stage is a run of consecutive units (in execution
    order) whose inputs have one shape. Droppable units keep their input's shape, so these are
    the units that run at one resolution and width: the blocks between two downsamplings of a
    ResNet (He et al., 2016, Table 6: three stages of n blocks on CIFAR), or the convolutions
    between two poolings of a VGG. Units of one shape on both sides of a unit of another shape
    (an encoder and a decoder at one resolution) are two stages, not one.

    One forward pass on a meta copy of ``example_input`` (no memory, no compute). A unit that
    does not run in it forms a stage of its own (its key is ``(-1, index)``).
    """
    shapes = {call.name: call.in_shape for call in record_execution(model, example_input)}
    stages: dict[str, tuple[int, ...]] = {}
    k, previous = -1, None
    for unit in sorted(units, key=lambda u: u.index):
        shape = shapes.get(unit.name)
        if shape is None:
            stages[unit.name] = (-1, unit.index)
            continue
        if tuple(shape[1:]) != previous:
            k, previous = k + 1, tuple(shape[1:])
        stages[unit.name] = (k, *previous)
    return stages
