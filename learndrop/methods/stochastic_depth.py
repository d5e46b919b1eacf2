"""Stochastic depth (Huang, Sun, Liu, Sedra, Weinberger 2016, "Deep Networks with Stochastic
Depth"), as a :class:`~learndrop.methods.base.Method`.

In every training step each residual unit survives with a probability that decreases linearly
with depth; a unit that does not survive is skipped (the block is the identity in that step).

Our reading:

* The units are the droppable units (``method.units``), in execution order; downsampling blocks,
  stem and head always run. Unit ``i`` of ``n`` survives with probability
  ``1 - drop_rate * i / (n - 1)``: 1 for the first, ``1 - drop_rate`` for the last (a single
  unit survives with ``1 - drop_rate``).
* A skipped unit is really not computed: :meth:`StochasticDepth.before_step` swaps its modules
  for ``nn.Identity`` and :meth:`StochasticDepth.on_step` puts them back, so the step saves its
  forward and backward work (torchvision's and timm's versions multiply the branch by a zero
  mask and save nothing). Its parameters get no gradient in that step; optimizers skip
  parameters whose ``grad`` is ``None`` (``zero_grad(set_to_none=True)``, the default).
* Outside a step every unit is in place. The swapped units are also put back at the start of
  :meth:`StochasticDepth.before_step` (after an exception in the previous step) and by a
  forward pre-hook on the model, present only while units are swapped, that restores them when
  the model runs in eval mode (a restored unit takes its parent's train/eval mode, which a
  ``model.eval()`` while it was out did not reach). Call :meth:`StochasticDepth.restore` after
  an exception if you need the full model before the next step.
* Huang scales the residual branch by its survival probability at test time. A block such as
  ``relu(F(x) + x)`` gives no access to ``F``, so we cannot: evaluation uses the unscaled
  network, which BatchNorm networks tolerate.
* Each step draws from a ``torch.Generator`` seeded from ``(seed, step)``: the skip pattern is a
  function of the seed and the step alone, so a resumed run continues it exactly with nothing
  but the seed and the step counter in the checkpoint, and data-parallel processes with the
  same seed skip the same units without communicating.
* FLOPs: each unit's cost is measured once (the forward and backward FLOPs that
  ``FlopCounterMode`` attributes to its modules, which equals the full network's cost minus the
  cost with the unit alone replaced by the identity); a step's cost is the full cost minus the
  costs of its skipped units. This is exact for forward FLOPs and additive (approximate in
  general, exact for residual units behind a trainable stem) for backward FLOPs. The ledger
  keys are ``("skipped", k)`` with ``k`` the number of skipped units, each holding the
  sample-weighted mean cost of the steps with ``k`` skips: at most ``n + 1`` keys, same totals.
* A step never skips the units that hold the model's last trainable parameters (possible only
  with a single unit and nothing trainable outside it): that unit runs
  (:meth:`~learndrop.methods.base.Method.keep_trainable`).
* Temporary skips are not structural changes (``structure_version`` does not move); under DDP
  use ``find_unused_parameters=True``, and expect ``torch.compile`` to recompile per pattern.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from learndrop.flops import Cost, unit_costs
from learndrop.methods.base import Event, Method, MethodOptionError, RunInfo
from learndrop.methods.registry import register_method
from learndrop.surgery import replace_module
from learndrop.units import Unit

__all__ = ["StochasticDepth", "StochasticDepthOptions", "step_generator"]


def step_generator(seed: int, step: int, tag: str = "") -> torch.Generator:
    """A CPU generator seeded from ``(tag, seed, step)`` through a hash: independent streams for
    every step and seed, reproducible from the step counter alone."""
    digest = hashlib.sha256(f"{tag}:{seed}:{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


@dataclass(frozen=True)
class StochasticDepthOptions:
    """Options of ``--method stochastic-depth`` (Huang et al. 2016); the skip pattern's seed is
    the run's ``--seed``.

    Attributes:
        drop_rate: drop probability of the last unit (Huang's 1 - p_L), in [0, 1).
    """

    drop_rate: float = field(default=0.5)

    def __post_init__(self) -> None:
        if not 0 <= self.drop_rate < 1:
            raise MethodOptionError(f"--drop-rate must be in [0, 1), got {self.drop_rate}")


@register_method("stochastic-depth", options=StochasticDepthOptions)
class StochasticDepth(Method):
    """Stochastic depth that really skips the units it drops in a step.

    Args:
        drop_rate: drop probability of the last unit (Huang's ``1 - p_L``), in ``[0, 1)``.
        seed: seed of the skip pattern.
        Other arguments: see :class:`learndrop.methods.base.Method`.

    Attributes:
        survival: unit name -> survival probability.
        unit_costs: unit name -> FLOPs per sample the unit adds to a step.
        skipped: names of the units skipped in the current step.
    """

    units_idle_in_step = True  # skipped units get no gradient in that step

    @classmethod
    def option_kwargs(cls, options: StochasticDepthOptions, run: RunInfo) -> dict:
        return {"drop_rate": options.drop_rate, "seed": run.seed}

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        example_input: torch.Tensor,
        *,
        drop_rate: float = 0.5,
        seed: int = 0,
        units: list[Unit] | None = None,
        unit_names: Iterable[str] | None = None,
        steps_per_check: int | None = None,
    ) -> None:
        if not 0 <= drop_rate < 1:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        super().__init__(
            model, optimizer, example_input,
            units=units, unit_names=unit_names, steps_per_check=steps_per_check,
        )
        self.drop_rate = float(drop_rate)
        self.seed = seed
        n = len(self.units)
        self.survival = {
            u.name: 1 - self.drop_rate * (i / (n - 1) if n > 1 else 1.0)
            for i, u in enumerate(self.units)
        }
        self.unit_costs = unit_costs(model, example_input, self.units)
        self.skipped: tuple[str, ...] = ()
        self._swapped: dict[str, nn.Module] = {}
        self._hook: torch.utils.hooks.RemovableHandle | None = None
        # k skipped -> [fwd FLOPs, bwd FLOPs, samples] summed over the steps with k skips.
        self._sums: dict[int, list[float]] = {}

    def expected_reductions(self) -> tuple[float, float]:
        """Expected forward and backward FLOPs reductions: ``sum((1 - s_i) * cost_i) / full``."""
        full = self.ledger.full
        fwd = sum((1 - self.survival[n]) * c.fwd for n, c in self.unit_costs.items())
        bwd = sum((1 - self.survival[n]) * c.bwd for n, c in self.unit_costs.items())
        return (fwd / full.fwd if full.fwd else 0.0, bwd / full.bwd if full.bwd else 0.0)

    def sample(self, step: int) -> tuple[str, ...]:
        """The units skipped at training step ``step`` (0-based), in execution order."""
        if not self.units:
            return ()
        draws = torch.rand(len(self.units), generator=step_generator(self.seed, step, self.name))
        return tuple(
            u.name for u, r in zip(self.units, draws.tolist(), strict=True)
            if r >= self.survival[u.name]
        )

    def restore(self) -> None:
        """Put every skipped unit back into the model (a no-op when none is out)."""
        for name, module in self._swapped.items():
            replace_module(self.model, name, module)
            # A model.train()/eval() while it was out did not reach it: follow its parent.
            parent_name = name.rpartition(".")[0]
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            if module.training != parent.training:
                module.train(parent.training)
        self._swapped.clear()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _eval_guard(self, module: nn.Module, args: tuple) -> None:
        if not module.training:
            self.restore()

    def before_step(self) -> None:
        self.restore()
        skipped = self.sample(self.steps) if self.model.training else ()
        # A step that skipped every trainable parameter would fail in backward().
        self.skipped = tuple(self.keep_trainable(list(skipped))) if skipped else ()
        by_name = {u.name: u for u in self.units}
        for name in self.skipped:
            for module_name in by_name[name].modules:
                self._swapped[module_name] = replace_module(
                    self.model, module_name, nn.Identity()
                )
        if self._swapped:
            self._hook = self.model.register_forward_pre_hook(self._eval_guard)

    def flops_key(self) -> tuple[str, int]:
        return ("skipped", len(self.skipped))

    def step(self, batch_size: int | None = None, *,
             batch: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[Event]:
        if batch_size is None:
            batch_size = len(batch[0]) if batch is not None else self.example_input.shape[0]
        samples = int(batch_size)
        full = self.ledger.full
        fwd = full.fwd - sum(self.unit_costs[n].fwd for n in self.skipped)
        bwd = full.bwd - sum(self.unit_costs[n].bwd for n in self.skipped)
        sums = self._sums.setdefault(len(self.skipped), [0.0, 0.0, 0])
        sums[0] += fwd * samples
        sums[1] += bwd * samples
        sums[2] += samples
        if sums[2]:
            self.ledger.set_cost(self.flops_key(), Cost(sums[0] / sums[2], sums[1] / sums[2]))
        return super().step(batch_size, batch=batch)

    def on_step(self) -> list[Event]:
        self.restore()
        self.skipped = ()
        return []

    def state_dict(self) -> dict:
        return {**super().state_dict(), "seed": self.seed, "drop_rate": self.drop_rate,
                "sums": [(k, list(v)) for k, v in sorted(self._sums.items())]}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "drop_rate"):
            if state.get(key) != getattr(self, key):
                raise ValueError(
                    f"checkpoint has {key}={state.get(key)!r}, this method {getattr(self, key)!r}"
                )
        self.restore()
        self.skipped = ()
        super().load_state_dict(state)
        self._sums = {int(k): list(v) for k, v in state["sums"]}

    def summary(self) -> dict:
        fwd, bwd = self.expected_reductions()
        return {**super().summary(), "drop_rate": self.drop_rate, "seed": self.seed,
                "expected_fwd_flops_reduction": fwd, "expected_bwd_flops_reduction": bwd}
