"""Building a run: what the epoch trainer, the stream loop and the bench's dry run share.

One function per part, in the order a run needs them: the device, the model (with starting
weights and a new head), the optimizer, the learning-rate schedule, the method, and the
training forward (the model in DDP and/or compiled, rebuilt after every structural change).
:func:`build_parts` puts the model, optimizer, method, schedule and forward together; each loop
only adds how it feeds the data.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from learndrop import distributed
from learndrop.distributed import DistContext
from learndrop.methods import METHODS, Method, RunInfo, build_method
from learndrop.methods.random_drop import reference_dir
from learndrop.models import create_model, replace_head
from learndrop.precision import Precision, resolve_precision
from learndrop.train.config import ConfigError, TrainConfig
from learndrop.train.weights import head_classes, load_weights, weights_classes

__all__ = [
    "REFERENCE_SETTINGS", "Forward", "Parts", "build_model", "build_optimizer", "build_parts",
    "check_reference", "default_out", "file_sha256", "record_start",
    "decay_start", "pick_device", "warmup_cosine",
]


class DataSpec(Protocol):
    """What the builder needs to know of the data (an ``ImageDataset`` has it)."""

    num_classes: int
    in_channels: int


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        ConfigError: CUDA asked for but not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but no CUDA device is available; "
                          "use --device cpu")
    return torch.device(name)


def default_out(config: TrainConfig) -> str:
    """``runs/MODEL-DATA-METHOD``: the run directory when ``--out`` is not given."""
    name = config.dataset.replace("folder:", "").replace("/", "_").strip("._")
    return str(Path("runs") / f"{config.model}-{name}-{config.method}")


def build_model(config: TrainConfig, data: DataSpec, device: torch.device) -> nn.Module:
    """The model of ``config``, with optional starting weights and replaced head.

    Raises:
        ConfigError: the head does not fit the data's classes (and no ``--replace-head``).
    """
    kwargs = {"pretrained": True} if config.pretrained else {}
    classes = config.replace_head or data.num_classes
    head_from_weights = config.weights is not None or config.pretrained
    model = create_model(
        config.model,
        num_classes=data.num_classes if not head_from_weights else weights_classes(config.weights),
        in_channels=data.in_channels,
        **kwargs,
    )
    if config.weights is not None:
        load_weights(model, config.weights)
    # --replace-head always gives a fresh head, even when the old one has the right size
    # (fine-tuning 5 classes onto 5 other classes must not keep the old classes' weights).
    if config.replace_head is not None or (head_from_weights and head_classes(model) != classes):
        replace_head(model, classes)
    if head_classes(model) != data.num_classes:
        raise ConfigError(
            f"the model has {head_classes(model)} outputs but {config.dataset} has "
            f"{data.num_classes} classes; pass --replace-head {data.num_classes}"
        )
    return model.to(device)


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay over every parameter: the one optimizer of a run."""
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay)


def decay_start(total_steps: int, warmup_steps: int, decay_fraction: float = 1.0) -> int:
    """The step at which :func:`warmup_cosine`'s decay begins: the warm-up's end, or later
    when ``decay_fraction`` < 1 leaves a stable phase before it.

    Raises:
        ConfigError: a decay that would cover fewer than 2 of the run's steps (the run would
            end at its peak rate).
    """
    start = max(warmup_steps, total_steps - round(decay_fraction * total_steps))
    if decay_fraction < 1 and total_steps - start < 2:
        raise ConfigError(
            f"--lr-decay-fraction {decay_fraction:g} leaves the decay {total_steps - start} of "
            f"the run's {total_steps} steps (after a warm-up of {warmup_steps}), so the run "
            f"would end at its peak rate: raise it")
    return start


def warmup_cosine(total_steps: int, warmup_steps: int,
                  decay_fraction: float = 1.0) -> Callable[[float], float]:
    """Learning-rate factor of a step (or a fractional schedule position): linear warm-up,
    then cosine decay to zero at ``total_steps`` (Loshchilov & Hutter 2017, SGDR, without
    restarts; Goyal et al. 2017 for the warm-up). With ``decay_fraction`` < 1 the decay takes
    only the last ``decay_fraction`` of the steps and the rate holds at its peak between the
    warm-up and it (warmup-stable-decay: Hu et al. 2024, MiniCPM, section 4; with a cosine
    decay). 1, the default, decays from the warm-up's end on; a warm-up longer than the stable
    phase would be starts the decay at its end. Raises as :func:`decay_start`."""
    start = decay_start(total_steps, warmup_steps, decay_fraction)

    def factor(step: float) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - start) / max(1, total_steps - start)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))
    return factor


class Forward:
    """The training forward: the model, in DDP under torchrun and/or ``torch.compile``d.

    DDP registers the parameters it reduces when it is built, and dynamo's guards hold the old
    modules, so both are rebuilt once per structural change of the method
    (:meth:`refresh`, after every step). The old compiled code is dead then:
    ``torch.compiler.reset()`` drops it, which also keeps dynamo under its recompile limit
    (past it, a long run would quietly fall back to eager).
    """

    def __init__(self, model: nn.Module, method: Method, ctx: DistContext, *,
                 compile: bool) -> None:
        self.model, self.method, self.ctx, self.compile = model, method, ctx, compile
        self._build()

    def _build(self) -> None:
        wrapped = distributed.wrap_ddp(
            self.model, self.ctx, find_unused_parameters=self.method.units_idle_in_step)
        self.forward = torch.compile(wrapped) if self.compile else wrapped
        self.version = self.method.structure_version

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def refresh(self) -> bool:
        """Rebuild when the method changed the structure since the last build; True if so."""
        if self.method.structure_version == self.version:
            return False
        if self.compile:
            torch.compiler.reset()
        self._build()
        return True


@dataclass
class Parts:
    """The trainable parts of a run, built in the order that keeps resume exact, and the one
    decision on precision and memory format that both loops follow."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    method: Method
    scheduler: torch.optim.lr_scheduler.LambdaLR
    forward: Forward
    precision: Precision

    def autocast(self):
        """A fresh autocast context for one training or test forward (``--precision``)."""
        return self.precision.autocast()

    def use_memory_format(self, *loaders: object) -> None:
        """Make those ``loaders`` that convert their own batches (``DeviceLoader`` does it on
        uint8, the cheapest place) give them in the model's memory format; other inputs are
        converted by the model's first convolution."""
        for loader in loaders:
            if hasattr(loader, "channels_last"):
                loader.channels_last = self.precision.channels_last


def build_parts(
    config: TrainConfig,
    data: DataSpec,
    example_shape: tuple[int, ...],
    ctx: DistContext,
    *,
    steps_per_check: int | None,
    total_steps: int | None,
    lr_factor: Callable[[int], float],
    dry_run: bool = False,
) -> Parts:
    """Model, optimizer, method, schedule and forward of ``config`` on ``ctx.device``.

    Args:
        data: the number of classes and input channels.
        example_shape: one input batch's shape (the global batch): units and FLOPs are measured
            on it.
        steps_per_check: steps between the method's checks.
        total_steps: the run's length in steps (None: unknown, a stream).
        lr_factor: the learning-rate factor of each step (the schedule).
        dry_run: build only to check (on the meta device, say): see :class:`RunInfo`.
    """
    check_reference(config)
    device = ctx.device
    precision = resolve_precision(config.precision, device)
    torch.manual_seed(config.seed)
    model = build_model(config, data, device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(config, model)
    example = torch.zeros(example_shape, device=device)
    method = build_method(config.method, model, optimizer, example, config.method_options,
                          RunInfo(seed=config.seed, total_steps=total_steps,
                                  steps_per_check=steps_per_check, unit_names=config.units,
                                  dry_run=dry_run))
    if ctx.distributed:
        method.sync = distributed.broadcast_decision(ctx)  # every rank applies rank 0's drops
    # Created after the method, which may split param groups (FreezeOut).
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    method.attach_schedule(scheduler)  # a method that rewinds it after drops moves it
    forward = Forward(model, method, ctx, compile=config.compile and not dry_run)
    return Parts(model, optimizer, method, scheduler, forward, precision)


#: What a run that copies a reference run (a method with ``needs_reference``: random-drop,
#: slim-from-scratch, full-rewound) must share with it: its drops and rewinds are replayed at
#: the reference's steps and positions of the schedule, and its units are the reference model's.
REFERENCE_SETTINGS = ("model", "dataset", "subset", "epochs", "batch_size", "lr",
                      "warmup_epochs", "lr_decay_fraction", "stream")
#: The same, on a stream (``stream=True``), where these set the steps and the schedule instead.
REFERENCE_STREAM_SETTINGS = ("stream_length", "stream_order", "classes_per_stage",
                             "steps_per_check", "warmup_steps", "stream_schedule")


def check_reference(config: TrainConfig) -> None:
    """Refuse a run whose method copies a reference run (``--reference``) trained with other
    steps or another schedule: the copy would replay drops at other points of training, or
    rewinds to other learning rates, and compare nothing. The reference's ``config.json`` is
    read as a resumed run reads it (:meth:`TrainConfig.from_dict`: a field it lacks, added
    since, at its default); no reference yet (a bench's dry run,
    or a reference without ``config.json``) is left to the method, which says what it needs.

    Raises:
        ConfigError: a setting of :data:`REFERENCE_SETTINGS` (and, on a stream,
            :data:`REFERENCE_STREAM_SETTINGS`) differs; unreadable ``config.json``.
    """
    method = METHODS.get(config.method)
    reference = config.method_options.get("reference")
    if method is None or not method.needs_reference or not reference:
        return
    path = reference_dir(str(reference)) / "config.json"
    if not path.is_file():
        return
    try:
        recorded = json.loads(path.read_text())
        if not isinstance(recorded, dict):
            raise ValueError("not a run's config")
        # As a resumed run reads its record: missing fields at their defaults, old names.
        trained = TrainConfig.from_dict(recorded)
    except (OSError, TypeError, ValueError) as err:
        raise ConfigError(f"--reference {reference}: cannot read {path} ({err}); pass a run "
                          "directory that learndrop wrote") from err
    keys = REFERENCE_SETTINGS + (REFERENCE_STREAM_SETTINGS if config.stream else ())
    for key in keys:
        was, now = getattr(trained, key), getattr(config, key)
        if was != now:
            flag = "--" + key.replace("_", "-")
            raise ConfigError(
                f"--reference {reference} trained with {flag}={was}, this run asks for "
                f"{flag}={now}: --method {config.method} replays that run's steps, so train "
                "with the reference's settings (or choose a reference trained with these)")


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def record_start(config: TrainConfig, parts: Parts) -> None:
    """Write into ``config`` (and so into ``config.json`` and every checkpoint) what the run
    resolved when it started: the precision ``auto`` became on this machine (bf16 on one,
    fp32 on the next: a run resumed or benched elsewhere must not change it) and the SHA-256 of
    its ``--weights`` file (a bench must not mix runs started from other bytes at the same
    path). A resumed run keeps the digest it started with (None for a checkpoint from before
    the record: the file may have changed since, so it is not hashed now)."""
    config.precision = parts.precision.name
    if not config.resume:
        config.weights_sha256 = file_sha256(config.weights) if config.weights else None
