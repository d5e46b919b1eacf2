"""One training step, one evaluation, and Ctrl-C as a flag: the pieces both loops run."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from learndrop.methods import Event, Method

__all__ = ["StopFlag", "evaluate", "train_step"]


def train_step(method: Method, forward: Callable[[torch.Tensor], torch.Tensor],
               optimizer: torch.optim.Optimizer, scheduler, x: torch.Tensor, y: torch.Tensor,
               autocast: Callable, samples: int
               ) -> tuple[torch.Tensor, torch.Tensor, list[Event]]:
    """One optimizer step on ``(x, y)`` (N x C x H x W images, N labels) driven by ``method``.

    ``samples`` is what all processes trained on in this step (N times the world size).
    Returns the mean cross-entropy loss, the N x classes logits and the method's events, with
    no host synchronisation.
    """
    method.before_step()
    with autocast():
        out = forward(x)
        loss = F.cross_entropy(out.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    events = method.step(samples, batch=(x, y))  # the one call site of the driver's step
    scheduler.step()
    return loss, out, events


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             autocast: Callable = contextlib.nullcontext, num_classes: int | None = None,
             device: torch.device | str | None = None) -> dict:
    """Loss and accuracy of ``model`` (in eval mode: all units run) over any iterable of
    ``(x, y)`` batches, moved to ``device`` (default: the model's).

    Returns ``{"loss", "acc", "samples"}`` (mean cross-entropy, fraction correct, count) and,
    with ``num_classes``, ``"correct"`` and ``"count"``: per-class int64 tensors on the CPU.
    """
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    classes = num_classes or 1
    loss = torch.zeros((), device=device)
    correct = torch.zeros(classes, device=device, dtype=torch.long)
    count = torch.zeros(classes, device=device, dtype=torch.long)
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast():
            out = model(x)
        loss += F.cross_entropy(out.float(), y, reduction="sum")
        hit = out.argmax(1) == y
        if num_classes is None:
            correct += hit.sum()
            count += len(y)
        else:
            correct += torch.bincount(y[hit], minlength=classes)
            count += torch.bincount(y, minlength=classes)
    model.train(was_training)
    n = int(count.sum())
    result = {"loss": loss.item() / max(1, n), "acc": int(correct.sum()) / max(1, n),
              "samples": n}
    if num_classes is not None:
        result.update(correct=correct.cpu(), count=count.cpu())
    return result


class StopFlag:
    """Turns the first Ctrl-C into a flag the loop checks after each step (a second one
    interrupts at once)."""

    def __init__(self) -> None:
        self.set = False

    def __enter__(self) -> StopFlag:
        self._old = signal.getsignal(signal.SIGINT)
        with contextlib.suppress(ValueError):  # not the main thread: keep default behaviour
            signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.set:
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGINT, self._old)
