"""Learning-rate rewinding after a drop: move a step-indexed schedule back, compress the rest.

After a structural change, the network that is left has to re-route around what left, and a
decaying schedule gives it ever smaller steps to do it with. Rewinding (Renda, Frankle & Carbin,
"Comparing Rewinding and Fine-tuning in Neural Network Pruning", ICLR 2020, section 3: retrain
the pruned network with the learning-rate schedule from an earlier point) moves the schedule's
*position* back when a unit leaves; unlike Renda et al., who retrain for the rewound number of
epochs (more steps), the rest of the schedule is compressed into the steps the run has left, so
the run's length and cost stay as planned.

The position ``p(t)`` of optimizer step ``t`` in the driver's schedule (its learning-rate factor
is ``factor(p(t))``) is ``t`` until the first rewind. A rewind at step ``s``, where the position
is ``p = p(s)``, goes back to ``r``: the point of ``[max(0, p - k), p]`` with the highest
factor (``k = rewind_steps``; on a warm-up-then-decay schedule, the later of the warm-up's end
and ``p - k``, so a rewind never lowers the rate), and from then on

    p(t) = r + (t - s) * (T - r) / (T - s)        (s <= t <= T, T the run's length in steps)

linear from ``r`` back to ``T`` at the run's end: the schedule still ends where it did, and every
later step runs at a rate at least as high as without the rewind. Each rewind starts from where
the previous one left the position. A run's rewinds (``{"step", "from", "to"}`` records) can be
replayed on another run of the same length (:meth:`ScheduleRewind.replaying`): the controls that
copy a Learn&Drop run (random units, the full network) then get its learning rate, step for
step.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence

__all__ = ["ScheduleRewind"]


class ScheduleRewind:
    """The position in a step-indexed learning-rate schedule, moved back at each rewind.

    Args:
        total_steps: the run's length in optimizer steps (``T``, > 0).
        rewind_steps: how far back in the schedule a rewind looks (``k``, steps, > 0), or
            ``None`` for a schedule that only replays the rewinds it was given
            (:meth:`replaying`) and makes none of its own.

    Raises:
        ValueError: ``total_steps`` or ``rewind_steps`` not a positive integer.
    """

    def __init__(self, total_steps: int, rewind_steps: int | None) -> None:
        for name, value in (("total_steps", total_steps), ("rewind_steps", rewind_steps)):
            if value is None and name == "rewind_steps":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.total_steps = total_steps
        self.rewind_steps = rewind_steps
        self.rewinds: list[dict] = []  # {"step", "from", "to"} of every move, by step

    @classmethod
    def replaying(cls, total_steps: int, rewinds: Sequence[dict]) -> ScheduleRewind:
        """A schedule that moves as the run whose ``rewinds`` (its ``schedule_rewinds``) these
        are did, at the same steps to the same positions.

        Raises:
            ValueError: a record that is not ``{"step", "from", "to"}`` with ``0 <= to <
                from`` and steps increasing below ``total_steps``.
        """
        replay = cls(total_steps, None)
        last = -1
        for record in rewinds:
            try:
                step, to = int(record["step"]), float(record["to"])
                ok = last < step < total_steps and 0 <= to < float(record["from"])
            except (KeyError, TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"not a rewind of a {total_steps}-step run: {record!r}")
            replay.rewinds.append({"step": step, "from": float(record["from"]), "to": to})
            last = step
        return replay

    def position(self, step: int) -> int | float:
        """The schedule position of optimizer step ``step``: ``step`` itself (the int) before
        the first rewind and from the run's planned end on, the line of the last rewind at or
        before ``step`` in between."""
        i = bisect.bisect_right(self.rewinds, step, key=lambda r: r["step"])
        if i == 0 or step >= self.total_steps:
            return step
        s, r, t_end = self.rewinds[i - 1]["step"], self.rewinds[i - 1]["to"], self.total_steps
        return r + (step - s) * (t_end - r) / (t_end - s)

    def rewind(self, step: int, factor: Callable[[float], float]) -> dict:
        """Rewind at optimizer step ``step`` (the next step runs at the rewound rate), choosing
        the target by ``factor`` (the schedule's learning-rate factor of a position). Returns
        ``{"step", "from", "to", "moved"}`` (positions); a move is recorded in
        :attr:`rewinds`. Nothing moves where no earlier point of the window has a higher rate
        (a constant schedule, the warm-up), at or past the run's end, or a second time at the
        same step.

        Raises:
            ValueError: a schedule that only replays (``rewind_steps=None``), or a step before
                the last rewind's.
        """
        if self.rewind_steps is None:
            raise ValueError("this schedule replays another run's rewinds and makes none")
        if self.rewinds and step < self.rewinds[-1]["step"]:
            raise ValueError(f"a rewind at step {step} comes after one at step "
                             f"{self.rewinds[-1]['step']}")
        here = float(self.position(step))
        target = here
        again = bool(self.rewinds) and self.rewinds[-1]["step"] == step
        if step < self.total_steps and not again:
            best = factor(here)
            # Whole positions of the window, newest first: ties keep the smaller move.
            oldest = max(0, math.ceil(here - self.rewind_steps - 1e-9))
            for j in range(math.ceil(here) - 1, oldest - 1, -1):
                value = factor(float(j))
                if value > best:
                    best, target = value, float(j)
        record = {"step": step, "from": here, "to": target}
        if target < here:
            # Moving the line's start along itself changes nothing, so only moves are kept.
            self.rewinds.append(dict(record))
        return {**record, "moved": target < here}

    def state_dict(self) -> dict:
        return {"total_steps": self.total_steps, "rewinds": [dict(r) for r in self.rewinds]}

    def load_state_dict(self, state: dict) -> None:
        """Restore a saved state.

        Raises:
            ValueError: the state is of a run of another length (a resumed run made longer):
                its positions, and the window of a later rewind, would not fit.
        """
        if state.get("total_steps", self.total_steps) != self.total_steps:
            # Even before any rewind: a later one would read the longer run's schedule in its
            # window, not the one that ran.
            raise ValueError(
                f"this run moves its learning-rate schedule (rewinds) for "
                f"{state['total_steps']} steps and cannot be made {self.total_steps} steps "
                f"long: resume it with its own length, or train a new run")
        self.rewinds = [dict(r) for r in state["rewinds"]]
