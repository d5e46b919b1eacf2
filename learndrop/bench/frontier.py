"""The budget frontier: what full training reaches at a given cost (pure functions, no torch).

Full training run for fractions of its epochs, each with its learning-rate schedule compressed so
that it still decays to zero, traces accuracy against cost: the simplest alternative to any
training-speed method (Li et al., "Budgeted Training", ICLR 2020; Kaddour et al., "No Train No
Gain", NeurIPS 2023). A method wins only where its point lies above that line at its own cost.

- Each budget's point is the mean over seeds of its runs' costs and final accuracies.
- Between points the frontier is piecewise linear in cost (points sorted by cost; the line goes
  through every mean point, so a budget that happened to do worse than a cheaper one is kept:
  the frontier is what was measured, not an envelope).
- Outside the range of the points the frontier is not extrapolated: a cost below the cheapest
  budget or above the costliest run has no frontier accuracy and no margin, and says so.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Comparison", "FrontierPoint", "build_frontier", "compare", "frontier_accuracy",
           "mean_std", "verdict"]

# Costs equal within this relative tolerance count as the same cost (a method that dropped nothing
# costs exactly what full training costs, up to float rounding of the ledger's sums).
_REL_TOL = 1e-9

INSIDE = "inside"
CHEAPER = "cheaper than every budget"
COSTLIER = "costlier than full training"


@dataclass(frozen=True)
class FrontierPoint:
    """One budget on the frontier: the mean over seeds of its runs.

    ``budget`` is the fraction of the epochs (1.0 for full training); ``cost`` in the axis' unit
    (FLOPs, seconds, or a ratio to full training); ``acc`` a fraction (0.9 = 90%).
    """

    budget: float
    cost: float
    acc: float
    acc_std: float | None
    seeds: int


@dataclass(frozen=True)
class Comparison:
    """A run's accuracy against the frontier at its own cost.

    ``frontier_acc`` and ``margin`` (``acc - frontier_acc``, a fraction: 0.01 = one point) are
    ``None`` when ``position`` is not ``"inside"`` the frontier's range of costs.
    """

    cost: float
    acc: float
    frontier_acc: float | None
    margin: float | None
    position: str


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (``None`` for the std of fewer than 2 values)."""
    values = [float(v) for v in values]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def build_frontier(runs: Iterable[tuple[float, float, float]]) -> list[FrontierPoint]:
    """The frontier from ``(budget, cost, acc)`` of every budget run and seed (full training
    included as budget 1.0): one point per budget, sorted by cost, at the median of its seeds'
    costs (time ratios are medians: one seed slowed by other load does not move the frontier)
    and the mean ± std of their accuracies.

    Raises ``ValueError`` for a non-finite cost or accuracy.
    """
    by_budget: dict[float, list[tuple[float, float]]] = {}
    for budget, cost, acc in runs:
        if not (math.isfinite(cost) and math.isfinite(acc)):
            raise ValueError(f"budget {budget}: cost {cost} and accuracy {acc} must be finite")
        by_budget.setdefault(float(budget), []).append((float(cost), float(acc)))
    points = []
    for budget, pairs in by_budget.items():
        acc, acc_std = mean_std([a for _, a in pairs])
        points.append(FrontierPoint(budget, statistics.median(c for c, _ in pairs), acc,
                                    acc_std, len(pairs)))
    return sorted(points, key=lambda p: (p.cost, p.budget))


def _position(frontier: Sequence[FrontierPoint], cost: float) -> str:
    lo, hi = frontier[0].cost, frontier[-1].cost
    if cost < lo and not math.isclose(cost, lo, rel_tol=_REL_TOL):
        return CHEAPER
    if cost > hi and not math.isclose(cost, hi, rel_tol=_REL_TOL):
        return COSTLIER
    return INSIDE


def frontier_accuracy(frontier: Sequence[FrontierPoint], cost: float) -> float | None:
    """The frontier's accuracy at ``cost``: linear interpolation between the two points around
    it; ``None`` outside the points' range of costs (never extrapolated) or without points."""
    if not frontier or _position(frontier, cost) != INSIDE:
        return None
    cost = min(max(cost, frontier[0].cost), frontier[-1].cost)  # within the tolerance: clamp
    for left, right in zip(frontier, frontier[1:], strict=False):
        if left.cost <= cost <= right.cost:
            if right.cost == left.cost:
                return max(left.acc, right.acc)
            t = (cost - left.cost) / (right.cost - left.cost)
            return left.acc + t * (right.acc - left.acc)
    return frontier[0].acc  # a single point, at exactly its cost


def compare(frontier: Sequence[FrontierPoint], cost: float, acc: float) -> Comparison:
    """Where ``(cost, acc)`` lies against ``frontier``."""
    position = _position(frontier, cost) if frontier else "no frontier"
    at = frontier_accuracy(frontier, cost)
    return Comparison(cost, acc, at, None if at is None else acc - at, position)


def verdict(margins: Sequence[float | None]) -> str:
    """``"above"`` or ``"below"`` the frontier by the sign of the mean margin over seeds (``"on"``
    when it is 0); ``" (within the seed spread)"`` is added when the mean is no larger than one
    standard deviation of the margins; ``"outside the frontier's range"`` when no seed has a
    margin, and ``" (K seed(s) outside the frontier's range)"`` added when some seeds lack one."""
    known = [m for m in margins if m is not None]
    if not known:
        return "outside the frontier's range"
    mean, std = mean_std(known)
    text = "above" if mean > 0 else "below" if mean < 0 else "on"
    if std is not None and abs(mean) <= std:
        text += " (within the seed spread)"
    if len(known) < len(margins):
        text += f" ({len(margins) - len(known)} seed(s) outside the frontier's range)"
    return text
