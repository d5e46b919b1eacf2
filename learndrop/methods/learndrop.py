"""Learn&Drop: score every unit at each check and drop the ones that have stopped learning."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from learndrop.methods.base import Event, Method, RunInfo
from learndrop.methods.registry import register_method
from learndrop.policy import DropPolicy
from learndrop.scores import ScoreTracker, UnitScore
from learndrop.units import Unit

__all__ = ["Freeze", "LearnDrop"]


@register_method("learndrop", options=DropPolicy)
class LearnDrop(Method):
    """Learn&Drop as a driver of an ordinary training loop.

    Example::

        ld = LearnDrop(model, optimizer, example_input, steps_per_check=len(loader))
        for epoch in range(epochs):
            for x, y in loader:
                loss_fn(model(x), y).backward(); optimizer.step(); optimizer.zero_grad()
                ld.step(len(x))      # scores and drops once per epoch; returns the drop events
        ld.summary()

    Only units that learn are scored and can be dropped (a unit the user froze is left alone;
    one unfrozen later is scored from then on), and a decision never removes the unit that holds
    the model's last trainable parameters (:meth:`~learndrop.methods.base.Method.keep_trainable`),
    even with ``max_dropped_fraction=1.0``.

    Args:
        mode: ``"drop"`` removes units from the network; ``"freeze"`` keeps them in the forward
            pass without gradients (the baseline of the same scores).
        policy: the drop decision's hyperparameters (:class:`DropPolicy`).
        total_steps: the run's length in steps, when known: no unit is dropped at the last
            check (nothing would be saved, and the network would end untrained after the drop).
        Other arguments: see :class:`learndrop.methods.base.Method`.

    Options (``--method learndrop``): the fields of :class:`DropPolicy`.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        example_input: torch.Tensor,
        *,
        policy: DropPolicy | None = None,
        mode: str = "drop",
        units: list[Unit] | None = None,
        unit_names: Iterable[str] | None = None,
        steps_per_check: int | None = None,
        total_steps: int | None = None,
    ) -> None:
        if mode not in ("drop", "freeze"):
            raise ValueError(f"mode must be 'drop' or 'freeze', got {mode!r}")
        super().__init__(
            model, optimizer, example_input,
            units=units, unit_names=unit_names, steps_per_check=steps_per_check,
        )
        self.mode = mode
        if mode == "freeze":
            self.name = "freeze"  # its checkpoints resume as --method freeze
        self.total_steps = total_steps
        self.policy = policy or DropPolicy()
        self.tracker = ScoreTracker(
            model, self.units, optimizer,
            trend_window=self.policy.trend_window, warmup_checks=self.policy.warmup_checks,
        )
        self.streaks: dict[str, int] = {}
        self.last_scores: dict[str, UnitScore] = {}

    @classmethod
    def option_kwargs(cls, options: DropPolicy, run: RunInfo) -> dict:
        return {"policy": options, "total_steps": run.total_steps}

    def metrics(self) -> dict:
        """The base row plus each live unit's last scores (change, ratio, slope,
        continuation)."""
        return {**super().metrics(), "scores": {
            u: {"change": s.change, "ratio": s.ratio, "slope": s.slope,
                "continuation": s.continuation} for u, s in self.last_scores.items()}}

    def on_step(self) -> list[Event]:
        self.tracker.accumulate_lr()
        return []

    def on_check(self) -> list[Event]:
        scores = self.tracker.check()
        self.last_scores = scores
        for name, score in scores.items():
            candidate = self.policy.is_candidate(score)
            self.streaks[name] = self.streaks.get(name, 0) + 1 if candidate else 0
        if self.total_steps is not None and self.steps >= self.total_steps:
            # A drop after the last step saves nothing and leaves the final network with stale
            # BatchNorm statistics downstream: score, but do not act.
            return []
        # Never the last trainable unit: with every parameter gone, backward() would fail.
        chosen = self.keep_trainable(self.sync_decision(self.policy.decide(
            scores, self.streaks,
            check=self.checks, units_total=len(self.units), units_dropped=len(self.removed),
        )))
        by_name = {u.name: u for u in self.units}
        events = []
        for name in chosen:
            score = scores.get(name)  # None only if another process's scores differed
            events.append(self.apply(
                by_name[name], self.mode,
                change_score=score.change if score else None,
                continuation_score=score.continuation if score else None,
            ))
            self.tracker.forget(name)
        return events

    def state_dict(self) -> dict:
        return {**super().state_dict(), "tracker": self.tracker.state_dict(),
                "streaks": dict(self.streaks), "policy": self.policy.to_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.tracker.load_state_dict(state["tracker"])
        self.streaks = dict(state["streaks"])


@register_method("freeze", options=DropPolicy)
class Freeze(LearnDrop):
    """Learn&Drop's scores and policy, freezing units instead of dropping them (the baseline
    that keeps the forward pass and saves only weight gradients)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, mode="freeze", **kwargs)
