"""The trainer as a lockstep run: :class:`learndrop.train.Training`, one epoch per turn.

:class:`TrainerRun` adapts the trainer's epoch API (``Training(config).epochs()``, then
``finish()``) to :class:`learndrop.bench.lockstep.EpochRun`. The training is built on the first
turn (so only one run's data and model are being set up at a time) and advanced one epoch per
``next_epoch()``; the trainer's own timings (wall-clock and process CPU time of its steps)
therefore belong to that run alone. Resuming is the trainer's: an interrupted run continues
from its last epoch checkpoint (``config.resume``) with the schedule of the run as planned.

Ctrl-C: the runs of one lockstep loop share one :class:`~learndrop.train.steps.StopFlag`
(``stop``), entered around the loop. Each training's suspended epoch generator would otherwise
keep its own Ctrl-C handler installed, and the first Ctrl-C would set the flag of whichever run
was built last, not of the one training at that moment.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

from learndrop.train.config import TrainConfig
from learndrop.train.steps import StopFlag

__all__ = ["TrainerRun"]


class TrainerRun:
    """One training run, advanced epoch by epoch.

    ``summary`` holds the run's summary once ``next_epoch()`` has returned ``None``. An exception
    of the run (a diverged loss, a bad option) is raised by the ``next_epoch()`` call in which it
    happened; so is :class:`~learndrop.train.TrainingInterrupted` once ``stop`` is set (the run
    stops after its current step, checkpointed mid-epoch). ``stop``: the loop's shared Ctrl-C
    flag; ``None``: the training installs its own while it runs.
    """

    def __init__(self, name: str, config: TrainConfig, log: Callable[[str], None] = print,
                 stop: StopFlag | None = None) -> None:
        self.name = name
        self.stop = stop
        # Resuming continues the planned run; --overwrite (of the bench) applies to new runs only.
        self.config = dataclasses.replace(config, overwrite=False) if config.resume else config
        self.log = log
        self.summary: dict | None = None
        self._training = None
        self._epochs: Iterator[dict] | None = None
        self._finished = False

    def next_epoch(self) -> dict | None:
        if self._finished:
            return None
        if self._training is None:
            from learndrop.train import Training

            self._training = Training(self.config, self.log, stop=self.stop)
            self._epochs = self._training.epochs()
        row = next(self._epochs, None)
        if row is not None:
            return row
        self._finished = True
        self.summary = self._training.finish()
        return None

    def close(self) -> None:
        """Stop the run; its last finished epoch is checkpointed, so the same bench command
        continues it."""
        if self._epochs is not None and not self._finished:
            self._epochs.close()
        self._finished = True
