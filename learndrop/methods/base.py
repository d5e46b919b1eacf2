"""The driver interface shared by every training method (see docs/architecture.md)."""

from __future__ import annotations

import dataclasses
import time
import types
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from learndrop.flops import FlopsLedger
from learndrop.recalibrate import batchnorms_after, recalibrate_batchnorm
from learndrop.rewind import ScheduleRewind
from learndrop.surgery import drop_unit, freeze_unit
from learndrop.units import NoDroppableUnitsError, Unit, find_units

__all__ = ["Batch", "Event", "LastTrainableUnitError", "Method", "MethodOptionError",
           "MissingBatchesError", "RunInfo"]

Batch = tuple[torch.Tensor, torch.Tensor]


class MissingBatchesError(RuntimeError):
    """A method needs the training batches and the driver passed none to :meth:`Method.step`."""

_ACTIONS = {"drop": drop_unit, "freeze": freeze_unit}


class LastTrainableUnitError(ValueError):
    """Dropping or freezing a unit would leave the model with no trainable parameter."""


@dataclass(frozen=True)
class RunInfo:
    """Facts of the run that a method may need besides its own options.

    Attributes:
        seed: the run's seed (for methods that draw at random).
        total_steps: optimizer steps of the whole run, or ``None`` when unknown (a stream).
        steps_per_check: steps between two checks (``Method.steps_per_check``).
        unit_names: module names to use as units instead of automatic discovery.
        dry_run: built only to check shapes and options: inputs produced by other runs (a
            reference run) may not exist yet.
    """

    seed: int = 0
    total_steps: int | None = None
    steps_per_check: int | None = None
    unit_names: list[str] | None = None
    dry_run: bool = False


class MethodOptionError(ValueError):
    """An option that the chosen method does not have, or that the run cannot satisfy."""


@dataclass(frozen=True)
class Event:
    """A structural change: a unit dropped or frozen at a given step.

    ``epoch`` is the step over the steps per check (so, with the default of one check per
    epoch, the epoch in which it happened, fractional for mid-epoch events).
    """

    unit: str
    action: str
    step: int
    epoch: float | None
    change_score: float | None = None
    continuation_score: float | None = None
    drop_cost: float | None = None  # measured training-loss increase without the unit (nats)

    def to_dict(self) -> dict:
        return asdict(self)


class Stopwatch:
    """Wall-clock and CPU seconds since :meth:`restart`, less the tests around drops that
    ``method`` took meanwhile (:attr:`Method.eval_time_s`, :attr:`Method.eval_cpu_s`): they
    are neither training time nor the method's check time. ``sync`` runs before each wall
    reading (e.g. ``torch.cuda.synchronize``)."""

    def __init__(self, method: Method, sync: Callable[[], None] | None = None) -> None:
        self.method, self.sync = method, sync
        self.restart()

    def restart(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        self._evals = (self.method.eval_time_s, self.method.eval_cpu_s)

    def wall(self) -> float:
        """Seconds of wall-clock since the start, less the tests'."""
        if self.sync is not None:
            self.sync()
        return time.perf_counter() - self._wall - (self.method.eval_time_s - self._evals[0])

    def cpu(self) -> float:
        """Seconds of this process's CPU time since the start, less the tests'."""
        return time.process_time() - self._cpu - (self.method.eval_cpu_s - self._evals[1])


class Method:
    """Base of all training methods: counts steps and samples, keeps the FLOPs ledger, applies
    drops/freezes to the model and optimizer, and holds the state needed to resume.

    Subclasses override :meth:`before_step`, :meth:`on_step`, :meth:`on_check` and (a method
    with something in flight at the end of training) :meth:`on_finish`; a method
    with hyperparameters registers their dataclass (``@register_method(name, options=...)``) and
    maps them to its constructor in :meth:`option_kwargs`. Drivers never test a method's type:
    they ask it (:attr:`units_idle_in_step`, :attr:`needs_reference`, :attr:`batches_needed`,
    :attr:`drops_in_training`, :meth:`metrics`). A driver that sets :attr:`evaluate_now`
    gets the test accuracy just before and right after every drop (:meth:`before_change`). A
    method that needs the training batches (to measure drop costs, or to recalibrate BatchNorm
    after a drop) says how many recent ones through :attr:`batches_needed`; the driver passes
    each step's batch to :meth:`step` and the base class keeps references to the last ones
    only.

    Args:
        model: the network being trained; it is modified in place by drops.
        optimizer: its optimizer; dropped units' parameters and state are removed from it.
        example_input: one input batch (only its shape and dtype are used).
        units: droppable units; found automatically when omitted.
        unit_names: qualified module names to use as units instead of automatic discovery.
        steps_per_check: call :meth:`check` every this many steps (e.g. ``len(loader)`` for
            once per epoch); ``None`` means the caller calls :meth:`check` itself.
        require_units: raise when the model has no droppable unit (methods that need them).
    """

    name = "full"
    require_units = True
    #: Recent training batches from which the BatchNorm statistics are recomputed once the
    #: step's or check's drops are done (0: none; see :meth:`recalibrate`).
    recalibration_batches = 0
    #: The dataclass of the method's options (set by ``register_method``); None: no options.
    options_type: ClassVar[type | None] = None
    #: Some units can sit out a step (no gradient for their parameters): data-parallel drivers
    #: then need DDP's ``find_unused_parameters=True``.
    units_idle_in_step: ClassVar[bool] = False
    #: The method copies the drops of a finished reference run (its ``reference`` option).
    needs_reference: ClassVar[bool] = False
    #: The method can drop units while training runs (not only before its first step), so
    #: :attr:`evaluate_now` has something to read.
    drops_in_training: ClassVar[bool] = False

    @classmethod
    def option_kwargs(cls, options: Any, run: RunInfo) -> dict:
        """The constructor's keyword arguments (beyond the common ones) for ``options`` (an
        instance of :attr:`options_type`, or None) in ``run``; by default the options' fields.

        Raises:
            MethodOptionError: the run cannot give what the method needs.
        """
        return dataclasses.asdict(options) if options is not None else {}

    @classmethod
    def from_options(cls, model: nn.Module, optimizer: torch.optim.Optimizer,
                     example_input: torch.Tensor, options: Any, run: RunInfo) -> Method:
        """Build the method from its options and the facts of the run (what drivers call,
        through :func:`learndrop.methods.build_method`)."""
        return cls(model, optimizer, example_input, unit_names=run.unit_names,
                   steps_per_check=run.steps_per_check, **cls.option_kwargs(options, run))

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        example_input: torch.Tensor,
        *,
        units: list[Unit] | None = None,
        unit_names: Iterable[str] | None = None,
        steps_per_check: int | None = None,
    ) -> None:
        if steps_per_check is not None and steps_per_check < 1:
            raise ValueError(f"steps_per_check must be >= 1, got {steps_per_check}")
        self.model = model
        self.optimizer = optimizer
        self.example_input = example_input
        if units is None:
            try:
                units = find_units(model, example_input, unit_names)
            except NoDroppableUnitsError:
                if self.require_units:
                    raise
                units = []
        self.units = list(units)
        self.steps_per_check = steps_per_check
        self.steps = 0
        self.checks = 0
        self.check_time_s = 0.0  # scoring + decision + surgery: the method's own overhead
        self.events: list[Event] = []
        self.removed: dict[str, str] = {}
        self.structure_version = 0
        self.ledger = FlopsLedger(model, example_input)
        self.params_initial = sum(p.numel() for p in model.parameters())
        self.recent_batches: deque[Batch] = deque()  # at most batches_needed, newest last
        self.batches_given = False
        # Maps this process's decision (strings: unit names, or Learn&Drop's "action:unit") to
        # the one every process applies; set by data-parallel drivers (e.g. a broadcast from
        # rank 0). None: decide locally.
        self.sync: Callable[[list[str]], list[str]] | None = None
        # Methods that move the driver's learning-rate schedule (rewind it after drops, or
        # replay a reference run's rewinds: :mod:`learndrop.rewind`) set this; drivers then
        # pass their schedule to attach_schedule.
        self.schedule_rewind: ScheduleRewind | None = None
        self._scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        # The test accuracy around each drop (see evaluate_now): set by a driver that
        # measures it, e.g. the trainer with --eval-around-drops.
        self.evaluate_now: Callable[[], dict] | None = None
        self.drop_evals: list[dict] = []
        self.eval_time_s = 0.0  # wall-clock of those evaluations: neither training nor check
        self.eval_cpu_s = 0.0
        self._eval_before: dict | None = None  # the reading before a change still under way

    # ---- hooks for subclasses -------------------------------------------------------------
    def before_step(self) -> None:
        """Called before the forward pass of every step."""

    def on_step(self) -> list[Event]:
        """Called after every optimizer step (after the samples were recorded)."""
        return []

    def on_check(self) -> list[Event]:
        """Called at every check; returns the events it caused."""
        return []

    def on_finish(self) -> list[Event]:
        """Called once when training ends for good; settles what is in flight and returns the
        events it caused (see :meth:`finish`)."""
        return []

    def metrics(self) -> dict:
        """The method's part of a metrics row: live units, FLOPs per sample now, cumulative
        FLOPs (``FlopsLedger.totals``). Methods with scores add them."""
        cost = self.ledger.cost(self.flops_key())
        return {
            "units_live": len(self.live_units),
            "fwd_flops_per_sample": cost.fwd,
            "fwd_flops_per_sample_full": self.ledger.full.fwd,
            "bwd_flops_per_sample": cost.bwd,
            **{k: v for k, v in self.ledger.totals().items() if not k.endswith("reduction")},
        }

    def sync_decision(self, chosen: list[str]) -> list[str]:
        """The units to act on at this check: ``chosen`` here, passed through :attr:`sync`
        when set, so that every data-parallel process drops the same units at the same step."""
        return list(self.sync(list(chosen))) if self.sync is not None else list(chosen)

    @property
    def changing(self) -> bool:
        """A change of the network's function is under way and not yet complete (Learn&Drop:
        a unit fading out); the base class makes every change at once."""
        return False

    def flops_key(self) -> Hashable:
        """Identifies the network configuration that ran in the current step."""
        return self.structure_version

    @property
    def batches_needed(self) -> int:
        """How many of the most recent training batches the method needs (0: none)."""
        return self.recalibration_batches

    def require_batches(self, why: str) -> list[Batch]:
        """The recent batches, or a one-line :class:`MissingBatchesError` saying how to pass
        them when the driver never did."""
        if not self.batches_given:
            raise MissingBatchesError(
                f"{self.name} needs the training batches to {why}: call "
                f"method.step(len(x), batch=(x, y)) after every optimizer step (or turn off "
                f"what needs them; see the method's docstring)")
        return list(self.recent_batches)

    # ---- the learning-rate schedule -----------------------------------------------------------
    @property
    def moves_schedule(self) -> bool:
        """Whether the method moves the driver's learning-rate schedule (rewinds it after
        drops, or replays a reference run's rewinds: :mod:`learndrop.rewind`); the driver must
        then :meth:`attach_schedule`."""
        return self.schedule_rewind is not None

    def schedule_position(self, step: int) -> int | float:
        """The position in the driver's schedule of optimizer step ``step``: ``step`` itself
        (the int) until the method rewinds the schedule, a float from then on."""
        return step if self.schedule_rewind is None else self.schedule_rewind.position(step)

    def attach_schedule(self, scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
        """Let the method move ``scheduler``, a ``LambdaLR`` stepped once per optimizer step
        (its factor functions are wrapped in place to read :meth:`schedule_position`: the step
        until the first rewind, a float position after it, so a factor must accept floats).
        Drivers call it after building the scheduler; it does nothing for a method that does
        not move the schedule (any scheduler is fine then). Call it again after rebuilding the
        scheduler from a checkpoint: the scheduler's state dict does not hold the wrapping.
        The first param group's factor chooses where a rewind goes; every group is moved
        alike.

        Raises:
            MethodOptionError: the method moves the schedule and ``scheduler`` is not a
                ``LambdaLR`` (other schedulers do not compute the rate from the step), or a
                factor is a callable object (its state would leave the scheduler's state dict).
        """
        if not self.moves_schedule:
            return
        if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            raise MethodOptionError(
                f"{self.name} {self._moves_why} and needs a LambdaLR stepped once per "
                f"optimizer step, got {type(scheduler).__name__}: write the schedule as a "
                f"LambdaLR factor of the step")
        factors = [getattr(f, "learndrop_factor", f) for f in scheduler.lr_lambdas]
        if not all(isinstance(f, types.FunctionType) for f in factors):
            raise MethodOptionError(
                f"{self.name} {self._moves_why} and wraps its LambdaLR's factors, which "
                f"must be plain functions (a callable object's state would be lost from the "
                f"scheduler's state dict): pass a function or lambda")
        self._scheduler = scheduler

        def moved(factor: Callable[[float], float]) -> Callable[[int], float]:
            # A plain function: LambdaLR.state_dict() saves no state of it.
            def at(step: int) -> float:
                return factor(self.schedule_position(step))
            at.learndrop_factor = factor  # type: ignore[attr-defined]
            return at
        scheduler.lr_lambdas = [moved(f) for f in factors]

    def _check_schedule(self) -> None:
        if self.moves_schedule and self._scheduler is None:
            raise MethodOptionError(
                f"{self.name} {self._moves_why} and was given none: call "
                f"method.attach_schedule(scheduler) with the run's LambdaLR before training")

    @property
    def _moves_why(self) -> str:
        if self.schedule_rewind is not None and self.schedule_rewind.rewind_steps is None:
            return "replays the learning-rate rewinds of its reference run"
        return "rewinds the learning-rate schedule after drops (lr_rewind_steps=0 turns it off)"

    def _rewind_after(self, events: list[Event]) -> None:
        """After drops at this step, rewind the attached schedule (:attr:`schedule_rewind`),
        so that the next step runs at the rewound rate whether the driver steps its scheduler
        after :meth:`step` (the trainer, the stream loop) or before it (Lightning steps a
        per-step scheduler before its ``on_train_batch_end``): in the second case the rate the
        scheduler just set is computed again."""
        if (self.schedule_rewind is None or self.schedule_rewind.rewind_steps is None
                or not any(e.action == "drop" for e in events)):
            return  # nothing to rewind, or a replay: its moves are planned
        self._check_schedule()
        if not self.schedule_rewind.rewind(self.steps, self._first_factor())["moved"]:
            return
        scheduler = self._scheduler
        if scheduler.last_epoch == self.steps:  # already stepped past this step
            groups = scheduler.optimizer.param_groups
            for group, base, factor in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas,
                                           strict=True):
                group["lr"] = base * factor(scheduler.last_epoch)
            scheduler._last_lr = [g["lr"] for g in groups]  # what get_last_lr() reports

    def _first_factor(self) -> Callable[[float], float]:
        return self._scheduler.lr_lambdas[0].learndrop_factor

    # ---- the driver interface -------------------------------------------------------------
    def step(self, batch_size: int | None = None, *,
             batch: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[Event]:
        """Account for one optimizer step; check on schedule. Returns the step's events.

        Args:
            batch_size: samples trained in the step, over all processes (default: the
                length of ``batch``, else of the example input).
            batch: the step's training batch ``(x, y)``, as the model and the loss took it.
                Only references to the last :attr:`batches_needed` are kept (none when the
                method needs none); they are not saved in :meth:`state_dict`.

        Raises:
            MissingBatchesError: the method needs batches and none was ever passed (at the
                first check or drop that needs them).
            MethodOptionError: the method moves the schedule and none was attached
                (:meth:`attach_schedule`), at the first step.
        """
        self._check_schedule()
        if batch_size is None:
            batch_size = len(batch[0]) if batch is not None else self.example_input.shape[0]
        if batch is not None:
            self.batches_given = True
            if self.batches_needed:
                self.recent_batches.append((batch[0].detach(), batch[1].detach()))
                while len(self.recent_batches) > self.batches_needed:
                    self.recent_batches.popleft()
        self.steps += 1
        self.ledger.record(self.flops_key(), int(batch_size))
        watch = self.stopwatch()
        events = self.on_step()
        self.after_change(events)
        self._rewind_after(events)
        self._eval_after_change()
        if events:
            self.check_time_s += watch.wall()
        if self.steps_per_check and self.steps % self.steps_per_check == 0:
            events = events + self.check()
        return events

    def check(self) -> list[Event]:
        """Score and decide now (normally called by :meth:`step` on schedule)."""
        watch = self.stopwatch()
        self.checks += 1
        events = self.on_check()
        self.after_change(events)
        self._rewind_after(events)
        self._eval_after_change()
        self.check_time_s += watch.wall()
        return events

    def finish(self) -> list[Event]:
        """Training ends here for good (the last step, an early stop, a time limit, the end of
        a stream): settle what the method has in flight, so that the network is the one that
        will be used, and return the drops or freezes this caused (BatchNorm recalibrated
        after drops, as after a check). A change without an event (a fade undone) bumps
        :attr:`structure_version`. Not for an interruption that will resume: a checkpoint
        keeps what is in flight, and one saved after this holds the settled network. Drivers
        call it once, before the final evaluation. The base class has nothing in flight.

        Raises:
            MissingBatchesError: BatchNorm must be recalibrated and no batch was ever passed.
        """
        watch = self.stopwatch()
        events = self.on_finish()
        self.after_change(events)
        self._eval_after_change()
        self.check_time_s += watch.wall()
        return events

    def after_change(self, events: list[Event]) -> None:
        """After drops: :meth:`recalibrate` BatchNorm. (Drops of a step or a check then
        rewind the schedule, when the method does; drops at :meth:`finish` do not: no step
        follows them.)"""
        if any(e.action == "drop" for e in events):
            self.recalibrate()

    # ---- the test accuracy around a drop ----------------------------------------------------
    def before_change(self) -> None:
        """Read :attr:`evaluate_now` just before the method starts to change the function the
        network computes (:meth:`apply` calls it before a drop; Learn&Drop before a fade
        begins); nothing without it, or while an earlier change's reading waits for its end.

        Where the method recalibrates BatchNorm after drops, the network is read a second time
        with its statistics recomputed as the drop's recalibration will (the same layers, the
        same recent batches) and then put back as they were: the drop's recalibration also
        refreshes statistics that lag the weights at a high learning rate, so "after minus
        before" holds the refresh's gain and "after minus before recalibrated" is the drop
        alone. Where the method measures drop costs and the change is made at one step (not a
        fade), the loss on the batches they are measured on (:meth:`recent_batch_loss`) is
        read too: its rise over the decision is the whole decision's cost, to set beside the
        sum of its units' ``drop_cost`` (measured one unit at a time). The reading after
        comes once the change is complete (:attr:`changing` is False), after the drops of that
        step and BatchNorm's recalibration: at the same step for an abrupt drop, at the fade's
        end for a fade. Each pair goes into
        :attr:`drop_evals`, so that what a drop does is read apart from what training does
        between two epochs' evaluations (at a high learning rate, full training's own test
        accuracy moves by several points from one epoch to the next).

        A driver sets :attr:`evaluate_now` to a function that evaluates the network now and
        returns ``{"acc": fraction correct, "loss": mean nats, ...}`` (e.g.
        :func:`learndrop.train.steps.evaluate` on the test set); it must leave the network in
        the mode it found it and draw no random numbers from the training's generators, so
        that the run trains the same with it and without it. The readings' time (and their
        recalibration's) is counted in :attr:`eval_time_s` and :attr:`eval_cpu_s`, apart from
        :attr:`check_time_s`, and their forward passes are not charged to the FLOPs ledger
        (drivers keep them out of the training time too).
        """
        if self.evaluate_now is None or self._eval_before is not None:
            return
        reading = self._timed(self._read_before)
        self._eval_before = {"step": self.steps, "events": len(self.events), **reading}

    def recent_batch_loss(self) -> float | None:
        """The loss on the batches a drop's cost is measured on, read with the tests around a
        drop (:meth:`before_change`): its change over a decision is the whole decision's cost
        as the method measures one unit's. The base class measures no cost: ``None``."""
        return None

    def _read_before(self) -> dict:
        reading = self._read()
        reading["batch_loss"] = self.recent_batch_loss()
        reading["recalibrated"] = None
        if self.recalibration_batches and self.recent_batches:
            names = batchnorms_after(self.model, self.example_input)
            layers = [self.model.get_submodule(n) for n in names]
            saved = [{k: b.clone() for k, b in layer.named_buffers()} for layer in layers]
            try:
                recalibrate_batchnorm(self.model, [x for x, _ in self.recent_batches], names)
                reading["recalibrated"] = self._read()
            finally:
                with torch.no_grad():
                    for layer, buffers in zip(layers, saved, strict=True):
                        for k, b in layer.named_buffers():
                            b.copy_(buffers[k])
        return reading

    def _eval_after_change(self) -> None:
        """The reading after a complete change, recorded with the one before it."""
        before = self._eval_before
        if before is None or self.changing:
            return
        self._eval_before = None
        if self.evaluate_now is None:
            return  # a resumed run that no longer measures
        # The loss on the cost batches compares like with like only for a change made at one
        # step; a fade's end comes steps later, on other batches and trained weights.
        at_once = before["step"] == self.steps
        after = self._timed(lambda: {**self._read(), "batch_loss": (
            self.recent_batch_loss() if at_once else None)})
        refreshed = before["recalibrated"] or {}
        drops = [e for e in self.events[before["events"]:] if e.action == "drop"]
        costs = [e.drop_cost for e in drops]
        self.drop_evals.append({
            "step_before": before["step"], "step": self.steps, "epoch": self.epoch,
            "units": [e.unit for e in drops],
            "test_acc_before": before["acc"], "test_acc_after": after["acc"],
            "test_loss_before": before["loss"], "test_loss_after": after["loss"],
            "test_acc_before_recalibrated": refreshed.get("acc"),
            "test_loss_before_recalibrated": refreshed.get("loss"),
            # A reading pending in a checkpoint from before session 38 has no batch loss.
            "batch_loss_before": before.get("batch_loss") if at_once else None,
            "batch_loss_after": after["batch_loss"],
            "drop_cost_sum": sum(costs) if costs and None not in costs else None,
        })

    def stopwatch(self, sync: Callable[[], None] | None = None) -> Stopwatch:
        """A :class:`Stopwatch` started now: the time since, less this method's tests around
        drops taken meanwhile. The method times its own checks with it; drivers time training
        with it (``sync``: e.g. ``torch.cuda.synchronize``, so that queued kernels count)."""
        return Stopwatch(self, sync)

    def _read(self) -> dict:
        result = self.evaluate_now()
        return {"acc": float(result["acc"]), "loss": float(result["loss"])}

    def _timed(self, read: Callable[[], dict]) -> dict:
        started, cpu = time.perf_counter(), time.process_time()
        try:
            return read()
        finally:
            self.eval_time_s += time.perf_counter() - started
            self.eval_cpu_s += time.process_time() - cpu

    def recalibrate(self) -> None:
        """Recompute the running statistics of every trainable BatchNorm layer from the
        recent batches (:mod:`learndrop.recalibrate`; nothing when
        :attr:`recalibration_batches` is 0); the forward passes go into the FLOPs ledger as
        extra work.

        Raises:
            MissingBatchesError: no batch was ever passed to :meth:`step`.

        Every layer, not only those after the first dropped unit: measured on the ``make run``
        setting (``benchmarks/results/drop_recovery/``), the layers before the drop lag the
        weights too at a high learning rate, and recalibrating them as well gave 64% test
        accuracy right after a drop where the downstream layers alone gave 49%.
        """
        if not self.recalibration_batches:
            return
        names = batchnorms_after(self.model, self.example_input)
        if not names:
            return
        batches = self.require_batches("recalibrate BatchNorm after a structural change")
        samples = recalibrate_batchnorm(self.model, [x for x, _ in batches], names)
        self.ledger.record_extra(samples * self.ledger.cost(self.flops_key()).fwd)

    @property
    def live_units(self) -> list[Unit]:
        return [u for u in self.units if u.name not in self.removed]

    @property
    def epoch(self) -> float | None:
        return self.steps / self.steps_per_check if self.steps_per_check else None

    def _trainable_ids(self) -> set[int]:
        """Parameters that learn now: ``requires_grad`` and held by a param group."""
        held = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        return {id(p) for p in self.model.parameters() if p.requires_grad and id(p) in held}

    def keep_trainable(self, names: list[str]) -> list[str]:
        """``names`` without the units whose removal (after the ones before them) would leave
        the model with no trainable parameter: the next ``loss.backward()`` would fail and
        nothing would learn. Decisions go through this, so at least one trainable unit (or a
        trainable part outside the units) always stays."""
        left = self._trainable_ids()
        by_name = {u.name: u for u in self.units}
        kept = []
        for name in names:
            ids = {id(p) for p in by_name[name].parameters(self.model)}
            if left and not left - ids:
                continue
            left -= ids
            kept.append(name)
        return kept

    def apply(self, unit: Unit, action: str, **scores: float | None) -> Event:
        """Drop or freeze ``unit`` now and record the event.

        Raises:
            LastTrainableUnitError: the model would have no trainable parameter left (methods
                with a fixed plan, e.g. slim-from-scratch told to drop every unit, end here;
                Learn&Drop's decisions pass through :meth:`keep_trainable` first).
        """
        if unit.name in self.removed:
            raise ValueError(f"unit {unit.name!r} is already {self.removed[unit.name]}")
        left = self._trainable_ids()
        if left and not left - {id(p) for p in unit.parameters(self.model)}:
            raise LastTrainableUnitError(
                f"{action} {unit.name}: it holds the last trainable parameters of "
                f"{type(self.model).__name__}, and training needs at least one; drop fewer units")
        if action == "drop":
            self.before_change()
        _ACTIONS[action](self.model, unit, self.optimizer)
        self.removed[unit.name] = action
        self.structure_version += 1
        event = Event(unit.name, action, self.steps, self.epoch, **scores)
        self.events.append(event)
        return event

    # ---- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "method": self.name,
            "steps": self.steps,
            "checks": self.checks,
            "structure_version": self.structure_version,
            "check_time_s": self.check_time_s,
            "events": [e.to_dict() for e in self.events],
            "ledger": self.ledger.state_dict(),
            # The next check measures on them: a run resumed just before a check must see the
            # batches the uninterrupted run saw (at most batches_needed of them).
            "recent_batches": [(x.cpu(), y.cpu()) for x, y in self.recent_batches],
            **({"schedule_rewind": self.schedule_rewind.state_dict()}
               if self.schedule_rewind is not None else {}),
            "drop_evals": [dict(r) for r in self.drop_evals],
            "eval_before": dict(self._eval_before) if self._eval_before is not None else None,
            "eval_time_s": self.eval_time_s, "eval_cpu_s": self.eval_cpu_s,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore the state and re-apply its drops/freezes to a freshly built model and
        optimizer (before their own state dicts are loaded)."""
        if state["method"] != self.name:
            raise ValueError(f"state is of method {state['method']!r}, not {self.name!r}")
        by_name = {u.name: u for u in self.units}
        for record in state["events"]:
            event = Event(**record)
            if event.unit not in self.removed:
                _ACTIONS[event.action](self.model, by_name[event.unit], self.optimizer)
                self.removed[event.unit] = event.action
            self.events.append(event)
        self.steps = state["steps"]
        self.checks = state["checks"]
        self.structure_version = state["structure_version"]
        self.check_time_s = state.get("check_time_s", 0.0)
        self.drop_evals = [dict(r) for r in state.get("drop_evals", [])]
        self._eval_before = state.get("eval_before")
        self.eval_time_s = state.get("eval_time_s", 0.0)
        self.eval_cpu_s = state.get("eval_cpu_s", 0.0)
        self.ledger.load_state_dict(state["ledger"])
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        self.recent_batches = deque(
            (x.to(device), y.to(device)) for x, y in state.get("recent_batches", []))
        rewound = state.get("schedule_rewind")
        if self.schedule_rewind is not None and rewound is not None:
            self.schedule_rewind.load_state_dict(rewound)
        elif rewound and rewound["rewinds"]:
            raise ValueError("the state holds a rewound learning-rate schedule, and this "
                             "method does not rewind: resume with the lr_rewind_steps it was "
                             "saved with")

    def summary(self) -> dict:
        """Units, events, parameter counts and FLOPs totals and reductions so far."""
        return {
            "method": self.name,
            "steps": self.steps,
            "samples_seen": self.ledger.samples_seen,
            "params_initial": self.params_initial,
            "params_final": sum(p.numel() for p in self.model.parameters()),
            "units_total": len(self.units),
            "units_dropped": sum(1 for a in self.removed.values() if a == "drop"),
            "units_frozen": sum(1 for a in self.removed.values() if a == "freeze"),
            "check_time_s": round(self.check_time_s, 4),
            "drops": [e.to_dict() for e in self.events],
            **({"schedule_rewinds": [dict(r) for r in self.schedule_rewind.rewinds]}
               if self.schedule_rewind is not None else {}),
            **({"drop_evals": [dict(r) for r in self.drop_evals],
                "eval_time_s": round(self.eval_time_s, 3)} if self.drop_evals else {}),
            **self.ledger.totals(),
        }

