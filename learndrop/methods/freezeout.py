"""FreezeOut (Brock, Lim, Ritchie, Weston 2017, "FreezeOut: Accelerate Training by Progressively
Freezing Layers"), as a :class:`~learndrop.methods.base.Method`.

Each layer gets its own learning rate, annealed with a cosine from the scheduled value to zero
at the layer's freeze time ``t_i`` (a fraction of the training steps); from then on the layer is
frozen: it stays in the forward pass but gets no gradient, so only the backward pass gets
cheaper. Layers freeze front to back.

Our reading:

* The layers FreezeOut schedules are the droppable units (``method.units``, in execution order).
  Everything else (stem, downsampling blocks, head) trains normally for the whole run. Because
  the stem keeps training, the gradient still has to flow back through frozen units: the saving
  is their weight gradients, not their whole backward pass. The FLOPs ledger measures exactly
  that.
* "Cubic" scheduling, with the first unit freezing at ``t0``::

      t_i = t0 + (1 - t0) * (i / n) ** 3        i = 0 .. n-1, n = number of units

  Later units freeze later, the gaps growing with depth. The last unit freezes before the end
  (``t_{n-1} < 1`` when ``t0 < 1``): the slot ``i = n`` at ``t = 1`` belongs to the layers that
  are never frozen, as the classifier in Brock's code. (Brock's code cubes the whole linear
  value, ``(t0 + (1 - t0) * i / n) ** 3``, so that its first layer freezes at ``t0 ** 3``; here
  ``t0`` is the first freeze time itself.)
* A unit's learning rate at training progress ``t = steps / total_steps`` is the optimizer's
  scheduled rate times ``0.5 * (1 + cos(pi * t / t_i))`` (times ``1 / t_i`` with
  ``scale_lr=True``, Brock's option to keep the distance travelled). The factor is applied in
  :meth:`FreezeOut.before_step` and the unscaled rate is put back in
  :meth:`FreezeOut.on_step`, so a user's LR scheduler keeps seeing and setting unscaled rates:
  step the scheduler after ``method.step()``, and create it after the method (the method adds
  param groups).
* Once ``t >= t_i`` the unit is frozen (``apply(unit, "freeze")``: ``requires_grad`` off,
  parameters and their state removed from the optimizer, BatchNorm kept in eval mode).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from learndrop.methods.base import Event, Method, MethodOptionError, RunInfo
from learndrop.methods.registry import register_method
from learndrop.units import Unit

__all__ = ["FreezeOut", "FreezeOutOptions", "freeze_times"]


def freeze_times(n: int, t0: float = 0.5) -> list[float]:
    """Freeze times (fractions of training) of ``n`` units: ``t0 + (1 - t0) * (i / n) ** 3``."""
    return [t0 + (1 - t0) * (i / n) ** 3 for i in range(n)]


@dataclass(frozen=True)
class FreezeOutOptions:
    """Options of ``--method freezeout`` (Brock et al. 2017).

    Attributes:
        t0: freeze time of the first unit, as a fraction of training, in (0, 1].
        scale_lr: multiply each unit's learning rate by 1 / t_i (Brock's scale_lr).
    """

    t0: float = field(default=0.5, metadata={"flag": "freezeout-t0"})
    scale_lr: bool = field(default=False, metadata={"flag": "freezeout-scale-lr"})

    def __post_init__(self) -> None:
        if not 0 < self.t0 <= 1:
            raise MethodOptionError(f"--freezeout-t0 must be in (0, 1], got {self.t0}")


@register_method("freezeout", options=FreezeOutOptions)
class FreezeOut(Method):
    """FreezeOut: per-unit cosine learning-rate annealing to zero, then freezing, front to back.

    At construction every unit's parameters are moved out of the optimizer's param groups into
    groups of their own (one per unit and original group, copying that group's hyperparameters,
    appended in unit order), so a freshly built optimizer gets the same layout on resume.

    Args:
        total_steps: the number of optimizer steps of the whole training run (required).
        t0: freeze time of the first unit, as a fraction of training, in ``(0, 1]``.
        scale_lr: multiply each unit's learning rate by ``1 / t_i`` (Brock's ``scale_lr``).
        Other arguments: see :class:`learndrop.methods.base.Method`.

    Attributes:
        freeze_times: unit name -> ``t_i``.
        group_indices: unit name -> indices of its param groups in ``optimizer.param_groups``.
    """

    @classmethod
    def option_kwargs(cls, options: FreezeOutOptions, run: RunInfo) -> dict:
        if not run.total_steps:
            raise MethodOptionError("--method freezeout needs the run's length in steps; for a "
                                    "stream, pass --stream-length")
        return {"t0": options.t0, "scale_lr": options.scale_lr, "total_steps": run.total_steps}

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        example_input: torch.Tensor,
        *,
        total_steps: int,
        t0: float = 0.5,
        scale_lr: bool = False,
        units: list[Unit] | None = None,
        unit_names: Iterable[str] | None = None,
        steps_per_check: int | None = None,
    ) -> None:
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be an integer >= 1, got {total_steps!r}")
        if not 0 < t0 <= 1:
            raise ValueError(f"t0 must be in (0, 1], got {t0}")
        super().__init__(
            model, optimizer, example_input,
            units=units, unit_names=unit_names, steps_per_check=steps_per_check,
        )
        self.total_steps = total_steps
        self.t0 = float(t0)
        self.scale_lr = bool(scale_lr)
        self.freeze_times = dict(
            zip((u.name for u in self.units), freeze_times(len(self.units), self.t0), strict=True)
        )
        if any("initial_lr" in group for group in optimizer.param_groups):
            warnings.warn(
                "freezeout adds param groups that an LR scheduler created before it does not "
                "know about: create the scheduler after the method", stacklevel=2,
            )
        self.group_indices = self._split_param_groups()
        # group index -> (unscaled lr, scaled lr we set), while a step is in flight.
        self._scaled: dict[int, tuple[object, object]] = {}
        self._warned = False

    def _split_param_groups(self) -> dict[str, list[int]]:
        owner: dict[int, str] = {}
        for unit in self.units:
            for p in unit.parameters(self.model):
                owner.setdefault(id(p), unit.name)
        originals = list(self.optimizer.param_groups)
        # (unit, original group) -> params, in the group's own parameter order.
        moved: dict[tuple[str, int], list[torch.Tensor]] = {}
        for g, group in enumerate(originals):
            kept = []
            for p in group["params"]:
                if id(p) in owner:
                    moved.setdefault((owner[id(p)], g), []).append(p)
                else:
                    kept.append(p)
            group["params"] = kept
        indices: dict[str, list[int]] = {u.name: [] for u in self.units}
        for unit in self.units:
            for g, group in enumerate(originals):
                params = moved.get((unit.name, g))
                if not params:
                    continue
                settings = {k: v for k, v in group.items() if k != "params"}
                self.optimizer.add_param_group({**settings, "params": params})
                indices[unit.name].append(len(self.optimizer.param_groups) - 1)
        return indices

    @property
    def progress(self) -> float:
        """Fraction of the training run done: ``steps / total_steps``."""
        return self.steps / self.total_steps

    def lr_factor(self, unit_name: str, t: float | None = None) -> float:
        """The multiplier of ``unit_name``'s learning rate at progress ``t`` (default: now);
        0 from its freeze time on."""
        t = self.progress if t is None else t
        t_i = self.freeze_times[unit_name]
        if t >= t_i:
            return 0.0
        factor = 0.5 * (1 + math.cos(math.pi * t / t_i))
        return factor / t_i if self.scale_lr else factor

    def effective_lrs(self) -> dict[str, float]:
        """The learning rate each unit's step uses now (after :meth:`before_step`) or will use
        next (between steps): 0 for a frozen unit."""
        out = {}
        for unit in self.units:
            groups = self.group_indices[unit.name]
            if unit.name in self.removed or not groups:
                out[unit.name] = 0.0
                continue
            lr = float(self.optimizer.param_groups[groups[0]]["lr"])
            out[unit.name] = lr if groups[0] in self._scaled else lr * self.lr_factor(unit.name)
        return out

    def _restore_lrs(self) -> None:
        for g, (base, scaled) in self._scaled.items():
            group = self.optimizer.param_groups[g]
            if group["lr"] is scaled or _same(group["lr"], scaled):
                group["lr"] = base
            elif not self._warned:
                # Something (an LR scheduler stepped before method.step()) set a new rate while
                # ours was applied: keep its value as the new unscaled rate.
                self._warned = True
                warnings.warn(
                    "freezeout: a param group's lr changed between before_step() and step(); "
                    "step LR schedulers after method.step()", stacklevel=3,
                )
        self._scaled.clear()

    def before_step(self) -> None:
        self._restore_lrs()
        t = self.progress
        for unit in self.live_units:
            factor = self.lr_factor(unit.name, t)
            for g in self.group_indices[unit.name]:
                group = self.optimizer.param_groups[g]
                base = group["lr"]
                scaled = base * factor
                group["lr"] = scaled
                self._scaled[g] = (base, scaled)

    def on_step(self) -> list[Event]:
        self._restore_lrs()
        t = self.progress
        return [
            self.apply(unit, "freeze")
            for unit in self.live_units
            if t >= self.freeze_times[unit.name]
        ]

    def state_dict(self) -> dict:
        return {**super().state_dict(), "total_steps": self.total_steps, "t0": self.t0,
                "scale_lr": self.scale_lr}

    def load_state_dict(self, state: dict) -> None:
        for key in ("total_steps", "t0", "scale_lr"):
            if state.get(key) != getattr(self, key):
                raise ValueError(
                    f"checkpoint has {key}={state.get(key)!r}, this method {getattr(self, key)!r}"
                )
        self._restore_lrs()
        super().load_state_dict(state)

    def summary(self) -> dict:
        return {**super().summary(), "t0": self.t0, "total_steps": self.total_steps,
                "freeze_times": dict(self.freeze_times)}


def _same(a: object, b: object) -> bool:
    try:
        return bool(a == b)
    except RuntimeError:  # multi-element tensors
        return False
