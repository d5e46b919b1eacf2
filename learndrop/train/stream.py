"""Online training: a stream of batches, each used once, with no epochs.

``train_stream(config)`` (``learndrop train --stream``) trains on one pass of a stream: the
dataset's training set in a seeded shuffled order (``stream_order="dataset"``), the same set
with classes arriving a few at a time (``"class-incremental"``), or any Python iterator of
``(x, y)`` batches given through the API. The method checks (scores and drop decisions) every
``steps_per_check`` steps; the model is tested on the held-out set every ``eval_every`` steps.

Learning rate: linear warm-up over ``warmup_steps`` (default: one check interval), then
constant (``stream_schedule="constant"``, the default, since a stream has no known end), or
cosine decay to zero over the stream's length when it is known (``"cosine"``). The scores divide
each unit's change by the summed learning rate, so the drop rule reads learning progress
whatever the size or schedule of the learning rate.

Memory stays bounded however long the stream: the stream is only iterated (never
materialised), metrics are appended to ``metrics.jsonl`` as they are measured and not kept,
and the score history kept per unit is capped (``learndrop.scores.HISTORY_KEEP``). A stream
that ends early (iterator exhausted, ``stream_length`` reached, or Ctrl-C) ends the run
cleanly: final evaluation, ``summary.json``, ``model.pt`` and plots. Streams are not resumable.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from tqdm import tqdm

from learndrop.checkpoint import save_slim
from learndrop.data import DeviceLoader, ImageDataset, load_dataset, make_loaders
from learndrop.distributed import DistContext
from learndrop.machine import machine_name
from learndrop.train import report
from learndrop.train.builder import (
    build_parts,
    default_out,
    pick_device,
    record_start,
    warmup_cosine,
)
from learndrop.train.config import ConfigError, TrainConfig
from learndrop.train.report import Log, MetricsLog, RunningStats
from learndrop.train.rundir import RunDir
from learndrop.train.steps import StopFlag, evaluate, train_step
from learndrop.train.trainer import TrainingDivergedError

__all__ = ["ClassIncrementalStream", "DatasetStream", "make_stream", "train_stream"]

Batch = tuple[torch.Tensor, torch.Tensor]


class DatasetStream:
    """One pass over a dataset's training set in a seeded shuffled order, as batches.

    ``length`` caps the number of batches (default: one pass, the last batch partial when the
    set is not a multiple of the batch size: a stream trains on every sample once).
    Augmentation as in epoch training (natural images only).
    """

    def __init__(self, data: ImageDataset, batch_size: int, device: torch.device | str = "cpu",
                 seed: int = 0, *, augment: bool = True, length: int | None = None) -> None:
        self.loader = DeviceLoader(
            data.train_x, data.train_y, batch_size, train=True, augment=augment and data.natural,
            mean=data.mean, std=data.std, device=device, seed=seed, drop_last=False)
        self.length = len(self.loader) if length is None else min(length, len(self.loader))
        self.stage_starts = [0]

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[Batch]:
        return itertools.islice(iter(self.loader), self.length)


class ClassIncrementalStream:
    """The training set as a stream in which classes arrive ``classes_per_stage`` at a time.

    Stage ``s`` holds classes ``s*K .. s*K+K-1`` (label order); each of its samples appears once,
    in a seeded shuffled order. With ``length``, every stage gets an equal share of the batches
    (so the stage boundaries are evenly spread); otherwise each stage is one full pass over its
    classes, its last batch partial when needed (every sample once). ``stage_starts`` holds
    the step at which each stage begins. Only one stage's images are on the device at a time.
    """

    def __init__(self, data: ImageDataset, batch_size: int, device: torch.device | str = "cpu",
                 seed: int = 0, *, classes_per_stage: int = 2, augment: bool = True,
                 length: int | None = None) -> None:
        if classes_per_stage < 1:
            raise ValueError(f"classes_per_stage must be >= 1, got {classes_per_stage}")
        self.data, self.batch_size, self.device, self.seed = data, batch_size, device, seed
        self.augment = augment and data.natural
        k, c = classes_per_stage, data.num_classes
        self.stages = [list(range(i, min(i + k, c))) for i in range(0, c, k)]
        self._indices = [torch.nonzero(torch.isin(data.train_y, torch.tensor(s))).flatten()
                         for s in self.stages]
        available = [math.ceil(len(ix) / batch_size) for ix in self._indices]
        if length is None:
            self.batches_per_stage = available
        else:
            share, extra = divmod(length, len(self.stages))
            self.batches_per_stage = [min(a, share + (1 if i < extra else 0))
                                      for i, a in enumerate(available)]
        self.stage_starts = [sum(self.batches_per_stage[:i]) for i in range(len(self.stages))]

    def __len__(self) -> int:
        return sum(self.batches_per_stage)

    def __iter__(self) -> Iterator[Batch]:
        for s, (idx, n) in enumerate(zip(self._indices, self.batches_per_stage)):
            loader = DeviceLoader(
                self.data.train_x[idx], self.data.train_y[idx], self.batch_size, train=True,
                augment=self.augment, mean=self.data.mean, std=self.data.std,
                device=self.device, seed=self.seed * 1000 + s, drop_last=False)
            yield from itertools.islice(iter(loader), n)
            del loader  # release this stage's images before the next stage's arrive


def make_stream(config: TrainConfig, data: ImageDataset,
                device: torch.device | str = "cpu") -> DatasetStream | ClassIncrementalStream:
    """The stream that ``config.stream_order`` names, over ``data``'s training set."""
    common = dict(augment=config.augment, length=config.stream_length)
    if config.stream_order == "class-incremental":
        return ClassIncrementalStream(data, config.batch_size, device, config.seed,
                                      classes_per_stage=config.classes_per_stage, **common)
    if config.stream_order == "dataset":
        return DatasetStream(data, config.batch_size, device, config.seed, **common)
    raise ConfigError(f"--stream-order must be dataset or class-incremental, "
                      f"got {config.stream_order!r}")


@dataclass
class _Spec:
    """What the builder needs to know of the data when there is no ImageDataset."""

    num_classes: int
    in_channels: int


def _lr_factor(config: TrainConfig, total: int | None):
    warmup = config.steps_per_check if config.warmup_steps is None else config.warmup_steps
    if config.stream_schedule == "cosine":
        if not total:
            raise ConfigError("--stream-schedule cosine needs a known stream length; pass "
                              "--stream-length N (batches)")
        return warmup_cosine(total, warmup, config.lr_decay_fraction)
    return lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


def train_stream(
    config: TrainConfig,
    batches: Iterable[Batch] | None = None,
    *,
    test_batches: Iterable[Batch] | None = None,
    num_classes: int | None = None,
    log: Log = print,
) -> dict:
    """Train on one pass of a stream; returns the summary (also written to summary.json).

    Args:
        config: the run's options (the ``stream*``, ``steps_per_check``, ``eval_every`` fields).
        batches: any iterable of ``(x, y)`` batches, iterated once; default: the stream that
            ``config.stream_order`` makes of ``config.dataset``. ``config.stream_length`` caps
            it in either case.
        test_batches: a re-iterable of held-out ``(x, y)`` batches (e.g. a list or a
            ``DeviceLoader``); default: ``config.dataset``'s test set (``config.test_subset``).
        num_classes: classes of the task; default: ``config.dataset``'s. When ``batches``,
            ``test_batches`` and ``num_classes`` are all given, no dataset is loaded.
        log: where progress lines go.
    """
    config = dataclasses.replace(config, stream=True)
    config.validate()
    if config.out is None:
        config.out = default_out(config) + "-stream"
    run = RunDir(config.out)
    run.prepare(resume=False, overwrite=config.overwrite)
    ctx = DistContext(0, 1, 0, pick_device(config.device))
    device = ctx.device

    user_stream = batches is not None
    data = None
    if batches is None or test_batches is None or num_classes is None:
        data = load_dataset(config.dataset, config.data_dir, config.image_size,
                            config.subset, config.seed, config.test_subset)
    if batches is None:
        batches = make_stream(config, data, device)
    if test_batches is None:
        _, test_batches = make_loaders(data, config.batch_size, device, config.seed,
                                       augment=False, eval_batch_size=config.eval_batch_size)
    classes = num_classes or data.num_classes
    total = _known_length(batches, config.stream_length)

    stream = iter(batches)
    if config.stream_length is not None:
        stream = itertools.islice(stream, config.stream_length)
    first = next(stream, None)
    if first is None:
        raise ConfigError("the stream is empty: it gave no batch")
    stream = itertools.chain([first], stream)
    x0 = first[0]

    parts = build_parts(config, data or _Spec(classes, x0.shape[1]),
                        (config.batch_size, *x0.shape[1:]), ctx,
                        steps_per_check=config.steps_per_check, total_steps=total,
                        lr_factor=_lr_factor(config, total))
    method = parts.method
    if config.eval_around_drops:
        method.evaluate_now = lambda: evaluate(parts.model, test_batches, parts.autocast,
                                               device=device)
    parts.use_memory_format(test_batches, getattr(batches, "loader", None))
    record_start(config, parts)  # the record says what ran, not what was asked

    run.begin(resume=False, overwrite=config.overwrite)
    run.write_json("config.json", config.record())
    metrics = MetricsLog(run, tensorboard=config.tensorboard)
    source = "user iterator" if user_stream else f"{config.stream_order} order of {data.name}"
    log(f"{config.method} stream: {config.model}, {source}, "
        f"{total if total else 'unknown number of'} batches of {config.batch_size}, "
        f"check every {config.steps_per_check} steps, test every {config.eval_every} steps, "
        f"{len(method.units)} droppable units, on {device}, {parts.precision}")

    stats = RunningStats(device, classes)
    best = final = None
    last_row_step = 0
    shown_evals = 0  # the tests around drops (eval_around_drops) already in a row
    train_time = 0.0
    ended = "exhausted"

    def check_loss(steps: int) -> float:
        mean_loss = stats.mean_loss()  # one host sync
        if not math.isfinite(mean_loss):
            raise TrainingDivergedError(
                f"the training loss became {mean_loss} by stream step {steps}; lower --lr "
                f"(now {config.lr}) or check the data")
        return mean_loss

    def row_now() -> dict:
        nonlocal best, final, last_row_step, shown_evals
        # Every step's loss is checked before the statistics are reset, so that no row, and
        # no summary, comes from a run that diverged between two of the periodic checks.
        check_loss(method.steps)
        test = evaluate(parts.model, test_batches, parts.autocast, num_classes=classes,
                        device=device)
        seen = stats.seen.cpu()
        seen_count = int(test["count"][seen].sum())
        row = report.metrics_row(
            method, stats, parts.optimizer, train_time, test,
            epoch=method.steps / config.steps_per_check,  # = checks so far (for the score plot)
            checks=method.checks, samples=method.ledger.samples_seen)
        row["test_acc_seen"] = (int(test["correct"][seen].sum()) / seen_count
                                if seen_count else None)
        row["classes_seen"] = int(seen.sum())
        if config.eval_around_drops:
            # Those since the last row, by count: a fade settled after the last step has that
            # row's step, and the row of the settled network holds it.
            row["drop_evals"] = method.drop_evals[shown_evals:]
            shown_evals = len(method.drop_evals)
        stats.reset()
        metrics.append(row)
        final = test["acc"]
        best = final if best is None else max(best, final)
        last_row_step = method.steps
        return row

    with StopFlag() as stop:
        bar = tqdm(total=total, desc="stream", disable=config.quiet, leave=False,
                   dynamic_ncols=True)
        # Evaluation is not stream time, nor are the tests around drops.
        watch = method.stopwatch(torch.cuda.synchronize if device.type == "cuda" else None)
        parts.model.train()
        for x, y in stream:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss, out, events = train_step(method, parts.forward, parts.optimizer,
                                           parts.scheduler, x, y, parts.autocast,
                                           samples=len(y))
            stats.add(loss, out, y, events)
            if events:
                report.announce(events, method, log if config.quiet else tqdm.write, per="step")
            if method.drop_evals and method.drop_evals[-1]["step"] == method.steps:
                report.announce_drop_evals(method.drop_evals[-1:],
                                           log if config.quiet else tqdm.write)
            parts.forward.refresh()
            steps = method.steps
            if steps % 25 == 0:
                mean_loss = check_loss(steps)  # one host sync per 25 steps
                bar.set_postfix(loss=f"{mean_loss:.3f}",
                                units=f"{len(method.live_units)}/{len(method.units)}")
            bar.update(1)
            if steps % config.eval_every == 0 or stop.set:
                train_time += watch.wall()
                row = row_now()
                if config.quiet:
                    log(_row_line(row, method))
                watch.restart()
            if stop.set:
                ended = "interrupted"
                break
        train_time += watch.wall()
        bar.close()
    if method.steps == 0:
        raise ConfigError("the stream gave no batch")
    # A stream does not resume: what the method has in flight (a unit fading out of a
    # stream shorter than announced) is settled before the final evaluation.
    version = method.structure_version
    measured = len(method.drop_evals)
    settled = method.finish()
    if settled:
        report.announce(settled, method, log, per="step")
        stats.events += settled
    report.announce_drop_evals(method.drop_evals[measured:], log)
    # Evaluated again if the stream ended between two evaluations or the network changed (a
    # fade undone changes it without an event).
    if last_row_step != method.steps or method.structure_version != version:
        log(_row_line(row_now(), method))
    log(f"stream {ended} after {method.steps} steps ({method.ledger.samples_seen} samples), "
        f"{train_time:.1f}s")

    summary = report.summary(
        config, data.name if data is not None else "user stream", method, train_time, device,
        final, best,
        stream_order="user" if user_stream else config.stream_order,
        stream_end=ended,  # "exhausted" (or length reached) or "interrupted"
        stream_batches_expected=total, steps=method.steps, checks=method.checks,
        steps_per_check=config.steps_per_check, eval_every=config.eval_every)
    summary.update(parts.precision.describe())
    summary["machine"] = machine_name(device)  # a stream trains in one process
    if config.compile:
        torch.compiler.reset()  # free dynamo's caches of this model
    save_slim(run.file("model.pt"), parts.model.to("cpu"), architecture=config.model,
              num_classes=classes, in_channels=x0.shape[1])
    run.write_json("summary.json", summary)
    if config.plots:
        report.plot(run, summary)
    metrics.close()
    return summary


def _known_length(batches: Iterable[Batch], cap: int | None) -> int | None:
    try:
        n = len(batches)  # type: ignore[arg-type]
    except TypeError:
        n = None
    if n is None:
        return cap
    return n if cap is None else min(n, cap)


def _row_line(row: dict, method) -> str:
    return (f"step {row['step']}: loss {row['train_loss']:.4f}, test acc {row['test_acc']:.4f}, "
            f"units {row['units_live']}/{len(method.units)}{report.fading_note(row)}, "
            f"fwd FLOPs per step "
            f"{100 * (1 - row['fwd_flops_per_sample'] / row['fwd_flops_per_sample_full']):.1f}% "
            f"below full, {row['time_s']:.1f}s")
