"""Scoring: how much each unit's parameters still change, and whether they will go on changing.

Our reading of the paper (DESIGN.md section 1), made precise here:

* **change score** of a unit at check ``t``::

      change(t) = ||theta(t) - theta(t-1)|| / ||theta(t-1)||  /  sum of the learning rates applied
                                                              to the unit's param group since t-1

  Dividing by the summed learning rate makes it a relative speed *per unit of learning rate and
  step*, comparable across param groups with different learning rates.
* **normalised across units** (``normalization="median"``, the default): ``change(t)`` is then
  divided by the median ``change(t)`` of the live units at the same check. Whatever moves every
  unit alike (a learning rate decaying to zero, a small fine-tuning rate, a longer interval; the
  learning-rate normalised speed *rises* again near the end of a cosine schedule, DESIGN.md
  section 6) cancels, and a unit scores low only when it slows down *relative to the others*.
  ``normalization="per-unit"`` keeps each unit's own learning-rate normalised reading.
* **ratio**: the unit's speed against its reference. With ``normalization="median"`` that is
  the median live unit, so the ratio is the normalised ``change(t)`` itself (1 = as fast as the
  median unit, 0.8 = 20% slower). With ``"per-unit"`` it is the unit's own running maximum of
  ``change``, taken over the checks after the warm-up (the warm-up's large early moves would
  inflate it): the paper's "has slowed down to a fraction of its peak". Why the median reading
  does not also divide by the own peak: measured on ResNet-56 (CIFAR-10, 20,000 images, the
  proof regime), the median-normalised speeds drift by about 5% per epoch and almost all alike
  (a unit's ratio to its own peak after four epochs: 0.73-1.0, and the one outlier, the first
  block at 0.54, is the costliest to drop), so a ratio to the own peak separates nothing there
  (``docs/method-card.md``, "Calibration").
* **slope**: least-squares slope of ``log change`` over the last ``trend_window`` checks after the
  warm-up (negative = still slowing down).
* **continuation score** = ``ratio * exp(slope)``: the change expected at the next check if the
  trend holds, relative to the unit's reference. Low means "has stopped learning and is not about to
  resume".

Only a unit that learns is scored: one with a parameter that requires grad and that one of the
optimizer's param groups holds. A unit the user froze is not scored,
so the policy never sees it as a candidate; a unit whose parameters join the optimizer later (an
"unfreeze the backbone at epoch k" recipe: ``requires_grad_(True)`` plus
``optimizer.add_param_group``) gets its first snapshot at the next check and is scored from the
check after. Param groups added later get their own learning-rate sums from then on.

Snapshots live on the parameters' device; a check costs a handful of vector norms and one host
transfer for all units together, and nothing is done per step except adding a Python float.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from learndrop.units import Unit

__all__ = ["NORMALIZATIONS", "UnitScore", "ScoreTracker", "log_slope"]

#: How change scores are compared (see the module docstring).
NORMALIZATIONS = ("median", "per-unit")

#: Checks of score history kept per unit (older entries are discarded; see ScoreTracker.check).
HISTORY_KEEP = 64


@dataclass(frozen=True)
class UnitScore:
    """Scores of one unit at one check (see the module docstring)."""

    change: float
    ratio: float
    slope: float
    continuation: float


def log_slope(values: Sequence[float]) -> float:
    """Least-squares slope of ``log(values)`` against their index; 0 with fewer than 2 values."""
    logs = [math.log(v) for v in values if v > 0]
    n = len(logs)
    if n < 2:
        return 0.0
    mean_x = (n - 1) / 2
    mean_y = sum(logs) / n
    num = sum((i - mean_x) * (y - mean_y) for i, y in enumerate(logs))
    den = sum((i - mean_x) ** 2 for i in range(n))
    return num / den


def _flat(params: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).float() for p in params])


class ScoreTracker:
    """Keeps a snapshot and the score history of every live unit that learns.

    Call :meth:`accumulate_lr` after every optimizer step and :meth:`check` at every check.
    """

    def __init__(
        self,
        model: nn.Module,
        units: Sequence[Unit],
        optimizer: torch.optim.Optimizer,
        *,
        trend_window: int = 3,
        warmup_checks: int = 1,
        normalization: str = "median",
    ) -> None:
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, "
                             f"got {normalization!r}")
        self.normalization = normalization
        self.model = model
        self.optimizer = optimizer
        self.trend_window = trend_window
        self.warmup_checks = warmup_checks
        self.units = {u.name: u for u in units}
        self.history: dict[str, list[float]] = {u.name: [] for u in units}
        self.peak: dict[str, float] = {u.name: 0.0 for u in units}
        self.checks = 0
        self._lr_sum = [0.0] * len(optimizer.param_groups)
        self._snapshots: dict[str, torch.Tensor] = {}
        self._take_snapshots(self._learning())

    def _learning(self) -> dict[str, int]:
        """Live units that learn now -> the index of the param group of their first trainable
        parameter (whose learning rate normalises their change)."""
        group_of = {id(p): i for i, g in enumerate(self.optimizer.param_groups)
                    for p in g["params"]}
        out = {}
        for name, unit in self.units.items():
            trainable = [p for p in unit.parameters(self.model)
                         if p.requires_grad and id(p) in group_of]
            if trainable:
                out[name] = group_of[id(trainable[0])]
        return out

    def _take_snapshots(self, names: Iterable[str]) -> None:
        for name in names:
            self._snapshots[name] = _flat(self.units[name].parameters(self.model))

    def accumulate_lr(self) -> None:
        """Add the learning rates of the step just taken (a Python add per param group)."""
        groups = self.optimizer.param_groups
        if len(groups) > len(self._lr_sum):  # groups added since: they start from zero
            self._lr_sum += [0.0] * (len(groups) - len(self._lr_sum))
        for i, group in enumerate(groups):
            self._lr_sum[i] += group["lr"]

    def forget(self, name: str) -> None:
        """Stop tracking a dropped or frozen unit for good (its snapshot is released)."""
        self._snapshots.pop(name, None)
        self.units.pop(name, None)

    def check(self) -> dict[str, UnitScore]:
        """Score every live unit that learned since the last check, take new snapshots and
        reset the learning-rate sums. A unit that does not learn now loses its snapshot; one
        that started learning gets its first one (it is scored from the next check on)."""
        learning = self._learning()
        names = [n for n in self._snapshots if n in learning]
        rel = []
        new_snapshots = {}
        for name in names:
            now = _flat(self.units[name].parameters(self.model))
            before = self._snapshots[name]
            scale = torch.linalg.vector_norm(before).clamp_min(1e-12)
            rel.append(torch.linalg.vector_norm(now - before) / scale)
            new_snapshots[name] = now
        rel_values = torch.stack(rel).tolist() if rel else []  # one host transfer per check
        lr_sums = [float(s) for s in self._lr_sum]
        self._lr_sum = [0.0] * len(self.optimizer.param_groups)
        self._snapshots = new_snapshots
        self._take_snapshots(n for n in learning if n not in new_snapshots)
        in_warmup = self.checks < self.warmup_checks
        self.checks += 1

        changes = []
        for name, r in zip(names, rel_values):
            group = learning[name]
            lr_sum = lr_sums[group] if group < len(lr_sums) else 0.0
            changes.append(r / lr_sum if lr_sum > 0 else float("nan"))
        if self.normalization == "median":
            finite = [c for c in changes if math.isfinite(c)]
            median = statistics.median(finite) if finite else 0.0
            changes = [c / median if median > 0 else float("nan") for c in changes]

        scores = {}
        for name, change in zip(names, changes):
            history = self.history[name]
            history.append(change)
            # Bounded memory on endless streams: only the last HISTORY_KEEP checks are kept (the
            # trend needs ``trend_window`` of them; the running peak is kept separately).
            keep = max(HISTORY_KEEP, self.trend_window + self.warmup_checks)
            if len(history) > keep:
                del history[: len(history) - keep]
            if math.isnan(change):
                continue
            if not in_warmup:
                self.peak[name] = max(self.peak[name], change)
            # The warm-up's entries are the first ones of the run; those still kept are skipped.
            skip = max(0, self.warmup_checks - (self.checks - len(history)))
            recent = [v for v in history[skip:] if not math.isnan(v)]
            recent = recent[-self.trend_window:]
            peak = self.peak[name]
            if self.normalization == "median":
                ratio = change  # the reference is the median live unit (module docstring)
            else:
                ratio = change / peak if peak > 0 else 1.0
            slope = log_slope(recent)
            scores[name] = UnitScore(change, ratio, slope, ratio * math.exp(slope))
        return scores

    def state_dict(self) -> dict:
        return {
            "history": {k: list(v) for k, v in self.history.items()},
            "peak": dict(self.peak),
            "checks": self.checks,
            "lr_sum": [float(s) for s in self._lr_sum],
            "snapshots": {k: v.clone() for k, v in self._snapshots.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.history = {k: list(v) for k, v in state["history"].items()}
        self.peak = dict(state["peak"])
        self.checks = state["checks"]
        self._lr_sum = list(state["lr_sum"])
        device = next(self.model.parameters()).device
        self._snapshots = {k: v.to(device) for k, v in state["snapshots"].items()
                           if k in self.units}
