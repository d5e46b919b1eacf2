"""Full-rewound: the full network trained with a reference run's learning-rate schedule.

The control of learning-rate rewinding (``lr_rewind_steps``, :mod:`learndrop.rewind`; no peer
paper): a Learn&Drop run that rewinds its schedule after drops trains at higher rates than
full training does from its first drop on. If the full network gains as much from those
rates, the gain comes from the schedule, not from letting the smaller network re-route around
what left, and full training with a better schedule is the fairer reference.

Our reading: nothing is dropped; the reference run's rewinds (its summary's
``schedule_rewinds``) are replayed at the same steps to the same positions of the driver's
schedule (:meth:`~learndrop.rewind.ScheduleRewind.replaying`), so every step runs at the
reference's learning rate. A reference that made no rewind gives full training, step for step.
The positions are those of the reference's schedule: run the control with the same schedule
options (``--lr``, ``--warmup-epochs``, ``--lr-decay-fraction``, ``--epochs``, batch and data),
as the bench does; the run builder refuses one that differs
(:func:`learndrop.train.builder.check_reference`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from learndrop.methods.base import RunInfo
from learndrop.methods.full import Full
from learndrop.methods.random_drop import ReferenceOptions, reference_rewinds, replayed_rewinds
from learndrop.methods.registry import register_method

__all__ = ["FullRewound"]


@register_method("full-rewound", options=ReferenceOptions)
class FullRewound(Full):
    """Full training at the learning rates of a reference run that rewound its schedule.

    Args:
        schedule_rewinds: the reference run's ``schedule_rewinds`` (``[]``: full training).
        total_steps: the run's length in steps (the reference's); needed with rewinds.
        Other arguments: see :class:`learndrop.methods.base.Method`. The driver attaches
        its schedule (:meth:`~learndrop.methods.base.Method.attach_schedule`).

    Raises:
        MethodOptionError: rewinds without ``total_steps``, or not of a run of that length.
    """

    needs_reference = True

    @classmethod
    def option_kwargs(cls, options: ReferenceOptions, run: RunInfo) -> dict:
        return {"schedule_rewinds": reference_rewinds(options, cls.name, run),
                "total_steps": run.total_steps}

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 example_input: torch.Tensor, *, schedule_rewinds: Sequence[dict] = (),
                 total_steps: int | None = None, **kwargs) -> None:
        super().__init__(model, optimizer, example_input, **kwargs)
        self.schedule_rewind = replayed_rewinds(self.name, schedule_rewinds, total_steps)
