"""What a run reports, the same way for the epoch trainer and the stream loop: the running
training statistics, metrics rows (``metrics.jsonl``, and TensorBoard with ``--tensorboard``),
the lines announcing drops, the summary and the plots."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import torch

from learndrop.methods import Event, Method
from learndrop.train.config import TrainConfig
from learndrop.train.rundir import RunDir

__all__ = ["MetricsLog", "RunningStats", "announce", "metrics_row", "plot", "read_rows",
           "summary"]

Log = Callable[[str], None]
METRICS = "metrics.jsonl"


class RunningStats:
    """Training loss and accuracy since the last row, kept as device tensors (no host sync per
    step); ``classes`` also tracks which classes were seen (class-incremental streams)."""

    def __init__(self, device: torch.device, classes: int | None = None) -> None:
        self.loss = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.samples = 0
        self.events: list[Event] = []
        self.seen = (torch.zeros(classes, dtype=torch.bool, device=device)
                     if classes is not None else None)

    def add(self, loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor,
            events: list[Event]) -> None:
        """Add one step: its mean loss, N x classes logits, N labels and events."""
        self.loss += loss.detach() * len(y)
        self.correct += (out.detach().argmax(1) == y).sum()
        self.samples += len(y)
        self.events += events
        if self.seen is not None:
            self.seen |= torch.bincount(y, minlength=len(self.seen)).bool()

    def mean_loss(self) -> float:
        """The mean training loss so far (one host sync)."""
        return self.loss.item() / max(1, self.samples)

    def state_dict(self) -> dict:
        """The sums so far, for a checkpoint taken mid-row (tensors and plain values only, so
        ``torch.load(weights_only=True)`` reads it back)."""
        return {"loss": self.loss.detach().cpu(), "correct": self.correct.detach().cpu(),
                "samples": self.samples, "events": [e.to_dict() for e in self.events],
                "seen": None if self.seen is None else self.seen.cpu()}

    def load_state_dict(self, state: dict) -> None:
        """Continue the sums of :meth:`state_dict` (a run resumed mid-row reports the whole
        row, not only the steps after the resume)."""
        self.loss.copy_(state["loss"])
        self.correct.copy_(state["correct"])
        self.samples = int(state["samples"])
        self.events = [Event(**e) for e in state["events"]]
        if self.seen is not None and state.get("seen") is not None:
            self.seen.copy_(state["seen"])

    def reset(self) -> None:
        """Start the next row's statistics (the classes seen are kept)."""
        self.loss.zero_()
        self.correct.zero_()
        self.samples = 0
        self.events = []


def metrics_row(method: Method, stats: RunningStats, optimizer: torch.optim.Optimizer,
                train_time: float, test: dict, **extra: object) -> dict:
    """One metrics row: step, time, learning rate, training and test loss and accuracy, the
    units dropped since the last row and the method's own metrics (:meth:`Method.metrics`);
    ``extra`` holds the loop's own fields (``epoch``, ``checks`` ...)."""
    return {
        **extra,
        "step": method.steps,
        "time_s": round(train_time, 3),
        "lr": optimizer.param_groups[0]["lr"],
        "train_loss": stats.loss.item() / max(1, stats.samples),
        "train_acc": stats.correct.item() / max(1, stats.samples),
        "test_loss": test["loss"],
        "test_acc": test["acc"],
        "dropped": [e.unit for e in stats.events],
        **method.metrics(),
    }


class MetricsLog:
    """``metrics.jsonl`` (one JSON row per line, appended as rows come) and, with
    ``tensorboard``, the same rows as TensorBoard scalars in ``RUN_DIR/tensorboard``.

    Args:
        run: the run directory.
        rows: the rows of an earlier attempt to keep (a resumed run's checkpoint); the file is
            rewritten with them first, so rows written after that checkpoint disappear. Without
            rows there is no file until the first row.
        tensorboard: also write TensorBoard scalars.
        resume_step: when resuming, the step the run continues from (TensorBoard points of the
            earlier attempt at or after it are discarded).
    """

    def __init__(self, run: RunDir, *, rows: list[dict] | None = None, tensorboard: bool = False,
                 resume_step: int | None = None) -> None:
        self.run = run
        if rows:
            run.write_metrics(rows)
        else:  # the file appears with the first row (an earlier attempt's rows are stale)
            run.file(METRICS).unlink(missing_ok=True)
        self.tensorboard = None
        if tensorboard:
            from learndrop.train.tensorboard import TensorBoardLog

            self.tensorboard = TensorBoardLog(run.file("tensorboard"), resume_step=resume_step)

    def append(self, row: dict) -> None:
        self.run.append_metrics(row)
        if self.tensorboard is not None:
            self.tensorboard.write(row)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None


def announce(events: list[Event], method: Method, log: Log, *, per: str = "epoch") -> None:
    """Log the drops/freezes of ``events`` and the network's state after them; ``per`` says
    whether events are located by ``epoch`` or by ``step``."""
    cost = method.ledger.cost(method.flops_key())
    below = 100 * (1 - cost.fwd / method.ledger.full.fwd)
    for e in events:
        scores = ""
        if e.change_score is not None:
            scores = f" (change {e.change_score:.3g}, continuation {e.continuation_score:.3g})"
        if e.drop_cost is not None:
            scores += f", drop cost {e.drop_cost:+.3f} nats"
        where = f"epoch {e.epoch:g}" if per == "epoch" and e.epoch is not None else f"step {e.step}"
        log(f"{where}: {e.action} {e.unit}{scores}")
    log(f"  {len(method.live_units)}/{len(method.units)} units live; forward FLOPs per step "
        f"now {below:.1f}% below full, "
        f"{100 * method.ledger.totals()['fwd_flops_reduction']:.1f}% saved so far")


def announce_drop_evals(records: list[dict], log: Log) -> None:
    """Log the test accuracy just before and right after each drop of ``records``
    (:attr:`Method.drop_evals`)."""
    for r in records:
        span = ("the same step" if r["step"] == r["step_before"]
                else f"steps {r['step_before']}-{r['step']}")
        units = ", ".join(r["units"]) or "no unit (the change was undone)"
        change = 100 * (r["test_acc_after"] - r["test_acc_before"])
        refreshed = r.get("test_acc_before_recalibrated")
        with_refresh = alone = ""
        if refreshed is not None:
            with_refresh = f" ({100 * refreshed:.2f}% with BatchNorm recalibrated)"
            alone = f"; the drop alone {100 * (r['test_acc_after'] - refreshed):+.2f}"
        measured = ""
        if r.get("batch_loss_before") is not None and r.get("batch_loss_after") is not None:
            rise = r["batch_loss_after"] - r["batch_loss_before"]
            summed = r.get("drop_cost_sum")
            measured = (f"; on the recent training batches {rise:+.3f} nats" + (
                f" (the units' drop costs summed {summed:+.3f})" if summed is not None else ""))
        log(f"  test acc around the drop of {units} ({span}): "
            f"{100 * r['test_acc_before']:.2f}% before{with_refresh}, "
            f"{100 * r['test_acc_after']:.2f}% after ({change:+.2f} points{alone}){measured}")


def fading_note(row: dict) -> str:
    """`` (fading out: a, b)`` for a metrics row with units on their way out (``fade_steps``),
    else empty."""
    fading = row.get("fading")
    return f" (fading out: {', '.join(fading)})" if fading else ""


_SUMMARY_KEYS = (
    "samples_seen", "fwd_flops", "fwd_flops_full", "fwd_flops_reduction", "extra_fwd_flops",
    "bwd_flops",
    "bwd_flops_full", "bwd_flops_reduction", "params_initial", "params_final", "units_total",
    "units_dropped", "units_frozen", "check_time_s", "drops", "schedule_rewinds", "drop_evals",
    "eval_time_s",
)


def summary(config: TrainConfig, dataset: str, method: Method, train_time: float,
            device: torch.device, final_acc: float | None, best_acc: float | None,
            **extra: object) -> dict:
    """The run's ``summary.json``: what ran, its accuracy, time and the method's totals
    (:meth:`Method.summary`); ``extra`` holds the loop's own fields."""
    info = method.summary()
    head = {
        "method": config.method,
        "model": config.model,
        "dataset": dataset,
        **extra,
        "seed": config.seed,
        "device": str(device),
        "samples_seen": info["samples_seen"],
        "train_time_s": round(train_time, 3),
        "final_test_acc": final_acc,
        "best_test_acc": best_acc,
    }
    # Only methods that move the schedule have the first; only runs that test around drops
    # (and dropped) the others.
    optional = {"schedule_rewinds", "drop_evals", "eval_time_s"}
    return {**head, **{k: info[k] for k in _SUMMARY_KEYS
                       if k not in head and (k in info or k not in optional)}}


def read_rows(path: Path, max_rows: int = 2000) -> list[dict]:
    """Rows of a metrics.jsonl, evenly thinned to at most ``max_rows`` (the last one kept)."""
    with Path(path).open() as f:
        n = sum(1 for _ in f)
    stride = max(1, math.ceil(n / max_rows))
    rows = []
    with Path(path).open() as f:
        for i, line in enumerate(f):
            if i % stride == 0 or i == n - 1:
                rows.append(json.loads(line))
    return rows


def plot(run: RunDir, summary: dict) -> list[Path]:
    """Draw the run's plots from its ``metrics.jsonl`` (matplotlib is imported only here)."""
    from learndrop.train.plots import plot_run

    return plot_run(read_rows(run.file(METRICS)), summary, run.path)
