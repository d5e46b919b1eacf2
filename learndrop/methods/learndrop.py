"""Learn&Drop: score every unit at each check and drop the ones that have stopped learning.

At each check (after the warm-up): score the live units (:mod:`learndrop.scores`); measure the
check loss on the recent training batches and hold back while it rises
(:meth:`DropPolicy.is_stable`); measure the drop cost of the units that are ready
(:mod:`learndrop.drop_cost`); drop the cheap ones, leave the costly ones to train (or, with
``costly_units="freeze"``, freeze them), cheapest first
(:meth:`DropPolicy.decide`); after a drop, recompute the BatchNorm statistics from the recent
batches (:mod:`learndrop.recalibrate`, :meth:`Method.after_change`). With
``policy.fade_steps``, a unit decided for dropping first fades out over that many steps
(:class:`learndrop.surgery.Fade`) and is dropped, and BatchNorm recalibrated, when the fade ends;
a run that stops early settles fades still under way at :meth:`Method.finish`. With
``policy.lr_rewind_steps``, the learning-rate schedule is rewound after every drop
(:mod:`learndrop.rewind`; the driver attaches its schedule, :meth:`Method.attach_schedule`).
Every extra forward pass is charged to the FLOPs ledger and its time to ``check_time_s``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from learndrop.drop_cost import LossFn, batch_loss, drop_costs, joint_drop_cost
from learndrop.flops import unit_costs
from learndrop.methods.base import Event, Method, MethodOptionError, RunInfo
from learndrop.methods.registry import register_method
from learndrop.policy import DropPolicy, FreezePolicy
from learndrop.rewind import ScheduleRewind
from learndrop.scores import ScoreTracker, UnitScore
from learndrop.surgery import Fade
from learndrop.units import Unit, unit_stages

__all__ = ["Freeze", "LearnDrop"]


@register_method("learndrop", options=DropPolicy)
class LearnDrop(Method):
    """Learn&Drop as a driver of an ordinary training loop.

    Example::

        ld = LearnDrop(model, optimizer, example_input, steps_per_check=len(loader))
        for epoch in range(epochs):
            for x, y in loader:
                loss_fn(model(x), y).backward(); optimizer.step(); optimizer.zero_grad()
                ld.step(len(x), batch=(x, y))   # scores and drops once per epoch
        ld.summary()

    A loop that stops before ``total_steps`` (early stopping, a time limit) calls
    ``ld.finish()`` before its final evaluation: a unit still fading out then leaves or stays
    (:meth:`on_finish`).

    Only units that learn are scored and can be dropped (a unit the user froze is left alone;
    one unfrozen later is scored from then on), and a decision never removes the unit that holds
    the model's last trainable parameters (:meth:`~learndrop.methods.base.Method.keep_trainable`),
    even with ``max_dropped_fraction=1.0``.

    The last ``max(policy.cost_batches, policy.recalibration_batches)`` batches passed to
    :meth:`step` are kept for the check; a loop that passes none gets a one-line
    :class:`~learndrop.methods.base.MissingBatchesError` at the first check (turn both off in
    the policy to run without batches: ``cost_batches=0, max_drop_cost=inf, max_loss_rise=inf,
    recalibration_batches=0``).

    Args:
        mode: ``"drop"`` removes units from the network (and leaves those too costly to drop
            to train, or freezes them: ``policy.costly_units``);
            ``"freeze"`` freezes every unit it acts on (the baseline of the same scores).
        policy: the drop decision's hyperparameters (:class:`DropPolicy`).
        total_steps: the run's length in steps, when known: no unit is dropped at the last
            check (nothing would be saved, and the network would end untrained after the drop).
            Required with ``policy.fade_steps`` (a fade must end before the run does).
        loss_fn: ``loss_fn(logits, y)`` of the check loss and the drop costs, a batch mean
            (default cross-entropy; it should be the training loss).
        Other arguments: see :class:`learndrop.methods.base.Method`.

    Options (``--method learndrop``): the fields of :class:`DropPolicy`.

    Raises:
        MethodOptionError: ``policy.fade_steps`` or ``policy.lr_rewind_steps`` without
            ``total_steps``.
    """

    drops_in_training = True

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        example_input: torch.Tensor,
        *,
        policy: DropPolicy | None = None,
        mode: str = "drop",
        units: list[Unit] | None = None,
        unit_names: Iterable[str] | None = None,
        steps_per_check: int | None = None,
        total_steps: int | None = None,
        loss_fn: LossFn = F.cross_entropy,
    ) -> None:
        if mode not in ("drop", "freeze"):
            raise ValueError(f"mode must be 'drop' or 'freeze', got {mode!r}")
        policy = policy or (FreezePolicy() if mode == "freeze" else DropPolicy())
        if mode == "freeze" and not isinstance(policy, FreezePolicy):
            policy = FreezePolicy(**policy.to_dict())  # refuses costly_units="keep"
        super().__init__(
            model, optimizer, example_input,
            units=units, unit_names=unit_names, steps_per_check=steps_per_check,
        )
        if policy.fade_steps and total_steps is None:
            raise MethodOptionError(
                f"fade_steps={policy.fade_steps} needs the run's length (a fade must end before "
                "the run does), and this run has none (a stream of unknown length?): pass "
                "total_steps, or leave fade_steps out")
        if policy.lr_rewind_steps and total_steps is None:
            raise MethodOptionError(
                f"lr_rewind_steps={policy.lr_rewind_steps} needs the run's length (the rest of "
                "the schedule is compressed into the steps left), and this run has none (a "
                "stream of unknown length?): pass total_steps (--stream-length on a stream), or "
                "leave lr_rewind_steps out")
        self.mode = mode
        if mode == "freeze":
            self.name = "freeze"  # its checkpoints resume as --method freeze
        self.total_steps = total_steps
        self.policy = policy
        if policy.lr_rewind_steps and mode == "drop":
            self.schedule_rewind = ScheduleRewind(total_steps, policy.lr_rewind_steps)
        self.loss_fn = loss_fn
        # Freezing keeps the forward pass as it is: nothing to recalibrate.
        self.recalibration_batches = self.policy.recalibration_batches if mode == "drop" else 0
        self.tracker = ScoreTracker(
            model, self.units, optimizer,
            trend_window=self.policy.trend_window, warmup_checks=self.policy.warmup_checks,
            normalization=self.policy.normalization,
        )
        self.streaks: dict[str, int] = {}
        self.last_scores: dict[str, UnitScore] = {}
        self.last_costs: dict[str, float] = {}  # drop costs measured at the last check
        self.last_joint_cost: float | None = None  # its drops measured together ("joint")
        self.check_losses: list[float] = []  # the check loss of every check so far
        # Units fading out before their drop: name -> (fade, steps faded so far, the scores
        # their drop event will carry).
        self.fading: dict[str, tuple[Fade, int, dict]] = {}
        # The highest learning rate so far (``min_lr_fraction``), updated at every step.
        self.peak_lr = 0.0
        # Forward FLOPs per sample of each unit, to charge the bypassed passes to the ledger.
        self._unit_fwd = ({n: c.fwd for n, c in unit_costs(model, example_input,
                                                           self.units).items()}
                          if self.policy.cost_batches else {})
        # Each unit's stage (its activation shape), for max_dropped_fraction_per_stage.
        self._stages = (unit_stages(model, example_input, self.units)
                        if policy.max_dropped_fraction_per_stage < 1 else None)

    @property
    def batches_needed(self) -> int:
        return max(self.policy.cost_batches, self.recalibration_batches)

    @classmethod
    def option_kwargs(cls, options: DropPolicy, run: RunInfo) -> dict:
        return {"policy": options, "total_steps": run.total_steps}

    def metrics(self) -> dict:
        """The base row plus each unit scored at the last check: its scores (change, ratio,
        slope, continuation), its measured drop cost (None where not measured) and the action
        taken on it (None while it is live); with ``decision_cost="joint"`` also the last check's
        drops' cost measured together (``joint_cost``, nats; None where fewer than two were
        tried)."""
        row = {**super().metrics(), "scores": {
            u: {"change": s.change, "ratio": s.ratio, "slope": s.slope,
                "continuation": s.continuation, "drop_cost": self.last_costs.get(u),
                "action": self.removed.get(u, "fade" if u in self.fading else None)}
            for u, s in self.last_scores.items()},
            "fading": sorted(self.fading)}
        if self.policy.decision_cost == "joint":
            # The last check's drops measured together (None: fewer than two were tried).
            row["joint_cost"] = self.last_joint_cost
        return row

    def on_step(self) -> list[Event]:
        self.tracker.accumulate_lr()
        self.peak_lr = max(self.peak_lr, self.lr_now)
        return self._advance_fades()

    def _advance_fades(self) -> list[Event]:
        """One more step of every fade (its blend weight ``a`` rises by ``1 / fade_steps``);
        drop the units whose fade is complete."""
        events = []
        by_name = {u.name: u for u in self.units}
        for name, (fade, done, scores) in list(self.fading.items()):
            done += 1
            if done < self.policy.fade_steps:
                fade.alpha = done / self.policy.fade_steps
                self.fading[name] = (fade, done, scores)
                continue
            events.append(self._drop_faded(by_name[name]))
        return events

    def _stop_fade(self, unit: Unit) -> dict:
        """End ``unit``'s fade (its blend hook goes) and return the scores it was chosen on;
        :meth:`_drop_faded` and :meth:`_keep_faded` say what becomes of the unit."""
        fade, _, scores = self.fading.pop(unit.name)
        fade.remove()
        return scores

    def _drop_faded(self, unit: Unit) -> Event:
        """The fade ends with the unit dropped: the event, with the scores it was chosen on."""
        return self.apply(unit, "drop", **self._stop_fade(unit))

    def _keep_faded(self, unit: Unit) -> None:
        """The fade ends with the unit left in the network, live and scored again like any
        other (no event)."""
        self._stop_fade(unit)
        self.tracker.units[unit.name] = unit
        self.streaks[unit.name] = 0

    def on_finish(self) -> list[Event]:
        """Settle every fade at its nearer end, so that the final network computes what it
        computed at the last step as closely as one without the blend can: a unit at least
        half faded out (``alpha >= 0.5``) is dropped (an event, as at the fade's end), one
        less so stays in the network as it is (no event), and BatchNorm is recalibrated either
        way (the statistics were gathered with the blend). Only a run that stops early can
        end mid-fade (no fade starts that could not end before ``total_steps``)."""
        if not self.fading:
            return []
        by_name = {u.name: u for u in self.units}
        events = []
        for name, (fade, _, _) in list(self.fading.items()):
            # Kept units are scored again if training goes on (a Lightning fit continued from
            # a checkpoint saved after it ended), as a resumed run would.
            if fade.alpha >= 0.5:
                events.append(self._drop_faded(by_name[name]))
            else:
                self._keep_faded(by_name[name])
        self.structure_version += 1  # the hooks are gone: a compiled forward is rebuilt
        if not events:
            self.recalibrate()  # the drops' events recalibrate through after_change
        return events

    @property
    def changing(self) -> bool:
        return bool(self.fading)

    def _trainable_ids(self) -> set[int]:
        """Parameters that learn now and will go on learning: a fading unit's are leaving."""
        leaving = {id(p) for fade, _, _ in self.fading.values()
                   for p in fade.unit.parameters(self.model)}
        return super()._trainable_ids() - leaving
    @property
    def lr_now(self) -> float:
        """The learning rate now: the largest of the param groups' (a schedule scales them
        alike)."""
        return max(g["lr"] for g in self.optimizer.param_groups)

    def on_check(self) -> list[Event]:
        if self.batches_needed:
            self.require_batches("measure the check loss and drop costs and recalibrate "
                                 "BatchNorm")
        scores = self.tracker.check()
        self.last_scores = scores
        self.last_costs, self.last_joint_cost = {}, None
        for name, score in scores.items():
            candidate = self.policy.is_candidate(score)
            self.streaks[name] = self.streaks.get(name, 0) + 1 if candidate else 0
        if (self.total_steps is not None
                and self.steps + self.policy.fade_steps >= self.total_steps):
            # A drop after the last step saves nothing and leaves the final network with stale
            # BatchNorm statistics downstream (and a fade must end before the run does): score,
            # but do not act.
            return []
        gone = len(self.removed) + len(self.fading)
        if not self.policy.drops_allowed(len(self.units), gone):
            return []  # the cap is reached for good: nothing left to measure or decide
        if not self.policy.lr_allows(self.lr_now, self.peak_lr):
            return []  # the low-rate tail: nothing to decide, so nothing measured
        stage_kwargs, room = {}, None
        if self._stages is not None:
            stage_kwargs = {"stages": self._stages, "gone": {*self.removed, *self.fading}}
            room = self.policy.stage_room(**stage_kwargs)
            if max(room.values()) <= 0:
                return []  # every stage is at its cap, for good
        if self.policy.cost_batches:
            ready = self.policy.ready(scores, self.streaks, check=self.checks)
            if room is not None:
                # Units whose stage is at its cap cannot go: their bypassed passes would be
                # paid for nothing.
                ready = [n for n in ready if room[self._stages[n]] > 0]
            self._measure(ready)
        # Never the last trainable unit: with every parameter gone, backward() would fail.
        decided = self.keep_trainable(self.policy.decide(
            scores, self.streaks, check=self.checks, units_total=len(self.units),
            units_dropped=gone, costs=self.last_costs, losses=self.check_losses,
            fwd_flops=self._unit_fwd, **stage_kwargs,
        ))
        if self.policy.decision_cost == "joint":
            # Each data-parallel process trims on its own batches; rank 0's result is the one
            # applied (below), so the others' tries are spent for nothing, but cheap.
            drops = [n for n in decided if self._action(n) == "drop"]
            kept, self.last_joint_cost = self.policy.trim(drops, self._joint_cost)
            decided = [n for n in decided if n in kept or n not in drops]
        actions = [self._action(name) for name in decided]
        # Every data-parallel process applies rank 0's decision, actions included (each
        # process measured the costs on its own batches): "action:unit" entries.
        synced = self.sync_decision([f"{a}:{n}" for a, n in zip(actions, decided)])
        by_name = {u.name: u for u in self.units}
        events = []
        for entry in synced:
            action, _, name = entry.partition(":")
            if action not in ("drop", "freeze") or name not in by_name:
                raise ValueError(f"the synced decision holds {entry!r}; Learn&Drop's entries "
                                 "are 'drop:UNIT' or 'freeze:UNIT'")
            score = scores.get(name)  # None only if another process's scores differed
            recorded = {"change_score": score.change if score else None,
                        "continuation_score": score.continuation if score else None,
                        "drop_cost": self.last_costs.get(name)}
            self.tracker.forget(name)
            if action == "drop" and self.policy.fade_steps:
                self.before_change()
                self.fading[name] = (Fade(self.model, by_name[name]), 0, recorded)
                continue
            events.append(self.apply(by_name[name], action, **recorded))
        if any(n in self.fading for n in decided):
            # A compiled or DDP-wrapped forward is rebuilt and sees the fades' hooks.
            self.structure_version += 1
        return events

    def _action(self, name: str) -> str:
        return "freeze" if self.mode == "freeze" else self.policy.action(self.last_costs.get(name))

    def _joint_cost(self, names: list[str]) -> float:
        """The cost of dropping the units ``names`` together, on the cost batches against this
        check's loss (:func:`learndrop.drop_cost.joint_drop_cost`); the pass is charged to the
        ledger."""
        batches = self.require_batches("measure a decision's cost")[-self.policy.cost_batches:]
        by_name = {u.name: u for u in self.units}
        cost = joint_drop_cost(self.model, [by_name[n] for n in names], batches, self.loss_fn,
                               base=self.check_losses[-1])
        self._charge_passes(batches, [names])
        return cost

    def recent_batch_loss(self) -> float | None:
        """The mean loss on the last ``cost_batches`` recent batches, BatchNorm in training
        mode, as the drop costs are measured (:func:`learndrop.drop_cost.batch_loss`; nats per
        sample); ``None`` without cost batches. Not charged to the ledger: it is read only with
        the tests around drops."""
        batches = list(self.recent_batches)[-self.policy.cost_batches:]
        if not self.policy.cost_batches or not batches:
            return None
        return batch_loss(self.model, batches, self.loss_fn)

    def _measure(self, names: list[str]) -> None:
        """Measure the check loss (appended to ``check_losses``) and the drop costs of the
        units ``names`` on the recent batches; charge the passes to the ledger."""
        batches = self.require_batches("measure the check loss and drop costs")
        batches = batches[-self.policy.cost_batches:]
        by_name = {u.name: u for u in self.units}
        loss, self.last_costs = drop_costs(self.model, [by_name[n] for n in names], batches,
                                           self.loss_fn)
        self.check_losses.append(loss)
        self._charge_passes(batches, [[], *([n] for n in names)])

    def _charge_passes(self, batches: list, bypassed: list[list[str]]) -> None:
        """Charge the ledger one forward pass over ``batches`` for each list of units in
        ``bypassed``, those units skipped (an empty list: the whole live network)."""
        fwd = self.ledger.cost(self.flops_key()).fwd
        samples = sum(len(y) for _, y in batches)
        self.ledger.record_extra(samples * sum(fwd - sum(self._unit_fwd[n] for n in skipped)
                                               for skipped in bypassed))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "tracker": self.tracker.state_dict(),
                "streaks": dict(self.streaks), "policy": self.policy.to_dict(),
                "check_losses": list(self.check_losses), "peak_lr": self.peak_lr,
                "total_steps": self.total_steps,
                "fading": {n: {"steps": done, "scores": dict(scores)}
                           for n, (_, done, scores) in self.fading.items()}}

    def load_state_dict(self, state: dict) -> None:
        # state["total_steps"] (the run's length when saved) is read by drivers that cannot
        # know the length before the data are set up (the Lightning callback on resume); the
        # method keeps the one it was built with: a resumed run may have been made longer.
        super().load_state_dict(state)
        self.tracker.load_state_dict(state["tracker"])
        self.streaks = dict(state["streaks"])
        self.check_losses = list(state.get("check_losses", []))
        # Checkpoints before min_lr_fraction: the peak is rebuilt from the next step on (a
        # guard with the default 0 does not read it).
        self.peak_lr = state.get("peak_lr", 0.0)
        by_name = {u.name: u for u in self.units}
        for fade, _, _ in self.fading.values():
            fade.remove()
        self.fading = {}
        if state.get("fading") and not self.policy.fade_steps:
            raise ValueError("the state holds units fading out, and this run's policy has "
                             "fade_steps=0: resume with the fade_steps it was saved with")
        for name, record in state.get("fading", {}).items():
            self.tracker.forget(name)  # leaving: not scored, as in the run that saved it
            done = record["steps"]
            fade = Fade(self.model, by_name[name], alpha=done / self.policy.fade_steps)
            self.fading[name] = (fade, done, dict(record["scores"]))


@register_method("freeze", options=FreezePolicy)
class Freeze(LearnDrop):
    """Learn&Drop's scores and policy, freezing units instead of dropping them (the baseline
    that keeps the forward pass and saves only weight gradients). It measures drop costs as
    Learn&Drop does and freezes the cheapest ready units first: freezing in the scores' order
    instead, without the measurements, cost 0.45-0.65 point more on the fine-tuning bench for
    3-4% fewer FLOPs (``benchmarks/results/finetune-bench/freeze-score-order/``)."""

    drops_in_training = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, mode="freeze", **kwargs)
