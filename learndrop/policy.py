"""Deciding: which live units to drop at a check.

A unit is a *candidate* when its change score has fallen to ``change_threshold`` of its own peak
or below and its trend is not rising (``slope <= max_slope``). It is dropped once it has been a
candidate for ``patience`` consecutive checks, lowest continuation score first, within the guards:
no decision during the ``warmup_checks`` first checks, at most ``max_drops_per_check`` per check,
and never more than ``max_dropped_fraction`` of all units in total. A unit is never dropped twice.

The defaults come from the prototype recorded in DESIGN.md section 6 (drop below half of the own
running maximum while still falling, at most a quarter of the units per check, none in the first
epoch); ``docs/method-card.md`` holds the benchmark evidence behind them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from learndrop.scores import UnitScore

__all__ = ["DropPolicy", "PolicyError"]


class PolicyError(ValueError):
    """An impossible policy hyperparameter."""


@dataclass(frozen=True)
class DropPolicy:
    """Hyperparameters of the drop decision (validated on construction).

    Attributes:
        warmup_checks: checks with no decision; their scores also stay out of the running peak.
        change_threshold: candidate when ``change / peak`` is at or below this (0 < x <= 1).
        max_slope: candidate only when the log-change trend is at or below this (0 = not rising).
        trend_window: checks over which the trend is fitted (>= 2).
        patience: consecutive candidate checks needed before a drop (>= 1).
        max_drops_per_check: an int >= 1 is a count; a float in (0, 1] a fraction of all units
            (at least one unit).
        max_dropped_fraction: cap on the fraction of all units ever dropped (0 <= x <= 1).
    """

    warmup_checks: int = 1
    change_threshold: float = 0.5
    max_slope: float = 0.0
    trend_window: int = 3
    patience: int = 1
    max_drops_per_check: int | float = 0.25
    max_dropped_fraction: float = 0.75

    def __post_init__(self) -> None:
        def fail(name: str, rule: str) -> None:
            raise PolicyError(f"{name}={getattr(self, name)!r} is invalid: it must be {rule}")

        if not isinstance(self.warmup_checks, int) or self.warmup_checks < 0:
            fail("warmup_checks", "an integer >= 0")
        if not 0 < self.change_threshold <= 1:
            fail("change_threshold", "in (0, 1]")
        if not math.isfinite(self.max_slope):
            fail("max_slope", "a finite number")
        if not isinstance(self.trend_window, int) or self.trend_window < 2:
            fail("trend_window", "an integer >= 2")
        if not isinstance(self.patience, int) or self.patience < 1:
            fail("patience", "an integer >= 1")
        k = self.max_drops_per_check
        if isinstance(k, bool) or not (
            (isinstance(k, int) and k >= 1) or (isinstance(k, float) and 0 < k <= 1)
        ):
            fail("max_drops_per_check", "an integer >= 1 or a fraction in (0, 1]")
        if not 0 <= self.max_dropped_fraction <= 1:
            fail("max_dropped_fraction", "in [0, 1]")

    def is_candidate(self, score: UnitScore) -> bool:
        return score.ratio <= self.change_threshold and score.slope <= self.max_slope

    def drops_allowed(self, units_total: int, units_dropped: int) -> int:
        """How many units may go at this check, given how many are gone already."""
        k = self.max_drops_per_check
        per_check = k if isinstance(k, int) else max(1, math.floor(k * units_total))
        cap = math.floor(self.max_dropped_fraction * units_total + 1e-9)
        return max(0, min(per_check, cap - units_dropped))

    def decide(
        self,
        scores: Mapping[str, UnitScore],
        streaks: Mapping[str, int],
        *,
        check: int,
        units_total: int,
        units_dropped: int,
    ) -> list[str]:
        """Names of the units to drop now, in order.

        Args:
            scores: this check's scores of the live units (execution order).
            streaks: consecutive checks (this one included) each unit has been a candidate.
            check: 1-based index of this check.
            units_total: all units, dropped ones included.
            units_dropped: units already dropped.
        """
        if check <= self.warmup_checks:
            return []
        ready = [n for n, s in scores.items() if streaks.get(n, 0) >= self.patience]
        ready.sort(key=lambda n: scores[n].continuation)  # stable: ties keep execution order
        return ready[: self.drops_allowed(units_total, units_dropped)]

    def to_dict(self) -> dict:
        return asdict(self)
