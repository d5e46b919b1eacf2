"""Random-drop: the ablation of Learn&Drop's scores (no peer paper; DESIGN.md section 6).

It drops and freezes as many units, at the same steps, as a reference Learn&Drop run did, but
chooses them uniformly at random among the live units. If it matches Learn&Drop's accuracy, the
scores are not what makes the difference.

Our reading:

* The schedule is a list of ``(step, drops)`` or ``(step, drops, freezes)`` entries, or a
  reference run's events (``summary["drops"]``, :class:`~learndrop.methods.base.Event` objects
  or their dicts, or the whole summary), from which the drops and freezes per step are counted.
* Freezes are copied as well as drops (issue 15): Learn&Drop freezes a unit that has stopped
  learning but is too costly to drop, and its cap (``max_dropped_fraction``) counts frozen
  units too. A random-drop that copied only the drops would end with more units still learning
  than its reference (11 against 7 on ResNet-56, seed 1) and so would not be the same schedule
  with other units; copying both, it removes as many units from training, at the same steps,
  and only the choice of units differs.
* An event's ``step`` is the method's step counter when the unit was dropped, at a check after
  that step's optimizer step; random-drop acts in :meth:`RandomDrop.on_step` when
  ``self.steps`` reaches it, so the change comes after the same optimizer step and the step's
  samples are counted in the FLOPs ledger under the configuration before it, as in the
  reference run. Changes scheduled at step 0 happen at construction.
* After each step's drops the BatchNorm statistics are recomputed from the last
  ``recalibration_batches`` training batches, as Learn&Drop does after its drops
  (:meth:`~learndrop.methods.base.Method.after_change`), so that the comparison isolates the
  choice of units. The drivers pass the batches (``step(n, batch=(x, y))``).
* When the reference rewound its learning-rate schedule after its drops (``lr_rewind_steps``),
  the same rewinds are replayed (:meth:`~learndrop.rewind.ScheduleRewind.replaying`): the
  learning rate of every step is the reference's, so that here too only the units differ (given
  the same schedule options, as the bench runs them; the run builder refuses other ones:
  :func:`learndrop.train.builder.check_reference`).
* When the reference capped what each stage may lose (``max_dropped_fraction_per_stage``, read
  from its ``config.json``), the random units are drawn under the same cap: a unit whose stage
  is at its cap is passed over for the next one drawn. The cap shapes the network left, so a
  random-drop without it would compare the scores with another structure as well as with
  chance.
* The units of a step are drawn with a ``torch.Generator`` seeded from ``(seed, step)``: the
  choice depends only on the seed, the step and the units still live, so a resumed run, and
  every data-parallel process, makes the same choices (they also go through
  :meth:`~learndrop.methods.base.Method.sync_decision`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from learndrop.methods.base import Event, Method, MethodOptionError, RunInfo
from learndrop.methods.registry import register_method
from learndrop.methods.stochastic_depth import step_generator
from learndrop.policy import DropPolicy
from learndrop.rewind import ScheduleRewind
from learndrop.units import Unit, unit_stages

__all__ = ["RandomDrop", "ReferenceOptions", "drop_events", "reference_drops",
           "reference_events", "reference_rewinds", "reference_stage_cap", "reference_summary",
           "replayed_rewinds", "schedule_from"]

EventsLike = Mapping | Iterable[Event | Mapping]
ACTIONS = ("drop", "freeze")


def reference_events(events: EventsLike, method: str) -> list[tuple[str, str, int]]:
    """``(unit, action, step)`` of every drop and freeze in a reference run's events (or its
    whole summary), in the run's order.

    Raises:
        ValueError: not a summary or a list of events, an event without ``unit``, ``action``
            or ``step``, an action other than drop or freeze, a step that is not an integer
            >= 0.
    """
    if isinstance(events, Mapping):
        if "drops" not in events:
            raise ValueError(f"{method}: a mapping must be a run summary with a 'drops' list")
        events = events["drops"]
    out = []
    for event in events:
        if isinstance(event, Event):
            unit, action, step = event.unit, event.action, event.step
        elif isinstance(event, Mapping):
            try:
                unit, action, step = event["unit"], event["action"], event["step"]
            except KeyError as missing:
                raise ValueError(f"{method}: event {event!r} lacks {missing}") from None
        else:
            raise ValueError(f"{method}: expected an Event or an event dict, got {event!r}")
        if action not in ACTIONS:
            raise ValueError(f"{method}: event action must be one of {', '.join(ACTIONS)}, "
                             f"got {action!r}")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"{method}: event step must be an integer >= 0, got {step!r}")
        out.append((unit, action, step))
    return out


def drop_events(events: EventsLike, method: str) -> list[tuple[str, int]]:
    """``(unit, step)`` of every drop in a reference run's events (or its whole summary);
    freezes are left out (a frozen unit stays in the network)."""
    return [(unit, step) for unit, action, step in reference_events(events, method)
            if action == "drop"]


@dataclass(frozen=True)
class ReferenceOptions:
    """Options of the methods that copy a reference run (random-drop, slim-from-scratch).

    Attributes:
        reference: run directory (or its summary.json) of the finished learndrop run whose
            drops and freezes are copied (random-drop: how many at which steps;
            slim-from-scratch: the final structure).
    """

    reference: str | None = None


def reference_dir(reference: str | Path) -> Path:
    """The run directory that ``--reference`` names: the directory itself (or a path without a
    suffix), or the folder of the file given (its ``summary.json``)."""
    path = Path(reference)
    return path if path.is_dir() or not path.suffix else path.parent


def reference_summary(options: ReferenceOptions, method: str, run: RunInfo) -> dict:
    """``options.reference``'s summary.json (``{}`` in a dry run whose reference has not run
    yet).

    Raises:
        MethodOptionError: no reference given, or no finished run there.
    """
    if not options.reference:
        raise MethodOptionError(
            f"--method {method} needs --reference RUN_DIR (a finished learndrop run)")
    path = Path(options.reference)
    if reference_dir(path) == path:
        path = path / "summary.json"
    if not path.is_file():
        if run.dry_run:
            return {}
        raise MethodOptionError(
            f"--reference {options.reference}: no summary.json of a finished run there")
    return _read_record(options, path)


def _read_record(options: ReferenceOptions, path: Path) -> dict:
    """A JSON object that the reference run wrote (its summary or config).

    Raises:
        MethodOptionError: unreadable, not JSON, or not an object.
    """
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict):
            raise ValueError("not a record of a run")
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise MethodOptionError(
            f"--reference {options.reference}: cannot read {path} ({err}); pass a run "
            "directory that learndrop wrote, or train the reference again") from err
    return record


def reference_drops(options: ReferenceOptions, method: str, run: RunInfo) -> list[dict]:
    """The drop and freeze events of ``options.reference``'s summary.json (``[]`` in a dry run
    whose reference has not run yet). Raises as :func:`reference_summary`."""
    summary = reference_summary(options, method, run)
    return [d for d in summary.get("drops", []) if d["action"] in ACTIONS]


def reference_stage_cap(options: ReferenceOptions, method: str, run: RunInfo) -> float:
    """The ``max_dropped_fraction_per_stage`` that ``options.reference`` ran with: its
    ``config.json``'s resolved method options (1.0, no cap, for a run recorded before the option
    existed, or in a dry run whose reference has not run yet). Raises as
    :func:`reference_summary`, and :class:`MethodOptionError` for an unreadable config.json."""
    reference_summary(options, method, run)  # a finished run, or a dry run before it
    path = reference_dir(Path(options.reference)) / "config.json"
    if not path.is_file():
        return 1.0
    resolved = _read_record(options, path).get("method_options_resolved", {})
    if not isinstance(resolved, dict):
        raise MethodOptionError(
            f"--reference {options.reference}: {path} holds no method options; pass a run "
            "directory that learndrop wrote, or train the reference again")
    return resolved.get("max_dropped_fraction_per_stage", 1.0)


def reference_rewinds(options: ReferenceOptions, method: str, run: RunInfo) -> list[dict]:
    """The learning-rate rewinds of ``options.reference`` (its ``schedule_rewinds``: ``[]``
    for a run that made none). Raises as :func:`reference_summary`."""
    return list(reference_summary(options, method, run).get("schedule_rewinds", []))


def replayed_rewinds(method: str, rewinds: Sequence[dict],
                     total_steps: int | None) -> ScheduleRewind | None:
    """The schedule that replays a reference run's learning-rate rewinds (``None`` for none).

    Raises:
        MethodOptionError: rewinds without the run's length, or not of a run of this length.
    """
    if not rewinds:
        return None
    if total_steps is None:
        raise MethodOptionError(
            f"{method}: the reference run rewound its learning-rate schedule, and replaying "
            f"that needs this run's length: pass total_steps")
    try:
        return ScheduleRewind.replaying(total_steps, rewinds)
    except ValueError as err:
        raise MethodOptionError(f"{method}: {err} (the reference must have the same length)"
                                ) from err


def _is_event(entry: object) -> bool:
    return isinstance(entry, Event | Mapping)


def schedule_from(
        schedule: EventsLike | Sequence[tuple[int, ...]]) -> list[tuple[int, int, int]]:
    """Normalise a schedule to sorted ``(step, drops, freezes)`` triples, one per step.

    Args:
        schedule: ``(step, drops)`` pairs, ``(step, drops, freezes)`` triples (both: integers,
            step >= 0, at least one unit per entry), or a reference run's events or summary.

    Raises:
        ValueError: a malformed entry, or events mixed with pairs.
    """
    entries = schedule if isinstance(schedule, Mapping) else list(schedule)
    if isinstance(entries, Mapping) or (entries and all(_is_event(e) for e in entries)):
        triples = [(step, int(action == "drop"), int(action == "freeze"))
                   for _, action, step in reference_events(entries, "random-drop")]
    else:
        triples = [_schedule_entry(entry) for entry in entries]
    counts: dict[int, tuple[int, int]] = {}
    for step, drops, freezes in triples:
        d, f = counts.get(step, (0, 0))
        counts[step] = (d + drops, f + freezes)
    return sorted((step, d, f) for step, (d, f) in counts.items())


def _schedule_entry(entry: object) -> tuple[int, int, int]:
    """One ``(step, drops[, freezes])`` entry as a checked triple."""
    if (_is_event(entry) or isinstance(entry, str | bytes) or not isinstance(entry, Sequence)
            or len(entry) not in (2, 3)):
        raise ValueError(
            f"random-drop: schedule entries must all be (step, drops[, freezes]) or all "
            f"events, got {entry!r}"
        )
    step, drops, freezes = (*entry, 0) if len(entry) == 2 else entry
    for what, value in (("step", step), ("drops", drops), ("freezes", freezes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"random-drop: {what} must be an integer >= 0, got {value!r}")
    if drops + freezes < 1:
        raise ValueError(f"random-drop: entry {entry!r} changes no unit")
    return step, drops, freezes


@register_method("random-drop", options=ReferenceOptions)
class RandomDrop(Method):
    """Drops and freezes random live units at each scheduled ``step``: as many as the
    schedule says.

    Args:
        schedule: ``(step, drops)`` pairs, ``(step, drops, freezes)`` triples, or a reference
            run's events / summary (see :func:`schedule_from`).
        seed: seed of the choices.
        recalibration_batches: recent training batches from which the BatchNorm statistics
            are recomputed after a drop (0 = none; default as :class:`~learndrop.DropPolicy`).
        schedule_rewinds: the reference run's learning-rate rewinds (its summary's
            ``schedule_rewinds``), replayed at the same steps; the driver attaches its
            schedule (:meth:`~learndrop.methods.base.Method.attach_schedule`).
        total_steps: the run's length in steps; needed with ``schedule_rewinds``.
        max_dropped_fraction_per_stage: the reference's cap per stage (as
            :class:`~learndrop.DropPolicy`'s; 1.0, the default, is none): the units are drawn
            among those whose stage (:func:`learndrop.units.unit_stages`) is below its cap.
        Other arguments: see :class:`learndrop.methods.base.Method`.

    Attributes:
        schedule: the normalised schedule, sorted ``(step, drops, freezes)`` triples.
    """

    drops_in_training = True

    needs_reference = True

    @classmethod
    def option_kwargs(cls, options: ReferenceOptions, run: RunInfo) -> dict:
        return {"schedule": reference_drops(options, cls.name, run), "seed": run.seed,
                "schedule_rewinds": reference_rewinds(options, cls.name, run),
                "total_steps": run.total_steps,
                "max_dropped_fraction_per_stage": reference_stage_cap(options, cls.name, run)}

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        example_input: torch.Tensor,
        *,
        schedule: EventsLike | Sequence[tuple[int, ...]],
        seed: int = 0,
        recalibration_batches: int = DropPolicy.recalibration_batches,
        schedule_rewinds: Sequence[dict] = (),
        total_steps: int | None = None,
        max_dropped_fraction_per_stage: float = 1.0,
        units: list[Unit] | None = None,
        unit_names: Iterable[str] | None = None,
        steps_per_check: int | None = None,
    ) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if isinstance(recalibration_batches, bool) or not isinstance(
                recalibration_batches, int) or recalibration_batches < 0:
            raise ValueError(f"recalibration_batches must be an integer >= 0, got "
                             f"{recalibration_batches!r}")
        self.recalibration_batches = recalibration_batches
        triples = schedule_from(schedule)
        super().__init__(
            model, optimizer, example_input,
            units=units, unit_names=unit_names, steps_per_check=steps_per_check,
        )
        total = sum(d + f for _, d, f in triples)
        if total > len(self.units):
            raise ValueError(
                f"random-drop: the schedule drops or freezes {total} units, the model has "
                f"{len(self.units)}"
            )
        cap = max_dropped_fraction_per_stage
        self.stage_policy = DropPolicy(max_dropped_fraction_per_stage=cap)  # checks it
        self._stages = (unit_stages(model, example_input, self.units) if cap < 1 else None)
        if self._stages is not None:
            room = sum(self.stage_policy.stage_room(self._stages, ()).values())
            if total > room:
                raise ValueError(
                    f"random-drop: the schedule drops or freezes {total} units, and a cap of "
                    f"{cap} per stage lets {room} go; the reference did not run with this cap")
        self.schedule = triples
        self.seed = seed
        self.schedule_rewind = replayed_rewinds(self.name, schedule_rewinds, total_steps)
        self._counts = {step: (d, f) for step, d, f in triples}
        if 0 in self._counts:
            self._act(*self._counts[0])

    def choose(self, count: int) -> list[Unit]:
        """The ``count`` live units the seed picks at the current step, in the order drawn
        (the first ones are dropped, the rest frozen); under a cap per stage, a unit whose
        stage is full is passed over for the next one drawn."""
        live = self.live_units
        generator = step_generator(self.seed, self.steps, self.name)
        order = [live[i] for i in torch.randperm(len(live), generator=generator).tolist()]
        if self._stages is None:
            return order[:count]
        room = self.stage_policy.stage_room(self._stages, set(self.removed))
        picked = []
        for unit in order:
            if len(picked) == count:
                break
            if room[self._stages[unit.name]] > 0:
                room[self._stages[unit.name]] -= 1
                picked.append(unit)
        return picked

    def _act(self, drops: int, freezes: int) -> list[Event]:
        # The choice is already the same on every process with the same seed; sync_decision
        # makes it rank 0's even when the seeds differ. Drops come first in the draw, so a
        # schedule without freezes drops the units it dropped before freezes were copied.
        chosen = self.choose(drops + freezes)
        in_order = [*sorted(chosen[:drops], key=lambda u: u.index),
                    *sorted(chosen[drops:], key=lambda u: u.index)]
        names = self.sync_decision([u.name for u in in_order])
        by_name = {u.name: u for u in self.units}
        return [self.apply(by_name[name], "drop" if i < drops else "freeze")
                for i, name in enumerate(names)]

    def on_step(self) -> list[Event]:
        counts = self._counts.get(self.steps)
        return self._act(*counts) if counts else []

    def state_dict(self) -> dict:
        return {**super().state_dict(), "seed": self.seed,
                "schedule": [list(t) for t in self.schedule]}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed") != self.seed:
            raise ValueError(f"checkpoint has seed={state.get('seed')!r}, this method {self.seed}")
        # Checkpoints from before freezes were copied hold (step, drops) pairs.
        saved = schedule_from([tuple(p) for p in state.get("schedule", [])])
        if saved != self.schedule:
            old = "drops only, from before freezes were copied" if all(
                f == 0 for _, _, f in saved) and any(f for _, _, f in self.schedule) else "other"
            raise ValueError(f"the checkpoint's random-drop schedule ({old}: (step, drops, "
                             f"freezes) {saved}) is not the reference's ({self.schedule})")
        # Step-0 changes were made at construction; the checkpoint's events re-apply them.
        self.events = []
        super().load_state_dict(state)

    def summary(self) -> dict:
        return {**super().summary(), "seed": self.seed,
                "schedule": [list(t) for t in self.schedule],
                "max_dropped_fraction_per_stage": self.stage_policy.max_dropped_fraction_per_stage}
