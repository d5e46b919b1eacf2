"""The training loop: one function per phase, read top to bottom.

``train(config)`` loads the data, builds the model, optimizer, learning-rate schedule and
training method, then runs the epochs: each step drives the method (``before_step`` /
``step``); each epoch ends with the method's check, an evaluation, a metrics line and an
atomic checkpoint. The run directory gets ``config.json``, ``metrics.jsonl``, ``summary.json``,
``last.ckpt``, ``model.pt`` and plots.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from learndrop import distributed
from learndrop.data import ImageDataset, load_dataset, make_loaders
from learndrop.distributed import DistContext
from learndrop.methods import Event, Method, StochasticDepth, create_method
from learndrop.models import create_model, replace_head
from learndrop.policy import DropPolicy
from learndrop.train.config import ConfigError, TrainConfig
from learndrop.train.plots import plot_run
from learndrop.train.rundir import RunDir
from learndrop.train.tensorboard import TensorBoardLog

__all__ = ["train", "TrainingDivergedError", "TrainingInterrupted", "evaluate", "pick_device"]

CHECKPOINT = "last.ckpt"


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C: a checkpoint was saved; resume with ``--resume``."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but no CUDA device is available; "
                          "use --device cpu")
    return torch.device(name)


def default_out(config: TrainConfig) -> str:
    name = config.dataset.replace("folder:", "").replace("/", "_").strip("._")
    return str(Path("runs") / f"{config.model}-{name}-{config.method}")


# ---- building blocks -------------------------------------------------------------------------

def build_model(config: TrainConfig, data: ImageDataset, device: torch.device) -> nn.Module:
    """The model of ``config``, with optional starting weights and replaced head."""
    kwargs = {"pretrained": True} if config.pretrained else {}
    classes = config.replace_head or data.num_classes
    head_from_weights = config.weights is not None or config.pretrained
    model = create_model(
        config.model,
        num_classes=data.num_classes if not head_from_weights else _weights_classes(config),
        in_channels=data.in_channels,
        **kwargs,
    )
    if config.weights is not None:
        load_weights(model, config.weights)
    # --replace-head always gives a fresh head, even when the old one has the right size
    # (fine-tuning 5 classes onto 5 other classes must not keep the old classes' weights).
    if config.replace_head is not None or (head_from_weights and _head_classes(model) != classes):
        replace_head(model, classes)
    if _head_classes(model) != data.num_classes:
        raise ConfigError(
            f"the model has {_head_classes(model)} outputs but {config.dataset} has "
            f"{data.num_classes} classes; pass --replace-head {data.num_classes}"
        )
    return model.to(device)


def _head_classes(model: nn.Module) -> int:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else -1


def _weights_classes(config: TrainConfig) -> int:
    """Classes of the head stored in ``--weights`` (1000 for torchvision's pretrained ones)."""
    if config.weights is None:
        return 1000
    state = _read_state_dict(config.weights)
    heads = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    return heads[-1].shape[0] if heads else 1000


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise ConfigError(f"--weights {path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same message
        raise ConfigError(f"--weights {path} is not a readable PyTorch file ({err})") from err
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]  # a learndrop checkpoint
    if not isinstance(obj, dict):
        raise ConfigError(f"--weights {path} holds no state dict")
    return obj


def load_weights(model: nn.Module, path: str) -> None:
    """Load a state dict into ``model``; mismatched shapes are a one-line error."""
    state = _read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    # Keys of the file that the model lacks: e.g. resnet56 weights given to --model resnet20
    # would otherwise load silently into its first blocks.
    extra = [k for k in state if k not in own]
    if wrong:
        detail = (f"shape mismatch at {wrong[0]}: {tuple(state[wrong[0]].shape)} in the file, "
                  f"{tuple(own[wrong[0]].shape)} in the model")
    elif missing:
        detail = (f"{len(missing)} keys missing from the file (e.g. {missing[0]}); a model.pt "
                  "or last.ckpt of a run that dropped units holds the slimmed network, and "
                  "--weights needs a full-structure state dict (e.g. of a --method full run)")
    elif extra:
        detail = (f"{len(extra)} keys in the file that the model lacks (e.g. {extra[0]}); "
                  "is --model the network the weights were trained as?")
    if wrong or missing or extra:
        raise ConfigError(f"--weights {path} does not fit this model: {detail}")
    model.load_state_dict(state, strict=False)


def warmup_cosine(total_steps: int, warmup_steps: int):
    """Learning-rate factor: linear warm-up, then cosine decay to zero at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def method_options(config: TrainConfig, total_steps: int) -> dict:
    """The keyword arguments of ``config.method``'s constructor."""
    if config.method in ("learndrop", "freeze"):
        return {"policy": DropPolicy(**config.policy), "total_steps": total_steps or None}
    if config.method == "freezeout":
        return {"total_steps": total_steps, "t0": config.freezeout_t0}
    if config.method == "stochastic-depth":
        return {"drop_rate": config.drop_rate, "seed": config.seed}
    if config.method == "random-drop":
        return {"schedule": reference_drops(config.reference), "seed": config.seed}
    if config.method == "slim-from-scratch":
        return {"dropped": reference_drops(config.reference)}
    return {}


def reference_drops(reference: str | None) -> list[dict]:
    """The drop events of a finished reference run (its directory or summary.json)."""
    path = Path(reference or "")
    if path.is_dir():
        path = path / "summary.json"
    if not path.is_file():
        raise ConfigError(f"--reference {reference}: no summary.json of a finished run there")
    import json

    return [d for d in json.loads(path.read_text())["drops"] if d["action"] == "drop"]


def train_step(method: Method, forward, optimizer, scheduler, x: torch.Tensor,
               y: torch.Tensor, autocast, samples: int) -> tuple[torch.Tensor, torch.Tensor, list]:
    """One optimizer step driven by ``method``; ``samples`` is what all processes trained on.
    Returns the loss, the logits and the method's events (no host synchronisation)."""
    method.before_step()
    with autocast():
        out = forward(x)
        loss = F.cross_entropy(out.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    events = method.step(samples)
    scheduler.step()
    return loss, out, events


@torch.no_grad()
def evaluate(model: nn.Module, loader, autocast) -> tuple[float, float]:
    """Test loss and accuracy (all units run: eval mode)."""
    was_training = model.training
    model.eval()
    loss = torch.zeros((), device=loader.device)
    correct = torch.zeros((), device=loader.device, dtype=torch.long)
    n = 0
    for x, y in loader:
        with autocast():
            out = model(x)
        loss += F.cross_entropy(out.float(), y, reduction="sum")
        correct += (out.argmax(1) == y).sum()
        n += len(y)
    model.train(was_training)
    return loss.item() / max(1, n), correct.item() / max(1, n)


@dataclass
class _EpochStats:
    loss: torch.Tensor
    correct: torch.Tensor
    samples: int = 0
    events: list[Event] = field(default_factory=list)


def saved_fraction(method: Method) -> float:
    """Forward FLOPs saved so far, as a fraction of the full network's."""
    return method.ledger.totals()["fwd_flops_reduction"]


def _announce(events: list[Event], method: Method, log) -> None:
    totals = method.ledger.totals()
    cost = method.ledger.cost(method.flops_key())
    for e in events:
        scores = ""
        if e.change_score is not None:
            scores = f" (change {e.change_score:.3g}, continuation {e.continuation_score:.3g})"
        log(f"epoch {e.epoch:g}: {e.action} {e.unit}{scores}")
    log(f"  {len(method.live_units)}/{len(method.units)} units live; forward FLOPs per step "
        f"now {100 * (1 - cost.fwd / method.ledger.full.fwd):.1f}% below full, "
        f"{100 * totals['fwd_flops_reduction']:.1f}% saved so far")


class StopFlag:
    """Turns the first Ctrl-C into a flag the loop checks after each step."""

    def __init__(self) -> None:
        self.set = False

    def __enter__(self):
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


# ---- the run ---------------------------------------------------------------------------------

def train(config: TrainConfig, log=print,
          on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Train according to ``config``; returns the summary (also written to summary.json).

    ``on_epoch(row)``, when given, is called with every finished epoch's metrics row once its
    checkpoint is saved (the bench's lockstep scheduler pauses a run there). Under torchrun,
    every process calls this; see :mod:`learndrop.distributed`.
    """
    try:
        return _train(config, log, on_epoch)
    except (RuntimeError, torch.distributed.DistError) as err:
        # A collective inside DDP's backward that lost its peers: one line that says why.
        explained = distributed.explain(err)
        if explained is err:
            raise
        raise explained from err


def _train(config: TrainConfig, log, on_epoch) -> dict:
    ckpt = None
    if config.resume:
        # A resumed run continues with the configuration it started with; only how it reports
        # and where it runs may change.
        resume_from = _checkpoint_path(config.resume)
        ckpt = torch.load(resume_from, map_location="cpu", weights_only=False)
        config = TrainConfig.from_dict({
            **ckpt["config"], "resume": str(resume_from), "quiet": config.quiet,
            "device": config.device, "plots": config.plots,
            "compile": config.compile, "tensorboard": config.tensorboard,
            "dist_timeout": config.dist_timeout,
            "out": config.out or str(resume_from.parent),
        })
    config.validate()
    if config.out is None:
        config.out = default_out(config)
    run = RunDir(config.out)
    # Under torchrun: one process per rank, each on its shard of every epoch; --batch-size
    # stays the global batch, so steps, schedule and checks match a single-process run.
    ctx = distributed.init_from_env(pick_device(config.device), config.dist_timeout)
    device = ctx.device
    if config.batch_size % ctx.world_size:
        raise ConfigError(f"--batch-size {config.batch_size} (the global batch) must be a "
                          f"multiple of the {ctx.world_size} processes")
    batch_size = config.batch_size // ctx.world_size
    # Only rank 0 touches the run directory; its refusal (an existing run) stops every rank.
    distributed.on_main_first(
        ctx, lambda: run.prepare(resume=ckpt is not None, overwrite=config.overwrite))
    if not ctx.is_main:
        config = dataclasses.replace(config, quiet=True)  # no progress bars on other ranks
        log = _silent

    torch.manual_seed(config.seed)
    # Denormal floats (tiny gradients late in training) make CPU kernels crawl; flush them.
    torch.set_flush_denormal(True)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    data = load_dataset(config.dataset, config.data_dir, config.image_size,
                        config.subset, config.seed, config.test_subset)
    train_loader, test_loader = make_loaders(
        data, batch_size, device, config.seed, augment=config.augment,
        eval_batch_size=config.eval_batch_size, rank=ctx.rank, world_size=ctx.world_size,
    )
    if len(train_loader) == 0:
        raise ConfigError("the training set is smaller than one batch; lower --batch-size")
    model = build_model(config, data, device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        train_loader.channels_last = test_loader.channels_last = True
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    steps_per_epoch = len(train_loader)
    total_steps = steps_per_epoch * config.epochs
    example = torch.zeros(config.batch_size, data.in_channels, data.image_size, data.image_size,
                          device=device)
    method = create_method(config.method, model, optimizer, example,
                           unit_names=config.units, steps_per_check=steps_per_epoch,
                           **method_options(config, total_steps))
    if ctx.distributed:
        method.sync = distributed.broadcast_decision(ctx)  # every rank applies rank 0's drops
    # Created after the method, which may split param groups (FreezeOut).
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total_steps, round(config.warmup_epochs * steps_per_epoch)))

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

    metrics: list[dict] = []
    # Wall-clock and process CPU time of the training steps (evaluation excluded): CPU time is
    # what a shared machine's load changes least (time spent waiting for a core is not in it).
    start_epoch, start_batch, train_time, train_cpu = 0, 0, 0.0, 0.0
    if ckpt is not None:
        method.load_state_dict(ckpt["method"])
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])  # moves its state to the model's device
        scheduler.load_state_dict(ckpt["scheduler"])
        metrics = ckpt["metrics"]
        start_epoch, start_batch, train_time = ckpt["epoch"], ckpt["batch"], ckpt["train_time"]
        train_cpu = ckpt.get("train_cpu", 0.0)
        log(f"resuming {run.path} at epoch {start_epoch + 1}, step {method.steps}")
    tensorboard = None
    if ctx.is_main:
        run.write_json("config.json", config.to_dict())
        if config.tensorboard:
            tensorboard = TensorBoardLog(run.file("tensorboard"),
                                         resume_step=method.steps if ckpt is not None else None)
    log(f"{config.method}: {config.model} on {data.name} ({len(data.train_y)} train / "
        f"{len(data.test_y)} test images, {data.in_channels}x{data.image_size}x{data.image_size}), "
        f"{len(method.units)} droppable units, {config.epochs} epochs on {device}"
        + (f" x {ctx.world_size} processes" if ctx.distributed else ""))

    def build_forward() -> nn.Module:
        """The callable of the training forward: the model, in DDP and/or compiled."""
        skips = isinstance(method, StochasticDepth)  # units idle in some steps
        wrapped = distributed.wrap_ddp(model, ctx, find_unused_parameters=skips)
        return torch.compile(wrapped) if config.compile else wrapped

    forward = build_forward()
    compiled_version = method.structure_version

    def save_checkpoint(epoch: int, batch: int) -> None:
        if not ctx.is_main:
            return
        run.save_torch(CHECKPOINT, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "method": method.state_dict(),
            "metrics": metrics, "epoch": epoch, "batch": batch, "train_time": train_time,
            "train_cpu": train_cpu,
            "config": config.to_dict(),
        })

    with StopFlag() as stop:
        for epoch in range(start_epoch, config.epochs):
            train_loader.set_epoch(epoch)
            model.train()
            stats = _EpochStats(torch.zeros((), device=device),
                                torch.zeros((), device=device, dtype=torch.long))
            bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}",
                       disable=config.quiet, leave=False, dynamic_ncols=True)
            skip = start_batch if epoch == start_epoch else 0
            bar.update(skip)
            started, started_cpu = time.perf_counter(), time.process_time()
            for i, (x, y) in enumerate(train_loader):
                if i < skip:
                    continue  # resumed mid-epoch: same order, same augmentation
                loss, out, events = train_step(method, forward, optimizer, scheduler, x, y,
                                               autocast, samples=len(y) * ctx.world_size)
                stats.loss += loss.detach() * len(y)
                stats.correct += (out.detach().argmax(1) == y).sum()
                stats.samples += len(y)
                if events:
                    stats.events += events
                if method.structure_version != compiled_version:
                    # DDP registered the old parameters and dynamo's guards hold the old
                    # modules: both are rebuilt once per structural change. The old compiled
                    # code is dead; reset also keeps dynamo under its recompile limit.
                    if config.compile:
                        torch.compiler.reset()
                    forward = build_forward()
                    compiled_version = method.structure_version
                if (i + 1) % 25 == 0 or i + 1 == steps_per_epoch:
                    mean_loss = stats.loss.item() / stats.samples  # one sync per 25 steps
                    if not math.isfinite(mean_loss):
                        raise TrainingDivergedError(
                            f"the training loss became {mean_loss} at epoch {epoch + 1}; lower "
                            f"--lr (now {config.lr}) or check the data; the last good checkpoint "
                            f"is {run.file(CHECKPOINT)}")
                    bar.set_postfix(loss=f"{mean_loss:.3f}",
                                    acc=f"{stats.correct.item() / stats.samples:.3f}",
                                    units=f"{len(method.live_units)}/{len(method.units)}",
                                    saved=f"{100 * saved_fraction(method):.0f}%")
                bar.update(1)
                if distributed.any_rank(stop.set, ctx):  # every rank stops at the same step
                    if cuda:
                        torch.cuda.synchronize()
                    train_time += time.perf_counter() - started
                    train_cpu += time.process_time() - started_cpu
                    save_checkpoint(epoch, i + 1)
                    bar.close()
                    raise TrainingInterrupted(
                        f"interrupted; checkpoint saved, continue with: learndrop train --resume "
                        f"{run.path}")
            if cuda:
                torch.cuda.synchronize()
            train_time += time.perf_counter() - started
            train_cpu += time.process_time() - started_cpu
            bar.close()
            if stats.events:
                _announce(stats.events, method, log if config.quiet else tqdm.write)
            if ctx.distributed:
                # Evaluate and save rank 0's BatchNorm statistics.
                distributed.broadcast_buffers(model, ctx)
                _all_ranks_stats(stats, ctx)
            test_loss, test_acc = _evaluate_all_ranks(model, test_loader, autocast, ctx)
            metrics.append(_metrics_row(epoch, method, stats, optimizer, train_time,
                                        train_cpu, test_loss, test_acc))
            if ctx.is_main:
                run.write_metrics(metrics)
                if tensorboard is not None:
                    tensorboard.write(metrics[-1])
            save_checkpoint(epoch + 1, 0)
            row = metrics[-1]
            if on_epoch is not None:
                on_epoch(row)
            log(f"epoch {epoch + 1}/{config.epochs}: loss {row['train_loss']:.4f}, train acc "
                f"{row['train_acc']:.4f}, test acc {test_acc:.4f}, units "
                f"{row['units_live']}/{len(method.units)}, fwd FLOPs saved "
                f"{100 * (1 - row['fwd_flops'] / row['fwd_flops_full']):.1f}%, "
                f"{train_time:.1f}s")

    summary = _summary(config, data, method, metrics, train_time, train_cpu, device)
    summary["world_size"] = ctx.world_size
    if config.compile:
        torch.compiler.reset()  # model.pt must not carry dynamo's caches (or their backends)
    if ctx.is_main:
        run.save_torch("model.pt", model.to("cpu"))
        run.write_json("summary.json", summary)
        if config.plots:
            plot_run(metrics, summary, run.path)
        if tensorboard is not None:
            tensorboard.close()
    distributed.barrier(ctx)  # every rank returns once the run directory is complete
    ctx.close()
    return summary


def _silent(*args, **kwargs) -> None:
    """The log of ranks other than 0."""


def _all_ranks_stats(stats: _EpochStats, ctx: DistContext) -> None:
    """Turn this rank's epoch sums (loss, correct, samples) into those of all ranks."""
    loss, correct, samples = distributed.all_reduce_sum(
        [stats.loss.item(), stats.correct.item(), stats.samples], ctx)
    stats.loss.fill_(loss)
    stats.correct.fill_(round(correct))
    stats.samples = round(samples)


def _evaluate_all_ranks(model: nn.Module, loader, autocast,
                        ctx: DistContext) -> tuple[float, float]:
    """Test loss and accuracy over the whole test set, each rank evaluating its shard."""
    loss, acc = evaluate(model, loader, autocast)
    if not ctx.distributed:
        return loss, acc
    n = loader.num_samples
    total_loss, correct, count = distributed.all_reduce_sum([loss * n, acc * n, n], ctx)
    return total_loss / max(1, count), round(correct) / max(1, count)


def _checkpoint_path(resume: str) -> Path:
    path = Path(resume)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise ConfigError(f"--resume {resume}: no checkpoint ({CHECKPOINT}) there")
    return path


def method_metrics(method: Method) -> dict:
    """The method's part of a metrics row: live units, last scores, cumulative FLOPs."""
    cost = method.ledger.cost(method.flops_key())
    scores = getattr(method, "last_scores", {}) or {}
    return {
        "units_live": len(method.live_units),
        "scores": {u: {"change": s.change, "ratio": s.ratio, "slope": s.slope,
                       "continuation": s.continuation} for u, s in scores.items()},
        "fwd_flops_per_sample": cost.fwd,
        "fwd_flops_per_sample_full": method.ledger.full.fwd,
        "bwd_flops_per_sample": cost.bwd,
        **{k: v for k, v in method.ledger.totals().items() if not k.endswith("reduction")},
    }


def _metrics_row(epoch, method, stats, optimizer, train_time, train_cpu, test_loss,
                 test_acc) -> dict:
    return {
        "epoch": epoch + 1,
        "step": method.steps,
        "time_s": round(train_time, 3),
        "cpu_s": round(train_cpu, 3),
        "lr": optimizer.param_groups[0]["lr"],
        "train_loss": stats.loss.item() / max(1, stats.samples),
        "train_acc": stats.correct.item() / max(1, stats.samples),
        "test_loss": test_loss,
        "test_acc": test_acc,
        "dropped": [e.unit for e in stats.events],
        **method_metrics(method),
    }


def _summary(config, data, method, metrics, train_time, train_cpu, device) -> dict:
    info = method.summary()
    accs = [m["test_acc"] for m in metrics]
    return {
        "method": config.method,
        "model": config.model,
        "dataset": data.name,
        "epochs": config.epochs,
        "seed": config.seed,
        "device": str(device),
        "samples_seen": info["samples_seen"],
        "train_time_s": round(train_time, 3),
        "train_cpu_s": round(train_cpu, 3),
        "final_test_acc": accs[-1] if accs else None,
        "best_test_acc": max(accs) if accs else None,
        **{k: info[k] for k in (
            "fwd_flops", "fwd_flops_full", "fwd_flops_reduction",
            "bwd_flops", "bwd_flops_full", "bwd_flops_reduction",
            "params_initial", "params_final", "units_total", "units_dropped", "units_frozen",
            "check_time_s",
        )},
        "drops": info["drops"],
    }
