"""Lockstep execution: one epoch of each run in turn, in one process.

Runs done one after another cannot be compared by wall-clock on a shared machine: a change of
load between them shows up as a speed-up or slow-down of one method. Taking turns epoch by epoch
spreads such a change over every run of a round alike. What is left is measured by the bench's
A/A control (full training timed twice).

The scheduler knows runs only through :class:`EpochRun`: ``next_epoch()`` trains one more epoch
and returns its metrics row, or ``None`` once the run is complete. The trainer's own epoch API
(issue 12) satisfies it directly; until then :class:`learndrop.bench.trainer_run.TrainerRun`
adapts ``learndrop.train.train``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

__all__ = ["EpochRun", "run_lockstep"]


class EpochRun(Protocol):
    """A training run that advances one epoch at a time."""

    name: str

    def next_epoch(self) -> dict | None:
        """Train one more epoch and return its metrics row; ``None`` when there is none left
        (the run is complete and its results are written)."""

    def close(self) -> None:
        """Give up the run now (e.g. on Ctrl-C); its last finished epoch stays checkpointed."""


def run_lockstep(runs: Sequence[EpochRun],
                 on_epoch: Callable[[EpochRun, dict], None] | None = None,
                 on_done: Callable[[EpochRun], None] | None = None) -> list[str]:
    """Train ``runs`` in rounds: in each round every unfinished run trains one epoch, in turn;
    the turn order is rotated by one per round, so that no run always goes first.

    ``on_epoch(run, row)`` is called after every epoch, ``on_done(run)`` once a run is complete
    (e.g. to rewrite a report). Returns the names of the runs in the order they completed. On an
    exception (a diverged run, Ctrl-C) every run is closed and the exception propagates.
    """
    live = list(runs)
    completed = []
    round_ = 0
    try:
        while live:
            k = round_ % len(live)
            for run in live[k:] + live[:k]:
                row = run.next_epoch()
                if row is None:
                    live.remove(run)
                    completed.append(run.name)
                    if on_done is not None:
                        on_done(run)
                elif on_epoch is not None:
                    on_epoch(run, row)
            round_ += 1
    finally:
        for run in live:
            run.close()
    return completed
