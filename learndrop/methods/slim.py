"""Slim-from-scratch: train, from initialisation, the network a reference Learn&Drop run ended
with (no peer paper; the usual "is it the architecture or the schedule?" control, as in
Liu et al. 2019, "Rethinking the Value of Network Pruning").

Our reading: the units the reference run dropped (its names, or its drop events / summary) are
dropped at construction, before the first step, with the reference's schedule, epochs and
budget left to the caller. The drops are recorded as events at step 0. The FLOPs ledger's
reference (``ledger.full``) is still the full network, measured before the drops, so the
reductions compare with the reference run's; every step runs in the slim configuration.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from learndrop.methods.base import Event, Method, RunInfo
from learndrop.methods.random_drop import ReferenceOptions, drop_events, reference_drops
from learndrop.methods.registry import register_method
from learndrop.units import Unit

__all__ = ["SlimFromScratch"]


@register_method("slim-from-scratch", options=ReferenceOptions)
class SlimFromScratch(Method):
    """Trains the reference run's final network from scratch: its dropped units are dropped at
    construction.

    Args:
        dropped: names of the units to drop, or a reference run's drop events / summary.
        Other arguments: see :class:`learndrop.methods.base.Method`.
    """

    needs_reference = True

    @classmethod
    def option_kwargs(cls, options: ReferenceOptions, run: RunInfo) -> dict:
        return {"dropped": reference_drops(options, cls.name, run)}

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        example_input: torch.Tensor,
        *,
        dropped: Iterable[str] | Iterable[Event | Mapping] | Mapping,
        units: list[Unit] | None = None,
        unit_names: Iterable[str] | None = None,
        steps_per_check: int | None = None,
    ) -> None:
        names = _names(dropped)
        super().__init__(
            model, optimizer, example_input,
            units=units, unit_names=unit_names, steps_per_check=steps_per_check,
        )
        by_name = {u.name: u for u in self.units}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ValueError(
                f"slim-from-scratch: not droppable units of this model: {', '.join(unknown)}"
            )
        for unit in sorted((by_name[n] for n in names), key=lambda u: u.index):
            self.apply(unit, "drop")

    @property
    def dropped(self) -> list[str]:
        return [name for name, action in self.removed.items() if action == "drop"]

    def load_state_dict(self, state: dict) -> None:
        # The drops were made at construction; the checkpoint's events re-record them.
        self.events = []
        super().load_state_dict(state)


def _names(dropped: Iterable[str] | Iterable[Event | Mapping] | Mapping) -> list[str]:
    if isinstance(dropped, str | bytes):
        raise ValueError("slim-from-scratch: dropped must be a list of unit names, not a string")
    entries = dropped if isinstance(dropped, Mapping) else list(dropped)
    if isinstance(entries, Mapping) or any(isinstance(e, Event | Mapping) for e in entries):
        names = [unit for unit, _ in drop_events(entries, "slim-from-scratch")]
    else:
        if not all(isinstance(e, str) for e in entries):
            raise ValueError(f"slim-from-scratch: dropped must be unit names, got {entries!r}")
        names = list(entries)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"slim-from-scratch: units named twice: {', '.join(duplicates)}")
    return names
