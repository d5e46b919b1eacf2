"""The epoch trainer, read top to bottom: build, resume, then for each epoch train one epoch,
evaluate, save.

``train(config)`` is the simple entry point. :class:`Training` is the same run, drivable one
epoch at a time from another loop (e.g. several trainings in lockstep in one process)::

    training = Training(config)
    for row in training.epochs():      # each finished epoch's metrics row
        ...
    summary = training.finish()

The run directory gets ``config.json``, ``metrics.jsonl``, ``summary.json``, ``last.ckpt``,
``model.pt`` and plots (see the README).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

import torch
from tqdm import tqdm

from learndrop import distributed
from learndrop.checkpoint import safe_load, save_slim
from learndrop.data import load_dataset, make_loaders
from learndrop.distributed import DistContext
from learndrop.machine import machine_name
from learndrop.methods import Stopwatch
from learndrop.train import report
from learndrop.train.builder import (
    build_parts,
    decay_start,
    default_out,
    pick_device,
    record_start,
    warmup_cosine,
)
from learndrop.train.config import RESOLVED_OPTIONS, ConfigError, TrainConfig, same_value
from learndrop.train.report import Log, MetricsLog, RunningStats
from learndrop.train.rundir import RunDir
from learndrop.train.steps import StopFlag, evaluate, train_step

__all__ = ["CHECKPOINT", "Training", "TrainingDivergedError", "TrainingInterrupted", "evaluate",
           "resume_config", "train"]

CHECKPOINT = "last.ckpt"

#: Fields that only change where a run executes and how it reports: a resumed run takes them
#: from the new command; every other field is the experiment's and must not change.
REPORTING_FIELDS = frozenset({"out", "resume", "quiet", "device", "precision", "plots",
                              "compile", "tensorboard", "dist_timeout", "eval_batch_size",
                              "eval_around_drops"})


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C: a checkpoint was saved; resume with ``--resume``."""


def train(config: TrainConfig, log: Log = print, *, given: Collection[str] | None = None) -> dict:
    """Train according to ``config``; returns the summary (also written to summary.json).

    ``given``: the fields the user set (for ``--resume``, see :func:`resume_config`); default:
    those that differ from :class:`TrainConfig`'s defaults. Under torchrun, every process calls
    this; see :mod:`learndrop.distributed`.
    """
    try:
        training = Training(config, log, given=given)
        for _ in training.epochs():
            pass
        return training.finish()
    except (RuntimeError, torch.distributed.DistError) as err:
        # A collective inside DDP's backward that lost its peers: one line that says why.
        explained = distributed.explain(err)
        if explained is err:
            raise
        raise explained from err


def _checkpoint_path(resume: str) -> Path:
    path = Path(resume)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise ConfigError(f"--resume {resume}: no checkpoint ({CHECKPOINT}) there")
    return path


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def resume_config(asked: TrainConfig, saved: dict, given: Collection[str] | None,
                  resume_from: Path) -> TrainConfig:
    """The configuration a resumed run continues with: the checkpoint's experiment, with the
    reporting fields (:data:`REPORTING_FIELDS`) and a longer ``epochs`` taken from ``asked``.

    ``given`` are the fields the user set; None: those of ``asked`` that differ from the
    defaults (an API caller's ``TrainConfig(resume=..., epochs=...)``).

    Raises:
        ConfigError: a given field would change the experiment (``--lr``, ``--model``,
            ``--method``, a method option ...), or ``--overwrite`` with ``--resume``.
    """
    old = TrainConfig.from_dict(saved)
    if given is None:
        default = TrainConfig()
        given = {f.name for f in dataclasses.fields(TrainConfig)
                 if getattr(asked, f.name) != getattr(default, f.name)}
    if "overwrite" in given and asked.overwrite:
        raise ConfigError("--overwrite and --resume contradict each other: --resume continues "
                          "the run, --overwrite replaces it; pass one")
    for name in sorted(set(given) - REPORTING_FIELDS - {"epochs", "overwrite"}):
        new, was = getattr(asked, name), getattr(old, name)
        if name == "method_options":  # the options given, against the values the run used
            try:
                was = old.resolved_method_options()
            except (TypeError, ValueError) as err:
                raise ConfigError(f"--resume {resume_from.parent}: this version cannot read "
                                  f"the run's method options ({err}); start a new run") from err
            keys = sorted(k for k in new if not same_value(new[k], was.get(k)))
            what = ", ".join(f"{_flag(k)} {new[k]!r} (the run has {was.get(k)!r})"
                             for k in keys)
        else:
            what = f"{_flag(name)} {new!r} (the run has {was!r})" if new != was else ""
        if what:
            raise ConfigError(
                f"--resume {resume_from.parent} continues that experiment with its own settings, "
                f"so it cannot take {what}; start a new run (another --out) to change it")
    values = old.to_dict()
    for name in REPORTING_FIELDS | ({"epochs"} if "epochs" in given else set()):
        if name in ("precision", "device") and name not in given:
            continue  # the run goes on as it ran (a default must not switch a bf16 run to fp32)
        values[name] = getattr(asked, name)
    values["resume"] = str(resume_from)
    values["out"] = asked.out or str(resume_from.parent)
    return TrainConfig.from_dict(values)


def lr_schedule(total_steps: int, warmup_steps: int, extensions: list[tuple[int, float]],
                decay_fraction: float = 1.0) -> Callable[[float], float]:
    """The learning-rate factor of an epoch run: :func:`warmup_cosine`, and after each
    extension ``(step, factor)`` (``--resume --epochs`` with more epochs, once the decay began) a
    cosine from that step's factor down to zero at the new end. The last extension rules from
    its step on; it is continuous in value (a kink, not a jump)."""
    base = warmup_cosine(total_steps, warmup_steps, decay_fraction)
    if not extensions:
        return base
    start, f0 = extensions[-1]

    def factor(step: int) -> float:
        if step < start:
            return base(step)  # already taken (read again only by a rewind's window)
        progress = (step - start) / max(1, total_steps - start)
        return f0 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


class Training:
    """One epoch-based training run, built and (when resuming) restored on construction.

    Iterate :meth:`epochs` to train (each item is a finished epoch's metrics row, after its
    checkpoint), then call :meth:`finish` for the summary, ``model.pt`` and plots. Several
    trainings can run in lockstep in one process (one epoch of each in turn); they then share
    the process's random generator (each seeds it before building its model) and, with
    ``compile``, dynamo's caches, which each rebuild after a drop resets.

    Args:
        config: the run's options.
        log: where progress lines go.
        given: the fields the user set (see :func:`resume_config`).
        stop: a shared Ctrl-C flag (several trainings in one loop); default: each
            :meth:`epochs` installs its own for as long as it runs.
    """

    def __init__(self, config: TrainConfig, log: Log = print, *,
                 given: Collection[str] | None = None, stop: StopFlag | None = None) -> None:
        ckpt = None
        if config.resume:
            resume_from = _checkpoint_path(config.resume)
            ckpt = safe_load(resume_from)
            if not (isinstance(ckpt, dict) and {"config", "method", "model"} <= set(ckpt)):
                raise ConfigError(
                    f"--resume {config.resume}: {resume_from} is not a learndrop checkpoint "
                    "(last.ckpt); to start a new run from weights, pass them with --weights")
            saved = ckpt["config"]
            policy = ckpt["method"].get("policy") if isinstance(ckpt["method"], dict) else None
            if RESOLVED_OPTIONS not in saved and isinstance(policy, dict):
                # a checkpoint from before the record: Learn&Drop's state holds its options
                saved = {**saved, RESOLVED_OPTIONS: policy}
            config = resume_config(config, saved, given, resume_from)
        else:
            config = dataclasses.replace(config)  # what the run resolves is not the caller's
        config.validate()
        if config.out is None:
            config.out = default_out(config)
        self.config, self.stop = config, stop
        self.run = run = RunDir(config.out)
        if ckpt is not None and (run.file("summary.json").is_file()
                                 and ckpt["epoch"] >= config.epochs):
            raise ConfigError(f"{run.path} already finished its {ckpt['epoch']} epochs; pass "
                              "--epochs N to train it longer, or start a new run")
        # Under torchrun: one process per rank, each on its shard of every epoch; --batch-size
        # stays the global batch, so steps, schedule and checks match a single-process run.
        self.ctx = ctx = distributed.init_from_env(pick_device(config.device),
                                                   config.dist_timeout)
        if config.batch_size % ctx.world_size:
            raise ConfigError(f"--batch-size {config.batch_size} (the global batch) must be a "
                              f"multiple of the {ctx.world_size} processes")
        # Only rank 0 touches the run directory; its refusal (an existing run) stops every rank.
        distributed.on_main_first(
            ctx, lambda: run.prepare(resume=ckpt is not None, overwrite=config.overwrite))
        self.log = log if ctx.is_main else _silent
        self.quiet = config.quiet or not ctx.is_main  # no progress bars on other ranks

        # Denormal floats (tiny gradients late in training) make CPU kernels crawl; flush them.
        torch.set_flush_denormal(True)
        if ctx.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.data = data = load_dataset(config.dataset, config.data_dir, config.image_size,
                                        config.subset, config.seed, config.test_subset)
        self.train_loader, self.test_loader = make_loaders(
            data, config.batch_size // ctx.world_size, ctx.device, config.seed,
            augment=config.augment, eval_batch_size=config.eval_batch_size, rank=ctx.rank,
            world_size=ctx.world_size)
        if len(self.train_loader) == 0:
            raise ConfigError("the training set is smaller than one batch; lower --batch-size")
        self.steps_per_epoch = steps = len(self.train_loader)
        self.total_steps = steps * config.epochs
        self.lr_extensions: list[tuple[int, float]] = [
            tuple(e) for e in (ckpt or {}).get("lr_extensions", [])]
        if ckpt is not None:
            self._extend_schedule(ckpt)
        warmup = round(config.warmup_epochs * steps)
        self.parts = parts = build_parts(
            config, data, (config.batch_size, data.in_channels, data.image_size, data.image_size),
            ctx, steps_per_check=steps, total_steps=self.total_steps,
            lr_factor=lr_schedule(self.total_steps, warmup, self.lr_extensions,
                                  config.lr_decay_fraction))
        parts.use_memory_format(self.train_loader, self.test_loader)
        record_start(config, parts)  # the record says what ran, not what was asked
        self.method = method = parts.method
        if config.eval_around_drops:
            method.evaluate_now = lambda: _evaluate_all_ranks(parts, self.test_loader, ctx)

        self.rows: list[dict] = []
        self.epoch, self.batch, self.train_time = 0, 0, 0.0
        # The unfinished epoch's running sums (RunningStats.state_dict) while stopped mid-epoch;
        # checkpoints before them lack it, and their resumed epoch reports its last steps only.
        self.epoch_stats: dict | None = None
        # Process CPU time of the training steps: on a shared machine it varies far less with
        # the load than wall-clock (the bench reports both).
        self.train_cpu = 0.0
        # The machine of every start (a run resumed elsewhere names both: its time mixes them).
        self.machines: list[str] = []
        if ckpt is not None:
            try:
                method.load_state_dict(ckpt["method"])
            except ValueError as err:  # e.g. freezeout's total_steps after --epochs
                raise ConfigError(f"cannot resume {run.path}: {err}; resume it with the options "
                                  "it was started with, or train again with another --out") from err
            parts.model.load_state_dict(ckpt["model"])
            parts.optimizer.load_state_dict(ckpt["optimizer"])  # moves state to the device
            parts.scheduler.load_state_dict(ckpt["scheduler"])
            self.rows = ckpt["metrics"]
            self.epoch, self.batch, self.train_time = ckpt["epoch"], ckpt["batch"], ckpt[
                "train_time"]
            self.train_cpu = ckpt.get("train_cpu", 0.0)
            self.epoch_stats = ckpt.get("epoch_stats")
            self.machines = list(ckpt.get("machines", []))
            self.log(f"resuming {run.path} at epoch {self.epoch + 1}, step {method.steps}")
        here = machine_name(ctx.device) + (f" x {ctx.world_size} processes"
                                           if ctx.distributed else "")
        if not self.machines or self.machines[-1] != here:
            self.machines.append(here)
        self.metrics = None
        if ctx.is_main:
            run.begin(resume=ckpt is not None, overwrite=config.overwrite)
            run.write_json("config.json", config.record())
            self.metrics = MetricsLog(run, rows=self.rows, tensorboard=config.tensorboard,
                                      resume_step=method.steps if ckpt is not None else None)
        self.log(f"{config.method}: {config.model} on {data.name} ({len(data.train_y)} train / "
                 f"{len(data.test_y)} test images, {data.in_channels}x{data.image_size}x"
                 f"{data.image_size}), {len(method.units)} droppable units, {config.epochs} "
                 f"epochs on {ctx.device}"
                 + (f" x {ctx.world_size} processes" if ctx.distributed else "")
                 + f", {parts.precision}")

    def _extend_schedule(self, ckpt: dict) -> None:
        """Apply a longer ``--epochs`` to a resumed run, or refuse it (see :func:`lr_schedule`)."""
        old_epochs = TrainConfig.from_dict(ckpt["config"]).epochs
        new_epochs = self.config.epochs
        if new_epochs == old_epochs:
            return
        done = ckpt["epoch"] + ckpt["batch"] / self.steps_per_epoch
        if new_epochs < old_epochs:
            raise ConfigError(f"--epochs {new_epochs}: a resumed run can only get longer (it "
                              f"was planned for {old_epochs} epochs, {done:g} done)")
        step = ckpt["scheduler"]["last_epoch"]
        warmup = round(self.config.warmup_epochs * self.steps_per_epoch)
        old_factor = lr_schedule(self.steps_per_epoch * old_epochs, warmup, self.lr_extensions,
                                 self.config.lr_decay_fraction)
        factor = old_factor(step)
        if not self.lr_extensions and step <= decay_start(
                self.steps_per_epoch * old_epochs, warmup, self.config.lr_decay_fraction):
            # Still before the decay (the warm-up, or the stable phase of a warmup-stable-decay
            # schedule): the steps taken are the same on the longer run's own schedule.
            self.log(f"extending {self.run.path} from {old_epochs} to {new_epochs} epochs "
                     f"before its learning-rate decay: the schedule is the {new_epochs}-epoch "
                     f"run's own")
            return
        if factor <= 1e-12:
            raise ConfigError(
                f"--epochs {new_epochs}: {self.run.path} ended its learning-rate schedule (it "
                f"decayed to zero at epoch {old_epochs}), so more epochs would not train; start "
                f"a new run with --epochs {new_epochs}")
        if step >= warmup:
            self.lr_extensions.append((step, factor))
        self.log(f"extending {self.run.path} from {old_epochs} to {new_epochs} epochs: the "
                 f"learning rate goes on from {factor:.3g} x --lr by a cosine to zero at epoch "
                 f"{new_epochs}")

    def epochs(self) -> Iterator[dict]:
        """Train the remaining epochs, one per item: each yields that epoch's metrics row,
        after its checkpoint is saved."""
        with contextlib.nullcontext(self.stop) if self.stop else StopFlag() as stop:
            while self.epoch < self.config.epochs:
                row = self._one_epoch(stop)
                self.epoch, self.batch = self.epoch + 1, 0
                self._save_checkpoint()
                self.log(self._epoch_line(row))
                yield row

    def _one_epoch(self, stop: StopFlag) -> dict:
        config, parts, method, ctx = self.config, self.parts, self.method, self.ctx
        epoch, skip = self.epoch, self.batch
        self.train_loader.set_epoch(epoch)
        parts.model.train()
        stats = RunningStats(ctx.device)
        if skip and self.epoch_stats is not None and ctx.is_main:
            stats.load_state_dict(self.epoch_stats)  # all ranks' sums (saved below)
        self.epoch_stats = None
        bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}",
                   disable=self.quiet, leave=False, dynamic_ncols=True)
        bar.update(skip)
        # The tests around drops are neither training time nor CPU time.
        watch = method.stopwatch(torch.cuda.synchronize if ctx.device.type == "cuda" else None)
        for i, (x, y) in enumerate(self.train_loader):
            if i < skip:
                continue  # resumed mid-epoch: same order, same augmentation
            loss, out, events = train_step(method, parts.forward, parts.optimizer,
                                           parts.scheduler, x, y, parts.autocast,
                                           samples=len(y) * ctx.world_size)
            stats.add(loss, out, y, events)
            parts.forward.refresh()
            if (i + 1) % 25 == 0 or i + 1 == self.steps_per_epoch:
                self._check_loss(stats.mean_loss(), f"epoch {epoch + 1}")  # a sync per 25 steps
                bar.set_postfix(loss=f"{stats.mean_loss():.3f}",
                                acc=f"{stats.correct.item() / stats.samples:.3f}",
                                units=f"{len(method.live_units)}/{len(method.units)}",
                                saved=f"{100 * method.ledger.totals()['fwd_flops_reduction']:.0f}%")
            bar.update(1)
            if distributed.any_rank(stop.set, ctx):  # every rank stops at the same step
                self._add_time(watch)
                self.batch = i + 1
                if ctx.distributed:
                    _all_ranks_stats(stats, ctx)  # rank 0 saves, and later resumes, the total
                self.epoch_stats = stats.state_dict()
                self._save_checkpoint()
                bar.close()
                raise TrainingInterrupted(
                    f"interrupted; checkpoint saved, continue with: learndrop train --resume "
                    f"{self.run.path}")
        if epoch + 1 == config.epochs:
            # The run ends here: what the method has in flight is settled before the final
            # evaluation, so that it measures the network model.pt will hold. Learn&Drop starts
            # no fade that could not end by the last step, so it has nothing left here; the
            # call keeps the driver contract (Method.finish) for every method.
            stats.events += method.finish()
        self._add_time(watch)
        bar.close()
        log = self.log if self.quiet else tqdm.write
        if stats.events:
            report.announce(stats.events, method, log)
        first, last = epoch * self.steps_per_epoch, (epoch + 1) * self.steps_per_epoch
        drop_evals = [r for r in method.drop_evals if first < r["step"] <= last]
        report.announce_drop_evals(drop_evals, log)
        if ctx.distributed:
            # Evaluate and save rank 0's BatchNorm statistics.
            distributed.broadcast_buffers(parts.model, ctx)
            _all_ranks_stats(stats, ctx)
        test = _evaluate_all_ranks(parts, self.test_loader, ctx)
        row = report.metrics_row(method, stats, parts.optimizer, self.train_time, test,
                                 epoch=epoch + 1, cpu_s=round(self.train_cpu, 3))
        if config.eval_around_drops:
            row["drop_evals"] = drop_evals
        self.rows.append(row)
        if self.metrics is not None:
            self.metrics.append(row)
        return row

    def _add_time(self, watch: Stopwatch) -> None:
        """Count the training time and CPU time on ``watch`` (the tests around drops left out)."""
        self.train_time += watch.wall()
        self.train_cpu += watch.cpu()

    def _check_loss(self, mean_loss: float, where: str) -> None:
        if not math.isfinite(mean_loss):
            raise TrainingDivergedError(
                f"the training loss became {mean_loss} at {where}; lower --lr (now "
                f"{self.config.lr}) or check the data; the last good checkpoint is "
                f"{self.run.file(CHECKPOINT)}")

    def _epoch_line(self, row: dict) -> str:
        return (f"epoch {row['epoch']}/{self.config.epochs}: loss {row['train_loss']:.4f}, train "
                f"acc {row['train_acc']:.4f}, test acc {row['test_acc']:.4f}, units "
                f"{row['units_live']}/{len(self.method.units)}{report.fading_note(row)}, "
                f"fwd FLOPs saved "
                f"{100 * (1 - row['fwd_flops'] / row['fwd_flops_full']):.1f}%, "
                f"{self.train_time:.1f}s")

    def _save_checkpoint(self) -> None:
        if not self.ctx.is_main:
            return
        parts = self.parts
        self.run.save_torch(CHECKPOINT, {
            "model": parts.model.state_dict(), "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict(), "method": self.method.state_dict(),
            "metrics": self.rows, "epoch": self.epoch, "batch": self.batch,
            "train_time": self.train_time, "train_cpu": self.train_cpu,
            "epoch_stats": self.epoch_stats,
            "config": self.config.record(),
            "lr_extensions": [list(e) for e in self.lr_extensions],
            "machines": self.machines,
        })

    def finish(self) -> dict:
        """Write the summary, ``model.pt`` (the slim network) and the plots; returns the
        summary. Call after :meth:`epochs` is exhausted."""
        config, ctx = self.config, self.ctx
        accs = [r["test_acc"] for r in self.rows]
        summary = report.summary(
            config, self.data.name, self.method, self.train_time, ctx.device,
            accs[-1] if accs else None, max(accs) if accs else None, epochs=config.epochs)
        summary["world_size"] = ctx.world_size
        summary["machine"] = " then ".join(self.machines)
        summary["train_cpu_s"] = round(self.train_cpu, 3)
        summary.update(self.parts.precision.describe())
        if config.compile:
            torch.compiler.reset()  # free dynamo's caches of this model (the bench trains on)
        if ctx.is_main:
            save_slim(self.run.file("model.pt"), self.parts.model.to("cpu"),
                      architecture=config.model, num_classes=self.data.num_classes,
                      in_channels=self.data.in_channels)
            self.run.write_json("summary.json", summary)
            if config.plots:
                report.plot(self.run, summary)
            self.metrics.close()
        distributed.barrier(ctx)  # every rank returns once the run directory is complete
        ctx.close()
        return summary


def _silent(*args, **kwargs) -> None:
    """The log of ranks other than 0."""


def _all_ranks_stats(stats: RunningStats, ctx: DistContext) -> None:
    """Turn this rank's epoch sums (loss, correct, samples) into those of all ranks."""
    loss, correct, samples = distributed.all_reduce_sum(
        [stats.loss.item(), stats.correct.item(), stats.samples], ctx)
    stats.loss.fill_(loss)
    stats.correct.fill_(round(correct))
    stats.samples = round(samples)


def _evaluate_all_ranks(parts, loader, ctx: DistContext) -> dict:
    """Test loss and accuracy over the whole test set, each rank evaluating its shard."""
    test = evaluate(parts.model, loader, parts.autocast)
    if not ctx.distributed:
        return test
    n = test["samples"]
    loss, correct, count = distributed.all_reduce_sum([test["loss"] * n, test["acc"] * n, n], ctx)
    return {"loss": loss / max(1, count), "acc": round(correct) / max(1, count),
            "samples": round(count)}
