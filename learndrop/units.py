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
whose operand is the block's own input.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from learndrop.meta import meta_call

__all__ = ["Unit", "NoDroppableUnitsError", "find_units", "record_execution"]

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
            meta_call(model, example_input)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return calls


def _through_identity(node: torch.fx.Node, module: nn.Module) -> torch.fx.Node:
    """Follow ``nn.Identity`` calls back to the node they pass through."""
    while node.op == "call_module" and isinstance(module.get_submodule(node.target), nn.Identity):
        node = node.args[0]
    return node


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


def find_units(
    model: nn.Module,
    example_input: torch.Tensor,
    names: Iterable[str] | None = None,
) -> list[Unit]:
    """Find the droppable units of ``model``, in execution order.

    Args:
        model: any ``nn.Module``; it is not modified and its statistics are not touched.
        example_input: one input batch (any device; only its shape and dtype are used).
        names: optional qualified module names to use as units instead of automatic discovery.
            Each must run once in the forward pass and keep its input's shape.

    Raises:
        NoDroppableUnitsError: no unit found (or a named module is not droppable).
    """
    calls = record_execution(model, example_input)
    first_index: dict[str, int] = {}
    for i, call in enumerate(calls):
        first_index.setdefault(call.name, i)

    if names is not None:
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
            units.append(Unit(name, kind, (name,), first_index[name]))
        return sorted(units, key=lambda u: u.index)

    residual: list[Unit] = []
    seen: set[str] = set()
    for i, call in enumerate(calls):
        if call.name in seen:
            continue
        seen.add(call.name)
        if call.in_shape is None or call.in_shape != call.out_shape:
            continue
        if not any(p.requires_grad for p in call.module.parameters()):
            continue
        # The outermost residual block is the unit: dropping it drops whatever it nests.
        if any(_is_descendant(call.name, u.name) for u in residual):
            continue
        if is_residual_block(call.module):
            residual.append(Unit(call.name, "residual", (call.name,), i))

    conv = _conv_groups(model, calls)
    units = sorted(residual + conv, key=lambda u: u.index)
    if not units:
        raise NoDroppableUnitsError(
            f"{type(model).__name__} has no droppable unit (no identity-shortcut residual block "
            "and no shape-preserving stride-1 convolution in a plain stack); name units "
            "explicitly with names=[...] / --units"
        )
    return units
