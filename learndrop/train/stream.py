"""Online training: a stream of batches, each used once, with no epochs.

``train_stream(config)`` (``learndrop train --stream``) trains on one pass of a stream: the
dataset's training set in a seeded shuffled order (``stream_order="dataset"``), the same set
with classes arriving a few at a time (``"class-incremental"``), or any Python iterator of
``(x, y)`` batches given through the API. The method checks (scores and drop decisions) every
``check_every`` steps; the model is tested on the held-out set every ``eval_every`` steps.

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
import json
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from learndrop.checkpoint import save_slim
from learndrop.data import DeviceLoader, ImageDataset, load_dataset, make_loaders
from learndrop.methods import Event, Method, create_method
from learndrop.precision import resolve_precision
from learndrop.train.config import ConfigError, TrainConfig
from learndrop.train.rundir import RunDir
from learndrop.train.trainer import (
    StopFlag,
    TrainingDivergedError,
    apply_memory_format,
    build_model,
    default_out,
    method_metrics,
    method_options,
    pick_device,
    train_step,
    warmup_cosine,
)

__all__ = ["ClassIncrementalStream", "DatasetStream", "make_stream", "train_stream"]

Batch = tuple[torch.Tensor, torch.Tensor]


class DatasetStream:
    """One pass over a dataset's training set in a seeded shuffled order, as batches.

    ``length`` caps the number of batches (default: all full batches of one pass); the last
    partial batch is dropped. Augmentation as in epoch training (natural images only).
    """

    def __init__(self, data: ImageDataset, batch_size: int, device: torch.device | str = "cpu",
                 seed: int = 0, *, augment: bool = True, length: int | None = None) -> None:
        self.loader = DeviceLoader(
            data.train_x, data.train_y, batch_size, train=True, augment=augment and data.natural,
            mean=data.mean, std=data.std, device=device, seed=seed, drop_last=True)
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
    classes (even for class-balanced data). ``stage_starts`` holds the step at which each stage
    begins. Only one stage's images are on the device at a time.
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
        available = [len(ix) // batch_size for ix in self._indices]
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
                device=self.device, seed=self.seed * 1000 + s, drop_last=True)
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
    """What build_model needs to know of the data when there is no ImageDataset."""

    num_classes: int
    in_channels: int


def _lr_factor(config: TrainConfig, total: int | None):
    warmup = config.check_every if config.warmup_steps is None else config.warmup_steps
    if config.stream_schedule == "cosine":
        if not total:
            raise ConfigError("--stream-schedule cosine needs a known stream length; pass "
                              "--stream-length N (batches)")
        return warmup_cosine(total, warmup)
    return lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


@torch.no_grad()
def _evaluate(model: nn.Module, batches: Iterable[Batch], num_classes: int, device,
              autocast) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """Test loss, accuracy and per-class (correct, count) on the held-out batches."""
    was_training = model.training
    model.eval()
    loss = torch.zeros((), device=device)
    correct = torch.zeros(num_classes, device=device, dtype=torch.long)
    count = torch.zeros(num_classes, device=device, dtype=torch.long)
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast():
            out = model(x)
        loss += F.cross_entropy(out.float(), y, reduction="sum")
        correct += torch.bincount(y[out.argmax(1) == y], minlength=num_classes)
        count += torch.bincount(y, minlength=num_classes)
    model.train(was_training)
    n = max(1, int(count.sum()))
    return loss.item() / n, int(correct.sum()) / n, correct.cpu(), count.cpu()


def train_stream(
    config: TrainConfig,
    batches: Iterable[Batch] | None = None,
    *,
    test_batches: Iterable[Batch] | None = None,
    num_classes: int | None = None,
    log=print,
) -> dict:
    """Train on one pass of a stream; returns the summary (also written to summary.json).

    Args:
        config: the run's options (the ``stream*``, ``check_every``, ``eval_every`` fields).
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
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    cuda = device.type == "cuda"

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
    stage_starts = list(getattr(batches, "stage_starts", [0]))

    stream = iter(batches)
    if config.stream_length is not None:
        stream = itertools.islice(stream, config.stream_length)
    first = next(stream, None)
    if first is None:
        raise ConfigError("the stream is empty: it gave no batch")
    stream = itertools.chain([first], stream)
    x0 = first[0]

    precision = resolve_precision(config.precision, device)
    # Batches a user's iterator gives in NCHW are converted by the first convolution.
    model = apply_memory_format(build_model(config, data or _Spec(classes, x0.shape[1]), device),
                                precision, test_batches, batches)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    example = torch.zeros(config.batch_size, *x0.shape[1:], device=device)
    if config.method == "freezeout" and not total:
        raise ConfigError("--method freezeout needs a known stream length; pass --stream-length")
    method = create_method(config.method, model, optimizer, example, unit_names=config.units,
                           steps_per_check=config.check_every,
                           **method_options(config, total or 0))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(config, total))

    autocast = precision.autocast
    run.write_json("config.json", config.to_dict())
    metrics_path = run.file("metrics.jsonl")
    metrics_path.write_text("")
    source = "user iterator" if user_stream else f"{config.stream_order} order of {data.name}"
    log(f"{config.method} stream: {config.model}, {source}, "
        f"{total if total else 'unknown number of'} batches of {config.batch_size}, "
        f"check every {config.check_every} steps, test every {config.eval_every} steps, "
        f"{len(method.units)} droppable units, on {device}, {precision.name} "
        f"{precision.memory_format}")

    forward = torch.compile(model) if config.compile else model
    compiled_version = method.structure_version
    report = _Report(method, optimizer, classes, device, config.check_every, stage_starts)
    train_time = 0.0
    ended = "exhausted"
    with StopFlag() as stop:
        bar = tqdm(total=total, desc="stream", disable=config.quiet, leave=False,
                   dynamic_ncols=True)
        started = time.perf_counter()
        model.train()
        for x, y in stream:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss, out, events = train_step(method, forward, optimizer, scheduler, x, y,
                                           autocast, samples=len(y))
            report.add(loss, out, y, events)
            if events:
                _announce(events, method, log if config.quiet else tqdm.write)
                if config.compile and method.structure_version != compiled_version:
                    forward = torch.compile(model)  # rebuilt once per structural change
                    compiled_version = method.structure_version
            steps = method.steps
            if steps % 25 == 0:
                mean_loss = report.mean_loss()  # one host sync per 25 steps
                if not math.isfinite(mean_loss):
                    raise TrainingDivergedError(
                        f"the training loss became {mean_loss} at stream step {steps}; lower "
                        f"--lr (now {config.lr}) or check the data")
                bar.set_postfix(loss=f"{mean_loss:.3f}",
                                units=f"{len(method.live_units)}/{len(method.units)}")
            bar.update(1)
            if steps % config.eval_every == 0 or stop.set:
                if cuda:
                    torch.cuda.synchronize()
                train_time += time.perf_counter() - started  # evaluation is not stream time
                row = report.row(train_time, _evaluate(model, test_batches, classes, device,
                                                       autocast))
                _append(metrics_path, row)
                if config.quiet:
                    log(_row_line(row, method))
                started = time.perf_counter()
            if stop.set:
                ended = "interrupted"
                break
        if cuda:
            torch.cuda.synchronize()
        train_time += time.perf_counter() - started
        bar.close()
    if method.steps == 0:
        raise ConfigError("the stream gave no batch")
    if report.last_row_step != method.steps:  # the stream ended between two evaluations
        row = report.row(train_time, _evaluate(model, test_batches, classes, device, autocast))
        _append(metrics_path, row)
        log(_row_line(row, method))
    log(f"stream {ended} after {method.steps} steps ({method.ledger.samples_seen} samples), "
        f"{train_time:.1f}s")

    summary = _summary(config, data, method, report, train_time, device, ended, total,
                       user_stream)
    summary.update(precision.describe())
    save_slim(run.file("model.pt"), model.to("cpu"), architecture=config.model,
              num_classes=classes, in_channels=x0.shape[1])
    run.write_json("summary.json", summary)
    if config.plots:
        plot_stream(metrics_path, summary, run.path)
    return summary


def _announce(events: list[Event], method: Method, log) -> None:
    cost = method.ledger.cost(method.flops_key())
    for e in events:
        scores = ""
        if e.change_score is not None:
            scores = f" (change {e.change_score:.3g}, continuation {e.continuation_score:.3g})"
        if e.drop_cost is not None:
            scores += f", drop cost {e.drop_cost:+.3f} nats"
        log(f"step {e.step}: {e.action} {e.unit}{scores}; {len(method.live_units)}/"
            f"{len(method.units)} units live, forward FLOPs per step now "
            f"{100 * (1 - cost.fwd / method.ledger.full.fwd):.1f}% below full")


def _known_length(batches: Iterable[Batch], cap: int | None) -> int | None:
    try:
        n = len(batches)  # type: ignore[arg-type]
    except TypeError:
        n = None
    if n is None:
        return cap
    return n if cap is None else min(n, cap)


class _Report:
    """Running training statistics between two metrics rows (device tensors, no host syncs)."""

    def __init__(self, method: Method, optimizer, classes: int, device, check_every: int,
                 stage_starts: list[int]) -> None:
        self.method, self.optimizer, self.check_every = method, optimizer, check_every
        self.stage_starts = stage_starts
        self.seen = torch.zeros(classes, dtype=torch.bool, device=device)
        self.loss = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.samples = 0
        self.events: list[Event] = []
        self.last_row_step = 0
        self.final_acc: float | None = None
        self.best_acc: float | None = None
        self.rows = 0

    def add(self, loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor,
            events: list[Event]) -> None:
        self.loss += loss.detach() * len(y)
        self.correct += (out.detach().argmax(1) == y).sum()
        self.samples += len(y)
        self.seen |= torch.bincount(y, minlength=len(self.seen)).bool()
        self.events += events

    def mean_loss(self) -> float:
        return self.loss.item() / max(1, self.samples)

    def row(self, train_time: float, evaluation) -> dict:
        test_loss, test_acc, correct, count = evaluation
        method = self.method
        seen = self.seen.cpu()
        seen_count = int(count[seen].sum())
        row = {
            "step": method.steps,
            "epoch": method.steps / self.check_every,  # = checks so far (for the score plot)
            "checks": method.checks,
            "samples": method.ledger.samples_seen,
            "time_s": round(train_time, 3),
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": self.loss.item() / max(1, self.samples),
            "train_acc": self.correct.item() / max(1, self.samples),
            "test_loss": test_loss,
            "test_acc": test_acc,
            "test_acc_seen": int(correct[seen].sum()) / seen_count if seen_count else None,
            "classes_seen": int(seen.sum()),
            "dropped": [e.unit for e in self.events],
            **method_metrics(method),
        }
        self.loss.zero_()
        self.correct.zero_()
        self.samples = 0
        self.events = []
        self.last_row_step = method.steps
        self.final_acc = test_acc
        self.best_acc = test_acc if self.best_acc is None else max(self.best_acc, test_acc)
        self.rows += 1
        return row


def _append(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def _row_line(row: dict, method: Method) -> str:
    return (f"step {row['step']}: loss {row['train_loss']:.4f}, test acc {row['test_acc']:.4f}, "
            f"units {row['units_live']}/{len(method.units)}, fwd FLOPs per step "
            f"{100 * (1 - row['fwd_flops_per_sample'] / row['fwd_flops_per_sample_full']):.1f}% "
            f"below full, {row['time_s']:.1f}s")


def _summary(config, data, method, report, train_time, device, ended, total,
             user_stream) -> dict:
    info = method.summary()
    return {
        "method": config.method,
        "model": config.model,
        "dataset": data.name if data is not None else "user stream",
        "stream_order": "user" if user_stream else config.stream_order,
        "stream_end": ended,  # "exhausted" (or length reached) or "interrupted"
        "stream_batches_expected": total,
        "steps": method.steps,
        "checks": method.checks,
        "check_every": config.check_every,
        "eval_every": config.eval_every,
        "seed": config.seed,
        "device": str(device),
        "samples_seen": info["samples_seen"],
        "train_time_s": round(train_time, 3),
        "final_test_acc": report.final_acc,
        "best_test_acc": report.best_acc,
        **{k: info[k] for k in (
            "fwd_flops", "fwd_flops_full", "fwd_flops_reduction",
            "bwd_flops", "bwd_flops_full", "bwd_flops_reduction",
            "params_initial", "params_final", "units_total", "units_dropped", "units_frozen",
        )},
        "drops": info["drops"],
    }


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


def plot_stream(metrics_path: Path, summary: dict, out: Path) -> list[Path]:
    """The epoch trainer's plots, from a stream's metrics (thinned for long streams)."""
    from learndrop.train import plots

    rows = read_rows(metrics_path)
    if not rows:
        return []
    paths = [plots._accuracy_and_loss(rows, out), plots._flops_per_step(rows, out)]
    few = rows[:: max(1, math.ceil(len(rows) / 40))]  # the heat map needs few columns
    heat = plots._score_heatmap(few, summary, out)
    return paths + ([heat] if heat is not None else [])
