"""Deciding: which live units to drop (or freeze) at a check.

A unit is a *candidate* when its change score ratio (:mod:`learndrop.scores`: its speed relative
to the median live unit by default, to its own peak with ``normalization="per-unit"``) is at or
below ``change_threshold`` and its trend is not rising (``slope <= max_slope``). It is *ready*
once it has been a candidate for ``patience`` consecutive checks. Ready units are acted on
cheapest measured drop cost first (lowest continuation score first when no cost was measured),
within the guards: no decision during the ``warmup_checks`` first checks, none while training is
unstable (below), none once the learning rate has decayed below ``min_lr_fraction`` of its peak
(0.5 by default), at most ``max_drops_per_check`` per check, and never more than
``max_dropped_fraction`` of all units dropped or frozen in total (and, optionally, never more than
``max_dropped_fraction_per_stage`` of one stage's). A unit is never acted on twice.

The action (:meth:`DropPolicy.action`): a ready unit whose measured drop cost (the training-loss
increase with it bypassed, :mod:`learndrop.drop_cost`) is at most ``max_drop_cost`` nats is
dropped; one that has stopped learning but still matters is left to train (measured again at
the next check), or, with ``costly_units="freeze"``, frozen (it keeps running forward and saves
its backward pass: on a plain network that cost more than it saved, see ``costly_units``).
``max_drop_cost`` is also the budget of one check: the units dropped at a check cost at most
that much together (each unit's cost was measured with the others in place, so the sum is what
the check's drops are expected to cost), and a cheap unit that no longer fits waits for the next
check, measured again there. Several units' costs under-add (ResNet-56: removing 2-6 units
together raised the test loss 1.0-3.2x their summed costs), so with ``decision_cost="joint"``
the chosen drops are also measured together, all bypassed at once, and the last in the ranking
leave the decision until that cost fits (:meth:`DropPolicy.trim`).

Stability (:meth:`DropPolicy.is_stable`): the check loss (the mean training loss on the recent
batches, measured at every check) must not exceed the lowest of the previous ``trend_window``
check losses by more than the fraction ``max_loss_rise``. A rising loss means the network is
still moving between basins (deep networks at a high learning rate in their first epochs), and
what it does without a unit now says little about what it will do later.

The defaults were chosen on the proof regime (ResNet-56, CIFAR-10, 20,000 images, 10 epochs);
``docs/method-card.md`` holds the evidence ("Calibration") and the paper-reading rule they
replace (``normalization="per-unit", change_threshold=0.5``, no cost measurement).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass

from learndrop.scores import NORMALIZATIONS, UnitScore

__all__ = ["COSTLY_UNITS", "DECISION_COSTS", "RANKINGS", "DropPolicy", "FreezePolicy",
           "PolicyError"]

#: What :class:`DropPolicy` does with a ready unit too costly to drop.
COSTLY_UNITS = ("freeze", "keep")
RANKINGS = ("cost", "cost-per-flop")
#: How :class:`DropPolicy` prices a check's drops against ``max_drop_cost``.
DECISION_COSTS = ("sum", "joint")


class PolicyError(ValueError):
    """An impossible policy hyperparameter."""


@dataclass(frozen=True)
class DropPolicy:
    """Hyperparameters of the drop decision (validated on construction).

    Attributes:
        warmup_checks: checks with no decision; their scores also stay out of the running peak.
        change_threshold: candidate when the score's ratio is at or below this (> 0):
            with ``normalization="median"`` 1.0 means "at most as fast as the median unit"
            (the slower half), with ``"per-unit"`` 0.5 means "slowed to half its own peak"; a
            large value makes every unit whose trend is not rising a candidate.
        max_slope: candidate only when the log-change trend is at or below this (0 = not rising).
        trend_window: checks over which the trend is fitted (>= 2).
        patience: consecutive candidate checks needed before a drop (>= 1).
        max_drops_per_check: an int >= 1 is a count; a float in (0, 1] a fraction of all units
            (at least one unit).
        max_dropped_fraction: cap on the fraction of all units ever dropped or frozen
            (0 <= x <= 1).
        max_dropped_fraction_per_stage: cap on the fraction of each stage's units ever dropped
            or frozen, rounded down (0 <= x <= 1; 1, the default, is off). A stage is a run of
            consecutive units of one activation shape (:func:`learndrop.units.unit_stages`: the
            blocks between two downsamplings of a ResNet). With 0.75 on a CIFAR ResNet-56
            (stages of 9, 8 and 8 droppable blocks) at most 6 of each go, so the deepest cut is
            ResNet-20's three blocks per stage; without it the drops emptied the middle stage,
            and that unbalanced network trained from scratch ended 0.2-0.6 point below ResNet-20
            at the same FLOPs (``docs/method-card.md``, "A cap per stage"). Off by default:
            in fine-tuning ResNet-20 (stages of 3, 2 and 2 units) it moved a drop into the last
            stage and cost 0.85 point.
        normalization: ``"median"`` divides each change score by the median of the live units
            at the same check (the schedule alone decides nothing); ``"per-unit"`` keeps each
            unit's own learning-rate normalised reading (:mod:`learndrop.scores`).
        cost_batches: recent training batches on which the check loss and the drop costs are
            measured (>= 0; 0 turns cost measurement, freezing fallback and the stability
            guard off: ready units are then dropped, lowest continuation first).
        max_drop_cost: a ready unit whose drop cost is at most this (nats per sample) is
            dropped, a costlier one left to train (or frozen: ``costly_units``); the drops of
            one check cost at most this in sum (>= 0; ``inf`` drops every ready unit).
        decision_cost: how a check's drops are priced against ``max_drop_cost``: ``"sum"``
            (the default: their costs, each measured with the others in place, add up to at
            most the budget) or ``"joint"`` (also measured together, all bypassed at once on
            the same batches, and the last in the ranking (the costliest with
            ``rank_by="cost"``) leave the decision until that cost fits: one
            more forward pass per sample of the cost batches for each try; a single unit is its
            own cost). Several units' costs under-add: on ResNet-56 (CIFAR-10, 21 decisions)
            the test loss rose 1.0-3.2x the summed costs of 2-6 units dropped together, where
            one unit's cost matched its rise within 0.022 nats (``docs/method-card.md``, "The
            measured drop cost against the test set"). Needs ``cost_batches >= 1`` and a
            finite ``max_drop_cost``.
        max_loss_rise: no decision while the check loss exceeds the lowest of the previous
            ``trend_window`` ones by more than this fraction (>= 0; ``inf`` turns it off).
        costly_units: what becomes of a ready unit whose drop cost is above ``max_drop_cost``:
            ``"keep"`` (the default: it stays live and trained, and is measured again at the
            next check) or ``"freeze"`` (it keeps running forward, saves its backward pass, and
            can no longer adapt to the drops around it). Freezing was the default until the
            proof regime showed it costly (``docs/method-card.md``, "Costly units are left to
            train"). ``--method freeze`` freezes every unit it acts on: ``"freeze"`` only.
        recalibration_batches: recent training batches from which the BatchNorm statistics
            are recomputed after a drop (>= 0; 0 = no recalibration).
        rank_by: the order in which ready units with measured costs are taken: ``"cost"``
            (the default: lowest drop cost first) or ``"cost-per-flop"`` (lowest drop cost
            per forward FLOP the drop saves first: the greedy rule of the knapsack problem
            "save the most FLOPs for a loss increase of at most ``max_drop_cost``"). The two
            agree where every unit costs the same FLOPs (CIFAR ResNets: every identity block of
            every stage); on VGG-16 a 512-channel convolution at 2x2 saves a quarter of what
            one at 4x4 does, and ``"cost"`` may spend the budget on it. Units whose removal
            lowers the loss (cost <= 0, free of the budget) go first, the largest first. For
            ``--method freeze`` the forward FLOPs stand in for the backward work a freeze saves
            (a convolution's weight gradient costs what its forward does). Needs
            ``cost_batches >= 1``.
        min_lr_fraction: no decision once the learning rate has fallen below this fraction of
            its highest value so far (in [0, 1); 0 turns it off). A unit removed in the
            low-rate tail of a schedule leaves the rest of the network too few large steps to
            take over its work: on the fine-tuning bench the third drop, made at 0.61 of the
            peak rate, cost 1.6 points (5 seeds). Default 0.5 (since session 33): it gained
            0.35 to 1.23 points in each of five paired runs where it held a drop back, under
            cosine and warmup-stable-decay, for 0.1-3.5% more FLOPs, and changed nothing where
            no drop came late (``docs/method-card.md``, "Late drops in pairs"); 0.65 moved
            along the accuracy-for-FLOPs line, not above it ("Late drops"). A constant rate
            (streams) never trips it; a step schedule trips it at its first cut below half the
            peak, after which nothing more is dropped (pass 0 to let decisions go on there:
            the scores themselves are schedule-proof).
        fade_steps: optimizer steps over which a unit decided for dropping fades out before it
            is removed (>= 0; 0, the default, removes it at the check): its output is blended
            with its input, ``(1 - a) * F(x) + a * x``, ``a`` rising linearly from 0 at the
            check to 1 after ``fade_steps`` steps, when the unit is dropped and BatchNorm
            recalibrated (:class:`learndrop.surgery.Fade`). The unit costs its full forward and
            backward work while it fades; the rest of the network learns to do without it
            before it goes. A fade must end before the run does: it needs the run's length
            (not a stream of unknown length), and no fade starts that could not end at least
            one step before the last. Counts toward ``max_drops_per_check`` and
            ``max_dropped_fraction`` from its start. Freezes do not fade (a frozen unit keeps
            its function).
        lr_rewind_steps: after every check (or fade's end) that drops units, move the
            learning-rate schedule back by up to this many optimizer steps, to its highest rate
            among them, and compress the rest of the schedule into the steps left (>= 0; 0,
            the default, leaves the schedule alone; nothing moves where no earlier point has a
            higher rate: a constant rate, the warm-up):
            learning-rate rewinding (Renda et al., ICLR 2020), cost-neutral
            (:mod:`learndrop.rewind`). Needs the run's length and a step-indexed ``LambdaLR``
            (:meth:`~learndrop.methods.base.Method.attach_schedule`; the trainer, the stream
            loop and the Lightning callback attach theirs). Freezes do not rewind.
    """

    warmup_checks: int = 1
    change_threshold: float = 1.0
    max_slope: float = 0.0
    trend_window: int = 3
    patience: int = 1
    max_drops_per_check: int | float = 0.25
    max_dropped_fraction: float = 0.75
    max_dropped_fraction_per_stage: float = 1.0
    normalization: str = "median"
    cost_batches: int = 2
    max_drop_cost: float = 0.1
    decision_cost: str = "sum"
    max_loss_rise: float = 0.1
    recalibration_batches: int = 4
    costly_units: str = "keep"
    min_lr_fraction: float = 0.5
    rank_by: str = "cost"
    fade_steps: int = 0
    lr_rewind_steps: int = 0

    def __post_init__(self) -> None:
        def fail(name: str, rule: str) -> None:
            raise PolicyError(f"{name}={getattr(self, name)!r} is invalid: it must be {rule}")

        if not isinstance(self.warmup_checks, int) or self.warmup_checks < 0:
            fail("warmup_checks", "an integer >= 0")
        if not (0 < self.change_threshold and math.isfinite(self.change_threshold)):
            fail("change_threshold", "a finite number > 0")
        if not math.isfinite(self.max_slope):
            fail("max_slope", "a finite number")
        if not isinstance(self.trend_window, int) or self.trend_window < 2:
            fail("trend_window", "an integer >= 2")
        if not isinstance(self.patience, int) or self.patience < 1:
            fail("patience", "an integer >= 1")
        k = self.max_drops_per_check
        if isinstance(k, bool) or not (
            (isinstance(k, int) and k >= 1) or (isinstance(k, float) and 0 < k <= 1)
        ):
            fail("max_drops_per_check", "an integer >= 1 or a fraction in (0, 1]")
        for name in ("max_dropped_fraction", "max_dropped_fraction_per_stage"):
            value = getattr(self, name)
            # A string or a switch (e.g. from a corrupt config.json) is refused in one line too.
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not 0 <= value <= 1):  # NaN fails too
                fail(name, "a number in [0, 1]")
        if self.normalization not in NORMALIZATIONS:
            fail("normalization", " or ".join(NORMALIZATIONS))
        if self.costly_units not in COSTLY_UNITS:
            fail("costly_units", " or ".join(map(repr, COSTLY_UNITS)))
        if self.rank_by not in RANKINGS:
            fail("rank_by", " or ".join(map(repr, RANKINGS)))
        if self.decision_cost not in DECISION_COSTS:
            fail("decision_cost", " or ".join(map(repr, DECISION_COSTS)))
        for name in ("cost_batches", "recalibration_batches", "fade_steps", "lr_rewind_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                fail(name, "an integer >= 0")
        for name in ("max_drop_cost", "max_loss_rise"):
            if not getattr(self, name) >= 0:  # NaN fails too; inf is allowed (= off)
                fail(name, ">= 0 (inf turns it off)")
        if not 0 <= self.min_lr_fraction < 1:  # NaN fails too
            fail("min_lr_fraction", "in [0, 1) (0 turns it off)")
        if self.cost_batches == 0 and self.rank_by != "cost":
            raise PolicyError(f"rank_by={self.rank_by!r} ranks measured drop costs and needs "
                              "cost_batches >= 1; set cost_batches to e.g. 2, or leave rank_by "
                              "out")
        if (self.decision_cost == "joint" and type(self.max_drops_per_check) is int
                and self.max_drops_per_check == 1):  # 1.0 is a fraction: every unit
            raise PolicyError(
                "decision_cost='joint' prices several drops together, and with "
                "max_drops_per_check=1 a check drops one unit, whose own cost already fits "
                "max_drop_cost; leave decision_cost out, or allow more drops per check")
        if self.decision_cost == "joint" and not (self.cost_batches
                                                  and math.isfinite(self.max_drop_cost)):
            raise PolicyError(
                "decision_cost='joint' measures a check's drops together against "
                f"max_drop_cost on the cost batches; it needs cost_batches >= 1 (now "
                f"{self.cost_batches}) and a finite max_drop_cost (now {self.max_drop_cost!r})")
        if self.cost_batches == 0:
            for name in ("max_drop_cost", "max_loss_rise"):
                if math.isfinite(getattr(self, name)):
                    raise PolicyError(
                        f"{name}={getattr(self, name)!r} needs cost_batches >= 1 (it is measured "
                        f"on recent batches); set {name}=inf, or cost_batches to e.g. 4")

    def is_candidate(self, score: UnitScore) -> bool:
        return score.ratio <= self.change_threshold and score.slope <= self.max_slope

    def drops_allowed(self, units_total: int, units_dropped: int) -> int:
        """How many units may go at this check, given how many are gone already."""
        k = self.max_drops_per_check
        per_check = k if isinstance(k, int) else max(1, math.floor(k * units_total))
        cap = math.floor(self.max_dropped_fraction * units_total + 1e-9)
        return max(0, min(per_check, cap - units_dropped))

    def stage_room(self, stages: Mapping[str, Hashable], gone: Collection[str]
                   ) -> dict[Hashable, int]:
        """How many more units of each stage may go: ``floor(max_dropped_fraction_per_stage *
        stage size)`` minus those gone already.

        Args:
            stages: the stage of every unit, live or gone (:func:`learndrop.units.unit_stages`).
            gone: the units already dropped, frozen or fading out.
        """
        sizes = Counter(stages.values())
        out = Counter(stages[n] for n in gone if n in stages)
        return {stage: math.floor(self.max_dropped_fraction_per_stage * size + 1e-9) - out[stage]
                for stage, size in sizes.items()}

    def lr_allows(self, lr: float, peak_lr: float) -> bool:
        """Whether the learning rate ``lr`` (of the last step) is still at least
        ``min_lr_fraction`` of ``peak_lr`` (the highest so far): decisions are allowed."""
        return lr >= self.min_lr_fraction * peak_lr

    def is_stable(self, losses: Sequence[float]) -> bool:
        """Whether the last of the check losses ``losses`` (oldest first) allows decisions: it
        is at most ``1 + max_loss_rise`` times the lowest of the ``trend_window`` before it
        (always true with fewer than two losses)."""
        if len(losses) < 2 or math.isinf(self.max_loss_rise):
            return True
        previous = min(losses[-1 - self.trend_window:-1])
        return losses[-1] <= (1 + self.max_loss_rise) * previous

    def ready(self, scores: Mapping[str, UnitScore], streaks: Mapping[str, int], *,
              check: int) -> list[str]:
        """Units that have been candidates for ``patience`` checks, after the warm-up, lowest
        continuation score first (ties keep execution order)."""
        if check <= self.warmup_checks:
            return []
        ready = [n for n, s in scores.items() if streaks.get(n, 0) >= self.patience]
        return sorted(ready, key=lambda n: scores[n].continuation)

    def action(self, cost: float | None) -> str:
        """``"drop"`` when the measured drop cost is at most ``max_drop_cost`` (or was not
        measured), else ``costly_units`` (``"freeze"``, or ``"keep"``: no action)."""
        return "drop" if cost is None or cost <= self.max_drop_cost else self.costly_units

    def decide(
        self,
        scores: Mapping[str, UnitScore],
        streaks: Mapping[str, int],
        *,
        check: int,
        units_total: int,
        units_dropped: int,
        costs: Mapping[str, float] | None = None,
        losses: Sequence[float] = (),
        fwd_flops: Mapping[str, float] | None = None,
        stages: Mapping[str, Hashable] | None = None,
        gone: Collection[str] = (),
    ) -> list[str]:
        """Names of the units to act on now, in order (each one's action: :meth:`action`).

        Args:
            scores: this check's scores of the live units (execution order).
            streaks: consecutive checks (this one included) each unit has been a candidate.
            check: 1-based index of this check.
            units_total: all units, dropped and frozen ones included.
            units_dropped: units already dropped or frozen.
            costs: measured drop costs of (at least) the ready units; they go cheapest first,
                and the dropped ones' costs add up to at most ``max_drop_cost``.
            losses: the check losses so far, this check's last (:meth:`is_stable`).
            fwd_flops: forward FLOPs per sample that dropping each unit saves (used with
                ``rank_by="cost-per-flop"``; a unit without a positive count goes last).
            stages: the stage of every unit (needed when ``max_dropped_fraction_per_stage`` is
                below 1): a unit whose stage is at its cap waits, and the next ready unit is
                taken.
            gone: the units already dropped, frozen or fading out (with ``stages``).

        Raises:
            PolicyError: ``max_dropped_fraction_per_stage`` below 1 and no ``stages``.
        """
        room = None
        if self.max_dropped_fraction_per_stage < 1:
            if stages is None:
                raise PolicyError(
                    f"max_dropped_fraction_per_stage={self.max_dropped_fraction_per_stage} needs "
                    "the units' stages: pass stages=learndrop.units.unit_stages(model, "
                    "example_input, units) and gone= the units removed so far")
            room = self.stage_room(stages, gone)

        def stage_full(name: str) -> bool:
            return room is not None and room.get(stages[name], 0) <= 0

        if not self.is_stable(losses):
            return []
        ready = self.ready(scores, streaks, check=check)
        allowed = self.drops_allowed(units_total, units_dropped)
        costs = costs or {}  # none measured: lowest continuation first, every unit "drop"
        if costs and self.rank_by == "cost-per-flop":
            ready.sort(key=lambda n: _per_flop_key(costs.get(n, math.inf),
                                                   (fwd_flops or {}).get(n, 0.0)))
        elif costs:
            ready.sort(key=lambda n: costs.get(n, math.inf))  # stable: ties keep order above
        chosen, spent = [], 0.0
        for name in ready:
            if len(chosen) == allowed:
                break
            cost = costs.get(name)
            action = self.action(cost)
            if action == "keep":
                continue  # too costly to drop, and left to train
            if stage_full(name):
                continue  # its stage has lost all it may: it stays, and trains
            if action == "drop" and cost is not None:
                # A negative cost (the network does better without it) adds no budget.
                if spent + max(cost, 0.0) > self.max_drop_cost:
                    continue  # cheap, but not at this check: the budget is spent
                spent += max(cost, 0.0)
            chosen.append(name)
            if room is not None:
                room[stages[name]] -= 1
        return chosen

    def trim(self, drops: Sequence[str], cost_of: Callable[[list[str]], float]
             ) -> tuple[list[str], float | None]:
        """With ``decision_cost="joint"``: the longest head of ``drops`` (a check's drops in
        :meth:`decide`'s order: cheapest first, or best cost per FLOP first with
        ``rank_by="cost-per-flop"``, so the last in that order leave first) whose cost measured
        together, ``cost_of(names)`` in nats per sample, is at most ``max_drop_cost``, and that
        cost (``None`` where nothing was measured). A single unit stays: its own cost passed
        :meth:`decide`. With ``"sum"``, ``drops`` unchanged and nothing measured.
        """
        kept = list(drops)
        if self.decision_cost != "joint":
            return kept, None
        while len(kept) > 1:
            cost = cost_of(kept)
            if cost <= self.max_drop_cost:
                return kept, cost
            kept.pop()
        return kept, None

    def to_dict(self) -> dict:
        return asdict(self)


def _per_flop_key(cost: float, flops: float) -> tuple[int, float]:
    """Sort key of ``rank_by="cost-per-flop"``: units that cost nothing (<= 0: free of the
    budget) first, the most FLOPs first; then cost per FLOP; units without FLOPs last."""
    if not flops > 0:
        return (2, cost)
    if cost <= 0:
        return (0, -flops)
    return (1, cost / flops)


@dataclass(frozen=True)
class FreezePolicy(DropPolicy):
    """The options of ``--method freeze``: :class:`DropPolicy`'s, with ``costly_units`` fixed
    at ``"freeze"`` (the method freezes every unit it acts on, so "keep" would change which
    units it freezes; refused when the options are read, before anything runs)."""

    costly_units: str = "freeze"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fade_steps:
            raise PolicyError(
                f"--fade-steps {self.fade_steps}: --method freeze freezes units, which keep "
                "their function and do not fade; leave --fade-steps out (it is an option of "
                "--method learndrop)")
        if self.lr_rewind_steps:
            raise PolicyError(
                f"--lr-rewind-steps {self.lr_rewind_steps}: --method freeze drops nothing, and "
                "the schedule is rewound after drops; leave --lr-rewind-steps out (it is an "
                "option of --method learndrop)")
        if self.decision_cost != "sum":
            raise PolicyError(
                f"--decision-cost {self.decision_cost}: --method freeze drops nothing, and the "
                "joint cost prices a check's drops; leave --decision-cost out (it is an option "
                "of --method learndrop)")
        if self.recalibration_batches not in (0, DropPolicy.recalibration_batches):
            # The default is kept (and recorded) as DropPolicy's, and 0 says what freezing
            # does; any other value would be ignored, since a frozen unit leaves the forward
            # pass, and its statistics, as they were.
            raise PolicyError(
                f"--recalibration-batches {self.recalibration_batches}: --method freeze leaves "
                "the forward pass as it is, so there is nothing to recalibrate; leave "
                "--recalibration-batches out (it is an option of --method learndrop)")
        if self.costly_units != "freeze":
            raise PolicyError(
                f"--costly-units {self.costly_units} is an option of --method learndrop; "
                "--method freeze freezes every unit it acts on: leave --costly-units out (in "
                "Python, pass a FreezePolicy)")
