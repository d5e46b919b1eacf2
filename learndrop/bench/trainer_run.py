"""THE PLUG-IN POINT of the trainer's epoch-at-a-time API (issue 12).

:class:`TrainerRun` adapts ``learndrop.train.train`` to :class:`learndrop.bench.lockstep.EpochRun`
without changing how it trains: ``train`` runs unchanged in a worker thread, which waits at its
``on_epoch`` hook (called once each epoch's metrics and checkpoint are written) until the next
``next_epoch()``. Only one run's thread works at a time, so timings and process CPU time
(``time.process_time`` inside the trainer) belong to that run alone. Resuming is the trainer's:
an interrupted run continues from its last epoch checkpoint (``config.resume``), with the
schedule of the run as planned (driving the trainer with ``--resume`` one epoch at a time would
instead stretch the cosine schedule at every call).

When the trainer yields epochs itself, replace this class by that object: the scheduler needs
only ``name``, ``next_epoch()``, ``close()`` and, afterwards, ``summary``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from learndrop.train.config import TrainConfig

__all__ = ["TrainerRun"]


class _Closed(BaseException):
    """Unwinds a paused worker (a BaseException: the trainer lets it through)."""


class TrainerRun:
    """One ``learndrop.train.train`` run, advanced epoch by epoch (see the module docstring).

    ``summary`` holds the run's summary once ``next_epoch()`` has returned ``None``. An exception
    of the run (a diverged loss, a bad option) is raised by the ``next_epoch()`` call in which it
    happened.
    """

    def __init__(self, name: str, config: TrainConfig, log: Callable[[str], None] = print) -> None:
        self.name = name
        self.config = config
        self.log = log
        self.summary: dict | None = None
        self._thread: threading.Thread | None = None
        self._go: queue.Queue[bool] = queue.Queue(maxsize=1)
        self._back: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=1)
        self._paused = False
        self._finished = False

    def next_epoch(self) -> dict | None:
        if self._finished:
            return None
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=f"bench:{self.name}",
                                            daemon=True)
            self._thread.start()
        else:
            self._paused = False
            self._go.put(True)
        kind, value = self._back.get()
        if kind == "epoch":
            self._paused = True
            return value
        self._finished = True
        self._thread.join()
        if kind == "error":
            raise value
        self.summary = value
        return None

    def close(self) -> None:
        """Stop the run: a paused one at once (its epoch is checkpointed); one in the middle of
        an epoch (after Ctrl-C) is left to its daemon thread, which stops at the epoch's end or
        with the process."""
        if self._thread is None or self._finished:
            return
        self._finished = True
        self._go.put(False)
        if self._paused:
            self._thread.join()

    def _work(self) -> None:
        from learndrop.train import train

        def on_epoch(row: dict) -> None:
            self._back.put(("epoch", row))
            if not self._go.get():
                raise _Closed

        try:
            summary = train(self.config, log=self.log, on_epoch=on_epoch)
        except _Closed:
            return
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            self._back.put(("error", err))
            return
        self._back.put(("done", summary))
