"""Configuration of a training run, as plain values (what ``config.json`` holds)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field, fields

from learndrop.methods import parse_options
from learndrop.precision import PRECISIONS

__all__ = ["RESOLVED_OPTIONS", "ConfigError", "TrainConfig", "default_method_options",
           "recorded_defaults", "same_value"]

#: The key of ``config.json`` (and of a checkpoint's config) that records every option of the
#: method with the value the run used, defaults included (:meth:`TrainConfig.record`).
RESOLVED_OPTIONS = "method_options_resolved"


#: Method options whose default changed after runs were recorded without them: a record that
#: lists no value for one (written before the option existed, or before records listed every
#: option) ran with the value here, not today's default. An option whose default never changed
#: needs no entry: its default is what such a run did.
BEFORE_RECORDED = {
    "min_lr_fraction": 0.0,  # the late-drop guard: off until session 33, absent before session 17
}


class ConfigError(ValueError):
    """An impossible training option."""


#: The options that shape a stream (``stream=True``) and mean nothing to an epoch run: set to
#: anything but their defaults without ``stream``, they are refused, not ignored.
STREAM_ONLY = ("stream_order", "stream_length", "classes_per_stage", "steps_per_check",
               "eval_every", "warmup_steps", "stream_schedule")
#: The options of an epoch run that a stream has no use for, with the stream's own instead.
EPOCHS_ONLY = {"epochs": "--stream-length N (batches)", "warmup_epochs": "--warmup-steps N"}


@dataclass
class TrainConfig:
    """Every option of ``learndrop train``; the defaults train ResNet-20 on Fashion-MNIST in a
    few minutes on 2 CPU cores, offline."""

    # what to train
    model: str = "resnet20"
    dataset: str = "fashion-mnist"
    method: str = "learndrop"
    epochs: int = 8
    out: str | None = None
    # data
    subset: int | None = 5000  # None (or 0) = the whole training set
    test_subset: int | None = None  # None (or 0) = the whole test set
    image_size: int | None = None
    data_dir: str | None = None
    augment: bool = True
    # optimisation: SGD with momentum, linear warm-up then cosine decay to zero
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    lr_decay_fraction: float = 1.0  # the cosine decay's share of the run (< 1: a stable phase)
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto (bf16 where native, else fp32), fp32 or bf16
    # starting point
    weights: str | None = None
    pretrained: bool = False
    replace_head: int | None = None
    # Filled in by the training loops when the run starts (:func:`record_start`), not an
    # option: the SHA-256 of the ``weights`` file, so that a run resumed or benched later is
    # known to have started from the same bytes.
    weights_sha256: str | None = None
    # the method
    units: list[str] | None = None
    # Options of --method, by field name of its options dataclass (e.g. DropPolicy's for
    # learndrop); only those given: the others take the dataclass's defaults.
    method_options: dict = field(default_factory=dict)
    # streaming (learndrop train --stream; see docs/streaming-and-finetuning.md)
    stream: bool = False
    stream_order: str = "dataset"  # "dataset" or "class-incremental"
    stream_length: int | None = None  # batches; None = one pass over the training set
    classes_per_stage: int = 2
    steps_per_check: int = 50  # steps between score checks / drop decisions
    eval_every: int = 100  # steps between test evaluations
    warmup_steps: int | None = None  # linear LR warm-up; None = steps_per_check
    stream_schedule: str = "constant"  # "constant" after warm-up, or "cosine" over the length
    # run control
    resume: str | None = None
    overwrite: bool = False
    quiet: bool = False
    compile: bool = False
    tensorboard: bool = False
    dist_timeout: float = 600.0  # seconds a collective waits for the other ranks (DDP)
    plots: bool = True
    eval_batch_size: int = 500
    # Test just before and right after every drop (Method.evaluate_now): reporting only.
    eval_around_drops: bool = False

    def __post_init__(self) -> None:
        # One convention for both subsets: 0 (the CLI's way to say it) means the whole set.
        if self.subset == 0:
            self.subset = None
        if self.test_subset == 0:
            self.test_subset = None

    def validate(self) -> None:
        """Raise :class:`ConfigError` (one line) for impossible values."""
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        need(self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}")
        need(self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}")
        need(self.eval_batch_size >= 1,
             f"--eval-batch-size must be >= 1, got {self.eval_batch_size}")
        need(math.isfinite(self.lr) and self.lr > 0, f"--lr must be > 0, got {self.lr}")
        need(0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}")
        need(self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}")
        need(self.warmup_epochs >= 0, f"--warmup-epochs must be >= 0, got {self.warmup_epochs}")
        need(0 < self.lr_decay_fraction <= 1,  # NaN fails too
             f"--lr-decay-fraction must be in (0, 1], got {self.lr_decay_fraction}")
        need(self.subset is None or self.subset >= 1,
             f"--subset must be >= 1 (or 0 for the whole training set), got {self.subset}")
        need(self.test_subset is None or self.test_subset >= 1,
             f"--test-subset must be >= 1 (or 0 for the whole test set), got {self.test_subset}")
        need(self.image_size is None or self.image_size >= 8,
             f"--image-size must be >= 8, got {self.image_size}")
        need(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
             f"--device must be auto, cpu or cuda, got {self.device!r}")
        need(self.precision in PRECISIONS,
             f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        need(not (self.pretrained and self.weights),
             f"--pretrained and --weights {self.weights} both give the starting weights; "
             "pass one of them")
        if self.pretrained:
            from learndrop.models import has_pretrained_weights, list_models

            need(has_pretrained_weights(self.model)
                 or self.model.strip().lower() not in list_models(),  # said when it is built
                 f"--pretrained: torchvision has no pretrained weights for {self.model}; "
                 "start from your own with --weights FILE, or choose a torchvision model "
                 "(e.g. resnet18; see `learndrop models`)")
        need(not (self.data_dir and self.dataset.startswith("folder:")),
             f"--data-dir {self.data_dir}: --dataset {self.dataset} names its own folder; "
             "leave --data-dir out")
        need(self.replace_head is None or self.replace_head >= 2,
             f"--replace-head must be >= 2 classes, got {self.replace_head}")
        defaults = {f.name: f.default for f in fields(self)}
        self.check_options_apply({k for k in (*STREAM_ONLY, *EPOCHS_ONLY)
                                  if getattr(self, k) != defaults[k]})
        if self.stream:
            need(self.classes_per_stage == defaults["classes_per_stage"]
                 or self.stream_order == "class-incremental",
                 f"--classes-per-stage {self.classes_per_stage} sets the stages of "
                 "--stream-order class-incremental, and this stream is in dataset order; add "
                 "--stream-order class-incremental, or leave --classes-per-stage out")
            need(self.stream_order in ("dataset", "class-incremental"),
                 f"--stream-order must be dataset or class-incremental, got {self.stream_order!r}")
            need(self.stream_length is None or self.stream_length >= 1,
                 f"--stream-length must be >= 1 batches, got {self.stream_length}")
            need(self.classes_per_stage >= 1,
                 f"--classes-per-stage must be >= 1, got {self.classes_per_stage}")
            need(self.steps_per_check >= 1,
                 f"--steps-per-check must be >= 1, got {self.steps_per_check}")
            need(self.eval_every >= 1, f"--eval-every must be >= 1, got {self.eval_every}")
            need(self.warmup_steps is None or self.warmup_steps >= 0,
                 f"--warmup-steps must be >= 0, got {self.warmup_steps}")
            need(self.stream_schedule in ("constant", "cosine"),
                 f"--stream-schedule must be constant or cosine, got {self.stream_schedule!r}")
            need(self.lr_decay_fraction == 1 or self.stream_schedule == "cosine",
                 f"--lr-decay-fraction {self.lr_decay_fraction} shapes a decaying schedule, and "
                 f"a constant-rate stream has none: pass --stream-schedule cosine "
                 f"--stream-length N, or leave --lr-decay-fraction out")
            need(not (self.method_options.get("lr_rewind_steps")
                      and self.stream_schedule == "constant"),
                 "--lr-rewind-steps rewinds a decaying schedule, and a constant-rate stream has "
                 "none: pass --stream-schedule cosine --stream-length N, or leave "
                 "--lr-rewind-steps out")
            need(not (self.method_options.get("min_lr_fraction")
                      and self.stream_schedule == "constant"),
                 "--min-lr-fraction stops decisions once a decaying rate falls below it, and a "
                 "constant-rate stream never decays: pass --stream-schedule cosine "
                 "--stream-length N, or leave --min-lr-fraction out")
            need(not self.resume, "--resume is not available for streams (a stream is consumed "
                                  "once); start a new run")
        need(self.dist_timeout > 0, f"--dist-timeout must be > 0 seconds, got {self.dist_timeout}")
        try:
            parse_options(self.method, self.method_options)
        except (TypeError, ValueError) as err:  # unknown method or option, impossible value
            raise ConfigError(str(err)) from err
        if self.eval_around_drops:
            from learndrop.methods import METHODS

            need(METHODS[self.method].drops_in_training,
                 f"--eval-around-drops tests the network around its drops, and --method "
                 f"{self.method} drops no unit while training; leave it out, or choose a "
                 f"method that drops (e.g. learndrop, random-drop)")

    def check_options_apply(self, given: set[str]) -> None:
        """Refuse (one line) an option of ``given`` (field names) that this run would ignore:
        a stream's own options without ``stream``, the epochs' with it. :meth:`validate` passes
        the fields away from their defaults; the CLI also the options typed, at any value.

        Raises:
            ConfigError: naming the option and what to do instead.
        """
        if not self.stream:
            for key in (k for k in STREAM_ONLY if k in given):
                raise ConfigError(f"--{key.replace('_', '-')} is an option of --stream "
                                  "(`learndrop train --stream`: one pass of a stream); add "
                                  "--stream, or leave it out")
        else:
            for key in (k for k in EPOCHS_ONLY if k in given):
                raise ConfigError(
                    f"--{key.replace('_', '-')} {getattr(self, key)}: a stream is one pass and "
                    f"counts batches, not epochs; pass {EPOCHS_ONLY[key]} instead")

    def to_dict(self) -> dict:
        return asdict(self)

    def resolved_method_options(self) -> dict:
        """Every option of ``--method`` with the value this run uses: those in
        ``method_options``, the others at their defaults (``{}`` for a method without options).

        Raises:
            ValueError: an unknown method or option, or an impossible value.
        """
        return _plain(parse_options(self.method, self.method_options))

    def record(self) -> dict:
        """What a run directory's ``config.json`` and checkpoint hold: :meth:`to_dict` and,
        under :data:`RESOLVED_OPTIONS`, :meth:`resolved_method_options`. The defaults are
        recorded because they change between versions: a resumed run goes on with the options
        it started with, and a bench does not take a finished run made with other defaults for
        one of its own."""
        return {**self.to_dict(), RESOLVED_OPTIONS: self.resolved_method_options()}

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """A config from ``config.json`` (or a checkpoint's): with a record of the resolved
        options (:meth:`record`), ``method_options`` holds those given and every other whose
        recorded value is not today's default, so the config means what the run did; an
        option that record does not list is read at :func:`recorded_defaults` (the defaults of
        the run's time). Also of runs made before methods
        owned their options (``policy``, ``reference``, ``freezeout_t0``, ``drop_rate``) or the
        stream's ``check_every`` became ``steps_per_check``."""
        values = dict(values)
        method = values.get("method", cls.method)
        resolved = values.pop(RESOLVED_OPTIONS, None)
        if resolved is not None:
            values["method_options"] = _as_given(
                method, {**recorded_defaults(method), **resolved},
                values.get("method_options") or {})
        if "check_every" in values:  # renamed: one name (Method's) for one idea
            values["steps_per_check"] = values.pop("check_every")
        legacy = dict(values.pop("policy", None) or {})
        for old, new in _LEGACY_OPTIONS.items():
            if old in values:
                legacy[new] = values.pop(old)
        if legacy and "method_options" not in values:
            from learndrop.methods import METHODS

            known = METHODS.get(values.get("method", cls.method))
            names = ({f.name for f in dataclasses.fields(known.options_type)}
                     if known is not None and known.options_type is not None else set())
            values["method_options"] = {k: v for k, v in legacy.items()
                                        if k in names and v is not None}
        known_fields = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known_fields})


def same_value(a: object, b: object) -> bool:
    """Equal and of the same type: an option's ``1`` (one unit) is not its ``1.0`` (all of
    them), nor ``True`` a ``1``."""
    return type(a) is type(b) and a == b


def default_method_options(method: str) -> dict:
    """Every option of ``method`` at today's default (``{}``: no options, or unknown)."""
    from learndrop.methods import METHODS

    known = METHODS.get(method)
    return _plain(known.options_type()) if known is not None and known.options_type else {}


def recorded_defaults(method: str) -> dict:
    """Every option of ``method`` at the value a run recorded without it used: today's default,
    or its value before a later change of default (:data:`BEFORE_RECORDED`)."""
    defaults = default_method_options(method)
    return {**defaults, **{k: v for k, v in BEFORE_RECORDED.items() if k in defaults}}


def _plain(options: object | None) -> dict:
    # As JSON holds them (a tuple reads back as a list), so that a record compares with what
    # it reads back as; an option's value must be a JSON value.
    return json.loads(json.dumps(asdict(options))) if options is not None else {}


def _as_given(method: str, resolved: dict, given: dict) -> dict:
    """A recorded run's ``method_options``: those it was given, and every other option whose
    recorded value is not today's default (a default changed since the run must not change
    what the run means). An option the run did not give and this version no longer has is
    left out, as config fields are; one it gave stays (and is refused by the validation)."""
    defaults = default_method_options(method)
    return {**{k: v for k, v in resolved.items()
               if k in defaults and not same_value(v, defaults[k])}, **given}


# Config fields of earlier versions -> the option (of the method's dataclass) they became.
_LEGACY_OPTIONS = {"reference": "reference", "freezeout_t0": "t0", "drop_rate": "drop_rate"}
