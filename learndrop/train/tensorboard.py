"""``--tensorboard``: the rows of ``metrics.jsonl`` as TensorBoard scalars too.

TensorBoard is an optional extra (``pip install learndrop[tensorboard]``); it is imported only
when asked for, and its absence is a one-line :class:`ConfigError` before training starts.
"""

from __future__ import annotations

import math
from pathlib import Path

from learndrop.train.config import ConfigError

__all__ = ["TensorBoardLog", "scalars"]

# Row fields that are the x axis or not a curve.
_SKIP = {"epoch", "step"}


def scalars(row: dict) -> dict[str, float]:
    """The numeric values of one metrics row, by TensorBoard tag.

    Top-level numbers keep their ``metrics.jsonl`` names (``test_acc``, ``fwd_flops`` ...);
    per-unit scores become ``scores/<unit>/<score>``; lists (e.g. ``dropped``) are skipped.
    """
    out: dict[str, float] = {}
    for key, value in row.items():
        if key in _SKIP or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[key] = float(value)
        elif key == "scores" and isinstance(value, dict):
            for unit, scores in value.items():
                for name, v in scores.items():
                    if isinstance(v, (int, float)) and math.isfinite(v):
                        out[f"scores/{unit}/{name}"] = float(v)
    return out


class TensorBoardLog:
    """Writes metrics rows to ``path`` (an events directory), one point per row at its
    optimizer ``step``.

    Args:
        path: the directory for the event files (the trainer uses ``RUN_DIR/tensorboard``).
        resume_step: when resuming, the step the run continues from: points of the earlier
            attempt at or after it are discarded, so the curves have no duplicates.
    """

    def __init__(self, path: str | Path, resume_step: int | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ConfigError("--tensorboard needs the tensorboard package: "
                              "pip install 'learndrop[tensorboard]'") from err
        path = Path(path)
        if resume_step is None and path.is_dir():
            # A fresh (or overwritten) run: the old run's curves must not mix with the new one.
            for old in path.glob("events.out.tfevents.*"):
                old.unlink()
        self.writer = SummaryWriter(str(path), purge_step=resume_step)

    def write(self, row: dict) -> None:
        step = int(row["step"])
        for tag, value in scalars(row).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
