"""The bench report: every run's costs, the budget frontier, the noise floor, bench.json/.md.

Pure functions of the finished runs' summaries and metrics rows (:func:`aggregate`), and the
files written from them (:func:`write_report`). Definitions (docs/bench.md):

- **cost** on three axes: executed FLOPs (``fwd_flops + bwd_flops`` from the run's ledger; its
  ``fwd_flops`` already holds the method's own extra forward passes, ``extra_fwd_flops``, such
  as drop-cost measurement and BatchNorm recalibration), wall-clock and process CPU time of the
  training steps (evaluation excluded);
- **time ratios** against the full run that ran in lockstep with the run (``full``; for the
  methods that copy Learn&Drop's run, and so run after it, the A/A control ``full-aa``), median
  over seeds; the **noise floor** is the A/A control's ratio, full training over full training;
- **the frontier** (:mod:`learndrop.bench.frontier`) on FLOPs in absolute units, on the time
  axes in ratios to the same seed's full run (seeds run at different times, under different
  loads: the ratio is what the lockstep made comparable); each run's margin is its accuracy minus
  the frontier's at its cost;
- **accuracy** is the final test accuracy on the whole test set, mean ± std over seeds;
- **time-to-target**: the training time at the end of the first epoch whose test accuracy
  reaches the same seed's full run's final accuracy minus :data:`TARGET_GAP`.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch

from learndrop.atomic import atomic_write
from learndrop.bench.frontier import build_frontier, compare, mean_std, verdict
from learndrop.bench.plan import (
    AA_LABEL,
    NEEDS_REFERENCE,
    REFERENCE_METHOD,
    RUN_DIR,
    copy_is_full_training,
    parse_label,
    shallow_models,
)
from learndrop.machine import cpu_flags, cpu_model, usable_cpus
from learndrop.train.config import TrainConfig

__all__ = ["AXES", "BENCH_JSON", "BENCH_MD", "TARGET_GAP", "aggregate", "bench_markdown",
           "machine_info", "merge_plans", "read_runs", "run_cost", "write_report"]

BENCH_JSON = "bench.json"
BENCH_MD = "bench.md"
TARGET_GAP = 0.01  # time-to-target: the full run's final accuracy minus one point
# Cost axes: the summary key of each (FLOPs are summed by run_cost) and whether the frontier is
# drawn in ratios to the same seed's full run.
AXES = {"flops": False, "time": True, "cpu": True}
_TIME_KEYS = {"time": "train_time_s", "cpu": "train_cpu_s"}
_ROW_TIME_KEYS = {"time": "time_s", "cpu": "cpu_s"}


def _flops(values: dict) -> float:
    """Executed FLOPs in a summary or metrics row: the ledger's forward (the method's extra
    passes included) plus backward."""
    return values["fwd_flops"] + values["bwd_flops"]


def run_cost(summary: dict, axis: str) -> float | None:
    """A run's cost on ``axis`` (``flops``, ``time`` in s, ``cpu`` in s); ``None`` if its summary
    lacks it (runs made before CPU time was recorded)."""
    if axis == "flops":
        return _flops(summary)
    return summary.get(_TIME_KEYS[axis])


def read_runs(out: Path) -> dict[tuple[str, int], dict]:
    """Every finished run under ``out``: ``{(label, seed): {"summary": ..., "metrics": [...]}}``."""
    found = {}
    for path in sorted(Path(out).glob("*/summary.json")):
        match = RUN_DIR.match(path.parent.name)
        if not match:
            continue
        metrics = path.parent / "metrics.jsonl"
        rows = ([json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
                if metrics.is_file() else [])
        found[(match["label"], int(match["seed"]))] = {
            "summary": json.loads(path.read_text()), "metrics": rows}
    return found


def _run_roles(runs: dict[tuple[str, int], dict]) -> dict[str, tuple[str, float | None]]:
    """``{label: (role, budget)}`` of the finished runs: :func:`parse_label`'s, except that a
    variant whose every run is full training of another network than the bench's ``full``
    runs (``--variant r20-b=full:model=resnet20``) is a shallower network (``"shallow"``), a
    point of the depth frontier like ``full-<model>``."""
    deep = {run["summary"].get("model") for (label, _), run in runs.items() if label == "full"}
    summaries: dict[str, list[dict]] = {}
    for (label, _), run in runs.items():
        summaries.setdefault(label, []).append(run["summary"])
    roles = {}
    for label, found in summaries.items():
        role, budget = parse_label(label)
        if (role == "method" and deep
                and all(s.get("method") == "full" and s.get("model") not in deep for s in found)):
            role, budget = "shallow", None
        roles[label] = (role, budget)
    return roles


def _time_reference(label: str, seed: int, runs: dict) -> str:
    """The full run a run's times are compared with: the one it ran in lockstep with; where
    ``full`` of that seed trained on another machine, a full-training run of that seed on the
    run's own machine (the A/A control, else a ``--variant LABEL=full`` of the same network,
    the first by label), so that a run made on another CPU than the bench's full runs gets its
    time ratio, and its accuracy right after a drop, from a full run that trained beside it. A
    copy of another run (random-drop, slim-from-scratch) trains beside the A/A control: that is
    its reference, when both trained on one machine."""
    summary = runs[(label, seed)]["summary"]
    if label == AA_LABEL:
        return "full"
    aa = runs.get((AA_LABEL, seed))
    if (summary.get("method", label) in NEEDS_REFERENCE and aa is not None
            and _same_machine(summary, aa["summary"])):
        return AA_LABEL
    full = runs.get(("full", seed))
    if full is None or _same_machine(summary, full["summary"]):
        return "full"
    here = sorted((lab != AA_LABEL, lab) for lab, s in runs
                  if s == seed and lab not in (label, "full")
                  and parse_label(lab)[0] in ("aa", "method")
                  and runs[(lab, s)]["summary"].get("method") == "full"
                  and runs[(lab, s)]["summary"].get("model") == full["summary"].get("model")
                  and runs[(lab, s)]["summary"].get("machine") == summary["machine"])
    return here[0][1] if here else "full"


def _timed_against(label: str, seed: int, runs: dict) -> dict | None:
    """The run whose times the run's are compared with (:func:`_time_reference`), or ``None``:
    not finished, or trained on another machine (``summary``'s ``machine``; a run before
    session 17 recorded none and is compared). A time ratio across machines measures the
    machines, not the methods, so the report leaves it out."""
    ref = runs.get((_time_reference(label, seed, runs), seed))
    if ref is None:
        return None
    return ref if _same_machine(runs[(label, seed)]["summary"], ref["summary"]) else None


def _same_machine(a: dict, b: dict) -> bool:
    """Whether two runs' summaries name one machine (a run that named none, from before session
    17, counts as any)."""
    return a.get("machine") is None or b.get("machine") is None or a["machine"] == b["machine"]


def _time_to_target(rows: list[dict], target: float) -> dict | None:
    """Time, CPU time and FLOPs at the end of the first epoch that reaches ``target``."""
    for row in rows:
        if row["test_acc"] >= target:
            return {"epoch": row["epoch"], "time_s": row["time_s"], "cpu_s": row.get("cpu_s"),
                    "flops": _flops(row)}
    return None


def _after_first_decision(rows: list[dict], full_rows: list[dict] | None) -> dict | None:
    """The test accuracy at the end of the first epoch in which the run dropped or froze units
    (measured after the decision and, where the method does it, its BatchNorm recalibration)
    and full training's at the same epoch of the same seed (``full_rows``: the full run trained
    in lockstep with it, the A/A control for a run that copies another): issue 15's "the test
    accuracy measured right after a drop is within 1 point of the one before it".

    Only for a run that was full training until that decision: its test accuracy equals full
    training's at every earlier epoch, and its training loss at the decision's epoch (so that
    epoch trained alike and the decision came at its end; an epoch resumed mid-way from a
    checkpoint older than its epoch sums logs the loss of its remaining steps only, which is why
    earlier epochs are compared by test accuracy).
    That needs deterministic runs (the CPU path; cuDNN autotuning and bf16 make GPU runs differ)
    and excludes methods that change training from the first step (FreezeOut's per-layer
    rates). ``None`` otherwise, and for a run that never decided.

    Units that fade out before their drop (``fade_steps``; the row's ``fading``) leave the
    network at the end of their fade: a run whose first decision started fades is measured at
    the end of the first epoch in which a unit left, against full training's at that epoch
    (``decided``: the epoch whose end started the fades). That is the accuracy right after
    the drop; the epochs of the fade, which trained a network on its way out, are not
    compared.
    """
    full = {r["epoch"]: r for r in full_rows or ()}
    for i, row in enumerate(rows):
        ref = full.get(row["epoch"])
        if ref is None:
            return None
        if row.get("dropped") or row.get("fading"):
            if ref.get("train_loss") != row.get("train_loss"):
                return None
            decided = row["epoch"]
            if not row.get("dropped"):
                row = next((r for r in rows[i + 1:] if r.get("dropped")), None)
                ref = full.get(row["epoch"]) if row is not None else None
                if ref is None:
                    return None
            return {"epoch": row["epoch"], "decided": decided, "units": len(row["dropped"]),
                    "test_acc": row["test_acc"], "full_acc": ref["test_acc"],
                    "delta": row["test_acc"] - ref["test_acc"]}
        if ref["test_acc"] != row["test_acc"]:
            return None
    return None


def _around_drops(summary: dict) -> dict | None:
    """What the run's drops did to its test accuracy at the step they happened: from the
    tests just before and right after each drop (``drop_evals``, recorded with
    ``--eval-around-drops``; see :meth:`learndrop.methods.Method.before_change`), after minus
    before in fractions: the first drop's, the worst and the mean over the run's drops.
    ``None`` for a run that did not measure them, or measured none."""
    records = summary.get("drop_evals") or []
    changes = [r["test_acc_after"] - r["test_acc_before"] for r in records]
    if not changes:
        return None
    result = {"count": len(changes), "first": changes[0], "worst": min(changes),
              "mean": statistics.fmean(changes),
              "same_step": all(r["step"] == r["step_before"] for r in records)}
    # The drop alone: against the network before it with BatchNorm recalibrated as the drop's
    # recalibration does (the refresh's gain left out); runs that did not read it have None.
    alone = [r["test_acc_after"] - r["test_acc_before_recalibrated"] for r in records
             if r.get("test_acc_before_recalibrated") is not None]
    full = len(alone) == len(records)
    result.update(first_alone=alone[0] if full else None, worst_alone=min(alone) if full else None,
                  mean_alone=statistics.fmean(alone) if full else None)
    return result


def _epochs(decision: dict) -> str:
    """``2/2/2``, or with fades ``3 (from 2)/3 (from 2)``: per seed, the epoch measured."""
    decided = decision.get("decided", decision["epochs"])
    return "/".join(str(e) if e == d else f"{e} (from {d})"
                    for e, d in zip(decision["epochs"], decided, strict=True))


def _median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def aggregate(runs: dict[tuple[str, int], dict]) -> dict:
    """The report's numbers from finished runs ``{(label, seed): {"summary", "metrics"}}``.

    Returns ``{"frontier": {axis: [points]}, "noise_floor": ..., "depth": ..., "convergence":
    ..., "rows": {label: {...}}}``; see docs/bench.md for every key.
    """
    seeds = sorted({s for _, s in runs})
    full = {s: runs[("full", s)] for s in seeds if ("full", s) in runs}
    roles = _run_roles(runs)

    def relative(label: str, seed: int, axis: str) -> float | None:
        """The run's cost on ``axis`` as the frontier measures it."""
        cost = run_cost(runs[(label, seed)]["summary"], axis)
        if not AXES[axis] or cost is None:
            return cost
        ref = _timed_against(label, seed, runs)
        return _ratio(cost, run_cost(ref["summary"], axis)) if ref else None

    frontier = {}
    for axis in AXES:
        points = []
        for (label, seed), run in runs.items():
            role, budget = roles[label]
            if (label == "full" or role == "budget") and seed in full:
                cost = relative(label, seed, axis)
                if cost is not None:
                    points.append((budget or 1.0, cost, run["summary"]["final_test_acc"]))
        frontier[axis] = build_frontier(points) if len({p[0] for p in points}) > 1 else []

    # The depth frontier: full training of the shallower networks and of the bench's own, on
    # FLOPs (each point's "budget" its cost as a fraction of full training's; a network's FLOPs
    # are the same for every seed). Only the seeds with a full run count.
    depth_runs = {(label, seed): run for (label, seed), run in runs.items()
                  if (label == "full" or roles[label][0] == "shallow") and seed in full}
    depth_points = [(round(_ratio(run_cost(run["summary"], "flops"),
                                  run_cost(full[seed]["summary"], "flops")), 6),
                     run_cost(run["summary"], "flops"), run["summary"]["final_test_acc"])
                    for (_, seed), run in depth_runs.items()]
    depth = build_frontier(depth_points) if len({p[0] for p in depth_points}) > 1 else []
    network = {point[0]: depth_runs[key]["summary"].get("model")
               for key, point in zip(depth_runs, depth_points, strict=True)}

    rows = {}
    labels = sorted(roles, key=lambda label: _label_order(label, *roles[label]))
    for label in labels:
        role, budget = roles[label]
        per_seed = []
        for seed in sorted(s for lab, s in runs if lab == label):
            run = runs[(label, seed)]
            summary = run["summary"]
            ref = full.get(seed)
            time_ref = _timed_against(label, seed, runs)
            row = {
                "seed": seed,
                "final_test_acc": summary["final_test_acc"],
                "acc_delta": (summary["final_test_acc"] - ref["summary"]["final_test_acc"]
                              if ref else None),
                "flops": run_cost(summary, "flops"),
                "flops_ratio": _ratio(run_cost(summary, "flops"),
                                      run_cost(ref["summary"], "flops") if ref else None),
                "fwd_flops_ratio": summary["fwd_flops"] / summary["fwd_flops_full"],
                "bwd_flops_ratio": summary["bwd_flops"] / summary["bwd_flops_full"],
                "train_time_s": summary["train_time_s"],
                "train_cpu_s": summary.get("train_cpu_s"),
                "time_reference": _time_reference(label, seed, runs),
                "units_dropped": summary["units_dropped"],
                "params_final": summary["params_final"],
            }
            # Where full training of the seed trained on another machine, the accuracy is
            # also compared with the full run of the run's own machine (its time reference):
            # the same seed on two CPUs can end as far apart as two seeds.
            row["acc_delta_own_machine"] = (
                summary["final_test_acc"] - time_ref["summary"]["final_test_acc"]
                if time_ref is not None and ref is not None
                and not _same_machine(summary, ref["summary"]) else None)
            for axis in ("time", "cpu"):
                row[f"{axis}_ratio"] = (_ratio(run_cost(summary, axis),
                                               run_cost(time_ref["summary"], axis))
                                        if time_ref else None)
            row["frontier"] = {}
            for axis in AXES:
                cost = relative(label, seed, axis)
                c = compare(frontier[axis], cost, summary["final_test_acc"]) if (
                    cost is not None) else None
                row["frontier"][axis] = None if c is None else {
                    "cost": c.cost, "frontier_acc": c.frontier_acc, "margin": c.margin,
                    "position": c.position}
            # Full training under another label (a run of another machine) is a point of the
            # frontier's own kind, not a method against it.
            c = (compare(depth, row["flops"], summary["final_test_acc"])
                 if depth and role == "method" and summary.get("method") != "full" else None)
            row["depth_frontier"] = None if c is None else {
                "frontier_acc": c.frontier_acc, "margin": c.margin, "position": c.position,
                "own_machine": _depth_on_own_machine(
                    label, seed, runs, roles, time_ref,
                    [(p.budget, network[p.budget] or "?") for p in depth])}
            target = ref["summary"]["final_test_acc"] - TARGET_GAP if ref else None
            row["target_acc"] = target
            row["time_to_target"] = (_time_to_target(run["metrics"], target)
                                     if target is not None else None)
            # Against the full run trained beside it (the A/A control for a copy of another
            # run): on the same machine, so identical until the decision, where full training
            # of another machine would have drifted apart like another seed.
            beside = time_ref if time_ref is not None and label != AA_LABEL else ref
            row["after_first_decision"] = _after_first_decision(
                run["metrics"], beside["metrics"] if beside else None)
            row["around_drops"] = _around_drops(summary)
            row["train_loss_by_epoch"] = [r["train_loss"] for r in run["metrics"]
                                          if "train_loss" in r]
            row["final_train_acc"] = (run["metrics"][-1].get("train_acc")
                                      if run["metrics"] else None)
            per_seed.append(row)
        rows[label] = _summarise(label, role, budget, per_seed, runs)

    return {
        "frontier": {axis: [p.__dict__ for p in points] for axis, points in frontier.items()},
        "depth_frontier": [{"model": network[p.budget], **p.__dict__} for p in depth],
        "noise_floor": _noise_floor(rows),
        "depth": _depth(rows),
        "convergence": _convergence(runs),
        "pace": _pace(runs),
        "rows": rows,
    }


def _depth_on_own_machine(label: str, seed: int, runs: dict, roles: dict, ref: dict | None,
                          pooled: Sequence[tuple[float, str | None]]) -> dict | None:
    """The run against the depth frontier of its own seed and machine: the line through the
    full run it is timed against (``ref``, :func:`_timed_against`'s answer) and the shallower
    networks of that seed trained on that machine, on FLOPs. The pooled depth frontier mixes
    the machines its runs trained on, and one seed on two CPUs can end as far apart as two
    seeds; this is the paired reading. ``roles``: :func:`_run_roles`'s answer.
    ``pooled``: ``(FLOPs ratio, model)`` of the pooled
    line's networks. Where a network of the pooled line lies between the two networks around
    the run's FLOPs but did not train on the run's machine with its seed, the shorter line
    would not be the same frontier, so there is no margin (``position`` names the network).

    Returns ``{"frontier_acc", "margin", "position", "networks"}`` (``margin`` ``None``
    outside the line's range or where it lacks a network; ``networks`` in order of FLOPs),
    or ``None`` without such a full run or without a shallower network of the seed on the
    machine."""
    summary = runs[(label, seed)]["summary"]
    if ref is None:
        return None
    full_flops = run_cost(ref["summary"], "flops")
    points = [(1.0, ref["summary"].get("model") or "?", ref["summary"]["final_test_acc"])]
    for (lab, s), run in sorted(runs.items()):
        if (s == seed and roles[lab][0] == "shallow"
                and _same_machine(summary, run["summary"])):
            points.append((_ratio(run_cost(run["summary"], "flops"), full_flops),
                           run["summary"].get("model") or lab.removeprefix("full-"),
                           run["summary"]["final_test_acc"]))
    if len(points) < 2:
        return None
    points.sort()
    line = build_frontier((ratio, ratio, acc) for ratio, _, acc in points)
    x = _ratio(run_cost(summary, "flops"), full_flops)
    c = compare(line, x, summary["final_test_acc"])
    result = {"frontier_acc": c.frontier_acc, "margin": c.margin, "position": c.position,
              "networks": [model for _, model, _ in points]}
    if c.margin is not None:
        # Inside the line's range, up to the frontier's float tolerance at either end.
        left = max((r for r, _, _ in points if r <= x), default=points[0][0])
        right = min((r for r, _, _ in points if r >= x), default=left)
        lacking = [model for r, model in pooled if left < r < right
                   and not any(abs(r - q) < 1e-6 for q, _, _ in points)]
        if lacking:
            result.update(frontier_acc=None, margin=None,
                          position=f"lacks {', '.join(lacking)} on this machine")
    return result


def _summarise(label: str, role: str, budget: float | None, per_seed: list[dict],
               runs: dict) -> dict:
    first = runs[(label, per_seed[0]["seed"])]["summary"]
    acc, acc_std = mean_std([r["final_test_acc"] for r in per_seed])

    def med(key: str) -> float | None:
        return _median([r[key] for r in per_seed])

    frontier = {}
    for axis in AXES:
        # A seed without a cell has no cost on this axis (no time recorded, or a time measured
        # on another machine than its full run's): it is left out, and the verdict says so.
        cells = [r["frontier"][axis] for r in per_seed if r["frontier"][axis]]
        margins = [c["margin"] for c in cells]
        if role == "budget" or label == "full":
            text = "frontier"
        elif not cells:
            text = "no cost on this axis"
        else:
            text = verdict(margins)
            if len(cells) < len(per_seed):
                text += f" ({len(per_seed) - len(cells)} seed(s) without a cost on this axis)"
        frontier[axis] = {**_margins(cells), "verdict": text,
                          "positions": sorted({c["position"] for c in cells})}
    depth_cells = [r["depth_frontier"] for r in per_seed if r.get("depth_frontier")]
    paired = [(r["seed"], r["depth_frontier"]["own_machine"]) for r in per_seed
              if r.get("depth_frontier") and r["depth_frontier"]["own_machine"]]
    reached = [r["time_to_target"] for r in per_seed if r["time_to_target"]]
    decided = [r["after_first_decision"] for r in per_seed if r["after_first_decision"]]
    # Epoch by epoch over the seeds that logged every epoch of the run (all, unless one lost
    # its metrics): the same epochs for every seed, or nothing.
    epochs = first.get("epochs")
    logged = [r for r in per_seed if epochs and len(r["train_loss_by_epoch"]) == epochs]
    losses = [r["train_loss_by_epoch"] for r in logged]
    train_acc = [r["final_train_acc"] for r in logged if r["final_train_acc"] is not None]
    delta, delta_std = mean_std([d["delta"] for d in decided])
    around = [r["around_drops"] for r in per_seed if r.get("around_drops")]
    own = [r for r in per_seed if r["acc_delta_own_machine"] is not None]
    own_delta, own_std = mean_std([r["acc_delta_own_machine"] for r in own])
    return {
        "role": role,
        "method": first.get("method"),
        "model": first.get("model"),
        "budget": budget,
        "epochs": first.get("epochs"),
        "seeds": [r["seed"] for r in per_seed],
        "final_test_acc": acc,
        "final_test_acc_std": acc_std,
        "acc_delta": med("acc_delta"),
        "flops": statistics.fmean(r["flops"] for r in per_seed),
        "flops_ratio": med("flops_ratio"),
        "fwd_flops_ratio": med("fwd_flops_ratio"),
        "bwd_flops_ratio": med("bwd_flops_ratio"),
        "train_time_s": med("train_time_s"),
        "train_cpu_s": med("train_cpu_s"),
        "time_ratio": med("time_ratio"),
        "cpu_ratio": med("cpu_ratio"),
        "time_reference": per_seed[0]["time_reference"],
        "frontier": frontier,
        "depth_frontier": {
            **_margins(depth_cells), "verdict": verdict([c["margin"] for c in depth_cells]),
            "seeds": len(depth_cells),
            "own_machine": {
                **_margins([c for _, c in paired]),
                "verdict": _paired_verdict([c for _, c in paired]),
                "seeds": [seed for seed, _ in paired],
                "margins": [c["margin"] for _, c in paired],
                "networks": [c["networks"] for _, c in paired],
            } if paired else None,
        } if depth_cells else None,
        "time_to_target": {
            "reached": len(reached), "of": len(per_seed),
            "time_s": _median([t["time_s"] for t in reached]),
            "cpu_s": _median([t["cpu_s"] for t in reached]),
            "flops": _median([t["flops"] for t in reached]),
        },
        "after_first_decision": {
            "seeds": len(decided), "epochs": [d["epoch"] for d in decided],
            "decided": [d.get("decided", d["epoch"]) for d in decided],
            "units": [d["units"] for d in decided], "delta": delta, "delta_std": delta_std,
        } if decided else None,
        "own_machine": {
            "seeds": [r["seed"] for r in own], "references": [r["time_reference"] for r in own],
            "acc_deltas": [r["acc_delta_own_machine"] for r in own],
            "acc_delta": own_delta, "acc_delta_std": own_std,  # mean ± std, not a median
            "time_ratios": [r["time_ratio"] for r in own],
        } if own else None,
        "around_drops": {
            "seeds": len(around), "drops": [a["count"] for a in around],
            "same_step": all(a["same_step"] for a in around),
            **{k: v for key in ("first", "worst", "mean", "first_alone", "worst_alone",
                                "mean_alone")
               for k, v in zip((key, f"{key}_std"),
                               mean_std([a[key] for a in around if a.get(key) is not None]),
                               strict=True)},
        } if around else None,
        "train_loss_by_epoch": ([statistics.fmean(epoch) for epoch in zip(*losses)]
                                if losses else None),
        "train_loss_seeds": len(losses),
        "final_train_acc": statistics.fmean(train_acc) if train_acc else None,
        "units_dropped": med("units_dropped"),
        "units_total": first["units_total"],
        "params_initial": first["params_initial"],
        "params_final": med("params_final"),
        "per_seed": per_seed,
    }


def _paired_verdict(cells: list[dict]) -> str:
    """:func:`verdict` over the seeds whose own line reaches the run's FLOPs, saying how many
    seeds had no margin because their line lacks a network of the pooled one."""
    rest = [c["margin"] for c in cells if not c["position"].startswith("lacks")]
    note = f"{len(cells) - len(rest)} seed(s) whose line lacks a network on their machine"
    if not rest:
        return f"no verdict: {note}"
    return verdict(rest) + (f" ({note})" if len(rest) < len(cells) else "")


def _margins(cells: list[dict]) -> dict:
    """The seeds' comparisons with a frontier (``frontier_acc``, ``margin``; ``None`` outside its
    range) summed up: the mean frontier accuracy and the margin's mean and std."""
    mean, std = mean_std([c["margin"] for c in cells if c["margin"] is not None])
    return {"frontier_acc": mean_std([c["frontier_acc"] for c in cells
                                      if c["frontier_acc"] is not None])[0],
            "margin": mean, "margin_std": std}


def _noise_floor(rows: dict) -> dict | None:
    """The A/A control: full training over full training, per seed and median."""
    aa = rows.get(AA_LABEL)
    if aa is None:
        return None
    return {"time_ratio": aa["time_ratio"], "cpu_ratio": aa["cpu_ratio"],
            "per_seed": [{k: r[k] for k in ("seed", "time_ratio", "cpu_ratio")}
                         for r in aa["per_seed"]]}


PACE_TOLERANCE = 0.10  # identical work timed this far apart: the conditions changed, not the method


def _full_work(summary: dict) -> bool:
    """Every step of the run ran the whole network (full training, a budget, the A/A control)."""
    return (summary["fwd_flops"] == summary["fwd_flops_full"]
            and summary["bwd_flops"] == summary["bwd_flops_full"]
            and not summary.get("extra_fwd_flops"))


def _pace(runs: dict) -> dict | None:
    """The pace check: the runs that did full training's work step for step (the budgets, the
    A/A control) against the same seed's full run, in wall-clock seconds per training image.

    Identical work on the same machine takes the same time per image, so a ratio outside
    ``1 ± PACE_TOLERANCE`` says the runs were timed under different conditions (another session,
    another load, not interleaved), and the time ratios between them measure that, not a method.
    Returns ``{"tolerance", "per_run": [{"run", "reference", "ratio"}], "off": [run, ...]}``, or
    ``None`` where no such pair exists."""
    per_run = []
    for (label, seed), run in sorted(runs.items()):
        ref = runs.get(("full", seed))
        s = run["summary"]
        if label == "full" or ref is None or not _full_work(s):
            continue
        r = ref["summary"]
        if (not s.get("samples_seen") or not r.get("samples_seen")
                or s.get("machine") != r.get("machine") or s.get("model") != r.get("model")):
            continue
        ratio = _ratio(s["train_time_s"] / s["samples_seen"], r["train_time_s"] / r["samples_seen"])
        per_run.append({"run": f"{label}-s{seed}", "reference": f"full-s{seed}", "ratio": ratio})
    if not per_run:
        return None
    off = [p["run"] for p in per_run if abs(p["ratio"] - 1) > PACE_TOLERANCE]
    return {"tolerance": PACE_TOLERANCE, "per_run": per_run, "off": off}


def _depth(rows: dict) -> dict | None:
    """Full training of the bench's model against the shallowest model's (the depth check)."""
    shallow = [label for label, r in rows.items() if r["role"] == "shallow"]
    if not shallow or "full" not in rows:
        return None
    s, f = rows[min(shallow, key=lambda label: rows[label]["flops"])], rows["full"]
    return {"model": s["model"], "shallow_acc": s["final_test_acc"],
            "shallow_acc_std": s["final_test_acc_std"], "deep_model": f["model"],
            "deep_acc": f["final_test_acc"], "deep_acc_std": f["final_test_acc_std"],
            "gap": f["final_test_acc"] - s["final_test_acc"]}


def _convergence(runs: dict) -> dict | None:
    """How much full training's test accuracy still rose over its last fifth of epochs (the
    mean over seeds of the final accuracy minus the accuracy at epoch round(0.8 E))."""
    gains = []
    for (label, _), run in runs.items():
        rows = run["metrics"]
        if label != "full" or not rows:
            continue
        at = max(1, round(0.8 * len(rows)))
        gains.append(rows[-1]["test_acc"] - rows[at - 1]["test_acc"])
    if not gains:
        return None
    mean, std = mean_std(gains)
    return {"last_fifth_gain": mean, "last_fifth_gain_std": std, "seeds": len(gains)}


def _label_order(label: str, role: str, budget: float | None) -> tuple:
    rank = {"method": 0, "budget": 1, "aa": 2, "shallow": 3}[role]
    first = {"full": 0, "learndrop": 1}.get(label, 2)
    return rank, -(budget or 0), first, label


def machine_info(device: str | None = None) -> dict:
    """What the timings were measured on: CPU model and the flags that decide kernel speed,
    usable cores, threads, torch version, load."""
    info = {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpus_usable": usable_cpus(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": device,
        # How busy the machine was when the report was written.
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg")
        else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_report(out: Path, base: TrainConfig | None = None, plan: dict | None = None) -> dict:
    """Rewrite ``bench.json`` and ``bench.md`` from the finished runs under ``out`` (every
    ``<label>-s<seed>`` run directory with a ``summary.json``), atomically.

    ``base``: the bench's settings (default: read from a run's config.json); ``plan``: what
    this invocation asked for (methods, seeds, budgets ...), merged into the plan already
    recorded in ``bench.json`` (:func:`merge_plans`: a bench run seed by seed, or a first look
    with ``--methods`` completed later, records everything it was asked for); without it, the
    recorded plan is kept as it is.
    """
    out = Path(out)
    runs = read_runs(out)
    recorded = None
    if (out / BENCH_JSON).is_file():
        try:
            recorded = json.loads((out / BENCH_JSON).read_text()).get("plan")
        except (OSError, ValueError, AttributeError):
            recorded = None  # an unreadable old report: rewritten without its plan
    plan = merge_plans(recorded, plan) if plan is not None else recorded
    if base is None:
        configs = sorted(out.glob("full-s*/config.json")) or sorted(out.glob("*/config.json"))
        base = TrainConfig.from_dict(json.loads(configs[0].read_text())) if configs else None
    devices = sorted({r["summary"].get("device", "?") for r in runs.values()})
    report = {
        "config": _settings(base),
        "plan": plan or {},
        "seeds": sorted({s for _, s in runs}),
        "finished": len(runs),
        "machine": machine_info(", ".join(devices) or None),
        "trained_on": trained_on(runs),
        "precision": trained_in(runs),
        **aggregate(runs),
        "not_trained": _copies_not_trained(out, runs, plan or {}),
    }
    data = json.dumps(report, indent=2).encode()
    atomic_write(out / BENCH_JSON, lambda f: f.write(data))
    markdown = bench_markdown(report).encode()
    atomic_write(out / BENCH_MD, lambda f: f.write(markdown))
    return report


def trained_on(runs: dict) -> dict[str, list[str]]:
    """``{machine: [run, ...]}``: the machine each finished run recorded (``summary.json``'s
    ``machine``, since session 17; ``"not recorded"`` before), so that a bench trained across
    sessions on different machines says which run ran where."""
    found: dict[str, list[str]] = {}
    for (label, seed), run in sorted(runs.items()):
        found.setdefault(run["summary"].get("machine", "not recorded"), []).append(
            f"{label}-s{seed}")
    return found


def trained_in(runs: dict) -> dict[str, int]:
    """``{precision: number of runs}``: what the finished runs trained in (``summary.json``'s
    ``precision``: what ``--precision`` resolved to, e.g. ``auto`` to bf16 on a CPU with
    AVX512_BF16; ``"not recorded"`` for runs older than the record), most runs first."""
    return dict(Counter(run["summary"].get("precision", "not recorded")
                        for run in runs.values()).most_common())


def _copies_not_trained(out: Path, runs: dict, plan: dict) -> dict[str, dict]:
    """``{label: {"reference": label, "seeds": [seed, ...]}}``: the copies of a Learn&Drop run
    (the methods that copy ``learndrop``, and the variants that copy the run they name) that
    were asked for and not trained, because that run made no decision (see
    ``copy_is_full_training``)."""
    asked = set(plan.get("seeds", []))
    copies = {label: REFERENCE_METHOD for label in plan.get("methods", [])
              if label in NEEDS_REFERENCE}
    copies.update({label: str(v.get("options", {}).get("reference", REFERENCE_METHOD))
                   for label, v in plan.get("variants", {}).items()
                   if v.get("method") in NEEDS_REFERENCE})
    found = {}
    for label, reference in copies.items():
        method = plan.get("variants", {}).get(label, {}).get("method", label)
        seeds = sorted({s for ref, s in runs if ref == reference and s in asked})
        missing = [s for s in seeds if (label, s) not in runs
                   and copy_is_full_training(method, s, out, reference)]
        if missing:
            found[label] = {"reference": reference, "seeds": missing}
    return found


def merge_plans(recorded: dict | None, new: dict) -> dict:
    """The plan of a bench asked for in several invocations into one directory: the union of
    their methods, seeds, budgets, variants and lockstep groups (in the order first asked);
    ``aa_control`` if any asked for it; every ``shallow`` network named. ``recorded``:
    the plan in ``bench.json`` (``None`` or not a dict: none yet). A lockstep group asked
    for again in another order (each seed's groups rotate with its place in ``--seeds``) is
    recorded once."""
    if not isinstance(recorded, dict):
        recorded = {}

    def union(key: str, same=lambda item: item) -> list:
        items, seen = [], []
        for item in [*recorded.get(key, []), *new.get(key, [])]:
            if same(item) not in seen:
                seen.append(same(item))
                items.append(item)
        return items

    merged = {**recorded, **new}
    merged["methods"] = union("methods")
    merged["seeds"] = sorted(union("seeds"))
    merged["groups"] = union("groups", frozenset)
    merged["budgets"] = sorted(union("budgets"))
    merged["variants"] = {**recorded.get("variants", {}), **new.get("variants", {})}
    merged["aa_control"] = bool(recorded.get("aa_control") or new.get("aa_control"))
    # Plans before the depth frontier named one network (or None).
    merged["shallow"] = list(shallow_models([*shallow_models(recorded.get("shallow")),
                                             *shallow_models(new.get("shallow"))]))
    return merged


def _settings(base: TrainConfig | None) -> dict:
    if base is None:
        return {}
    values = base.to_dict()
    for key in ("method", "out", "resume", "reference", "overwrite", "quiet"):
        values.pop(key, None)
    return values


# ---- Markdown -------------------------------------------------------------------------------

def _f(value: float | None, spec: str, scale: float = 1.0, sign: bool = False) -> str:
    if value is None:
        return "–"
    text = format(value * scale, spec)
    return f"+{text}" if sign and value * scale > 0 else text


def _pm(mean: float | None, std: float | None, scale: float = 100, spec: str = ".2f",
        sign: bool = False) -> str:
    text = _f(mean, spec, scale, sign)
    return text if std is None or mean is None else f"{text} ± {_f(std, spec, scale)}"


def decay_text(fraction: float) -> str:
    """The learning-rate decay after the warm-up, in words, e.g. for a report's header.

    ``fraction``: ``lr_decay_fraction`` in (0, 1], the share of each run's steps the cosine
    decay spans (1: cosine from the end of the warm-up to zero; below 1: warmup-stable-decay,
    Hu et al., MiniCPM, 2024)."""
    if fraction == 1:
        return "cosine to zero"
    return (f"the peak rate until the last {fraction:.0%} of each run's steps, then cosine to "
            f"zero")


def _table_head(columns: Sequence[str], aligns: str) -> list[str]:
    """A Markdown table's head: ``columns`` and one alignment per column in ``aligns``
    (``l``: left, ``r``: right)."""
    return ["| " + " | ".join(columns) + " |",
            "|" + "|".join("---:" if a == "r" else "---" for a in aligns) + "|"]


def _section(title: str, text: str, columns: Sequence[str] = (), aligns: str = "") -> list[str]:
    """A report section's opening lines: its title, the paragraph that says how to read it and,
    with ``columns``, its table's head (:func:`_table_head`)."""
    return ["", f"## {title}", "", text, *(["", *_table_head(columns, aligns)] if columns else [])]


def bench_markdown(report: dict) -> str:
    """The bench report as Markdown: the runs' summary, then one section per comparison and the
    checks, then every run."""
    rows = report["rows"]
    lines = [*_summary_lines(report), *_own_machine_lines(rows), *_frontier_lines(report),
             *_depth_frontier_lines(report), *_first_decision_lines(rows),
             *_around_drops_lines(rows), *_train_loss_table(rows), *_checks_lines(report),
             *_every_run_lines(rows)]
    return "\n".join(lines) + "\n"


def _summary_lines(report: dict) -> list[str]:
    c, m = report["config"], report["machine"]
    rows, noise = report["rows"], report["noise_floor"]
    aa_time = f" (A/A {_f(noise['time_ratio'], '.3f')})" if noise else ""
    aa_cpu = f" (A/A {_f(noise['cpu_ratio'], '.3f')})" if noise else ""
    lines = [
        f"# Bench: {c.get('model', '?')} on {c.get('dataset', '?')}",
        "",
        f"{c.get('epochs', '?')} epochs, training subset {c.get('subset') or 'all'}, test set "
        f"{c.get('test_subset') or 'all'}, batch {c.get('batch_size', '?')}, lr "
        f"{c.get('lr', '?')}, warm-up {c.get('warmup_epochs', '?')} epoch(s) then "
        f"{decay_text(c.get('lr_decay_fraction', 1.0))}; seeds "
        f"{', '.join(map(str, report['seeds'])) or '–'}; {report['finished']} runs finished, "
        f"{_precision_text(report.get('precision', {}))}. Report written on: {m['cpu']} "
        f"({' '.join(m['cpu_flags']) or 'flags unknown'}), "
        f"{m['cpus_usable']} CPUs usable, {m['torch_threads']} torch threads, torch "
        f"{m['torch']}, device {m['device']}, load average {m['load_average']}.",
        "",
        *_machines_line(report.get("trained_on", {})),
        "Accuracy: final test accuracy, mean ± std over seeds. Costs: executed fwd+bwd FLOPs "
        "(with the method's extra passes), wall-clock and process CPU time of the training "
        "steps; ratios against the full run trained in lockstep with the run, median over "
        "seeds, with the A/A control's ratio (full against full: the noise floor) beside them. "
        f"Time to target: training time until the test accuracy first reaches full training's "
        f"final accuracy minus {100 * TARGET_GAP:g} point.",
        "",
        *_table_head(["run", "seeds", "test acc (%)", "Δ vs full (pts)", "TFLOP", "FLOPs ratio",
                      "time (s)", f"time ratio{aa_time}", "CPU (s)", f"CPU ratio{aa_cpu}",
                      "time to target (s)", "units dropped"], "l" + "r" * 11),
    ]
    for label, r in rows.items():
        t2t = r["time_to_target"]
        lines.append(
            f"| {label} | {len(r['seeds'])} | {_pm(r['final_test_acc'], r['final_test_acc_std'])}"
            f" | {_f(r['acc_delta'], '.2f', 100, sign=True)} | {_f(r['flops'], '.2f', 1e-12)} "
            f"| {_f(r['flops_ratio'], '.3f')} | {_f(r['train_time_s'], '.1f')} "
            f"| {_f(r['time_ratio'], '.3f')} | {_f(r['train_cpu_s'], '.1f')} "
            f"| {_f(r['cpu_ratio'], '.3f')} "
            f"| {_f(t2t['time_s'], '.1f')} ({t2t['reached']}/{t2t['of']}) "
            f"| {_f(r['units_dropped'], 'g')}/{r['units_total']} |")
    for label, copy in report.get("not_trained", {}).items():
        lines += ["", f"{label}: not trained for seed(s) {', '.join(map(str, copy['seeds']))}: "
                  f"{copy['reference']} dropped and froze nothing there, so it would have been "
                  "full training of the same seed, step for step; read full's row."]
    return lines


def _own_machine_lines(rows: dict) -> list[str]:
    own = {label: r["own_machine"] for label, r in rows.items() if r.get("own_machine")}
    if not own:
        return []
    lines = _section(
        "Against full training on the run's own machine",
        "Where full training of a seed trained on another machine than the run, the run's "
        "final test accuracy minus that of full training of the same seed on its own "
        "machine (the run its time ratio is read against: the A/A control or a "
        "`--variant LABEL=full`): the same seed on two CPUs can end as far apart as two "
        "seeds, so this is the paired comparison. Points, mean ± std over the seeds that "
        "have one; per seed in order.",
        ["run", "seeds", "against", "Δ per seed (pts)", "Δ (pts)", "time ratio per seed"],
        "lrllrl")
    for label, o in own.items():
        lines.append(
            f"| {label} | {'/'.join(map(str, o['seeds']))} "
            f"| {', '.join(dict.fromkeys(o['references']))} "
            f"| {', '.join(_f(d, '.2f', 100, sign=True) for d in o['acc_deltas'])} "
            f"| {_pm(o['acc_delta'], o['acc_delta_std'], sign=True)} "
            f"| {', '.join(_f(t, '.3f') for t in o['time_ratios'])} |")
    return lines


def _frontier_lines(report: dict) -> list[str]:
    rows, points = report["rows"], report["frontier"]["flops"]
    if not points:
        return _section("Against the budget frontier",
                        "No frontier: it needs full training and at least one finished budget "
                        "run (`--budgets`).")
    lines = _section(
        "Against the budget frontier",
        "Full training for fractions of the epochs, schedule compressed (warm-up scaled, "
        "the decay's share of the run kept, to zero): mean over seeds.",
        ["budget", "epochs", "TFLOP", "time ratio", "CPU ratio", "test acc (%)"], "rrrrrr")
    by_budget = {axis: {p["budget"]: p for p in report["frontier"][axis]}
                 for axis in ("time", "cpu")}
    for p in sorted(points, key=lambda p: p["budget"]):
        label = "full" if p["budget"] == 1.0 else f"full-b{p['budget']:g}"
        t, cpu = by_budget["time"].get(p["budget"]), by_budget["cpu"].get(p["budget"])
        lines.append(
            f"| {p['budget']:g} | {rows[label]['epochs'] if label in rows else '?'} "
            f"| {_f(p['cost'], '.2f', 1e-12)} | {_f(t and t['cost'], '.3f')} "
            f"| {_f(cpu and cpu['cost'], '.3f')} | {_pm(p['acc'], p['acc_std'])} |")
    lines += [
        "",
        "Each run against the frontier at its own cost (piecewise-linear between the "
        "budgets; none outside their range): the frontier's accuracy there, the run's "
        "margin (points, mean ± std over seeds) and the verdict.",
        "",
        *_table_head(["run", "at its FLOPs: frontier (%)", "margin", "verdict",
                      "at its time: frontier", "margin", "verdict",
                      "at its CPU time: frontier", "margin", "verdict"], "l" + "rrl" * 3),
    ]
    for label, r in rows.items():
        if r["role"] != "method" or label == "full":
            continue
        cells = []
        for axis in AXES:
            a = r["frontier"][axis]
            where = "; ".join(p for p in a["positions"] if p != "inside")
            cells += [_f(a["frontier_acc"], ".2f", 100),
                      _pm(a["margin"], a["margin_std"], sign=True),
                      a["verdict"] + (f" ({where})" if where and a["margin"] is not None
                                      else "")]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    off = [run for run in (report.get("pace") or {}).get("off", [])
           if parse_label(run.rsplit("-s", 1)[0])[0] == "budget"]
    if off:
        lines += ["", f"**The time and CPU-time columns are not to be read:** {', '.join(off)} "
                  "did full training's work at another pace than full training (see Pace "
                  "under Checks), so the frontier's time axes carry the machine's drift."]
    return lines


def _depth_frontier_lines(report: dict) -> list[str]:
    rows, points = report["rows"], report.get("depth_frontier")  # absent before session 39
    if not points:
        return []
    lines = _section(
        "Against shallower networks trained in full (the depth frontier)",
        "What a user gets by training a smaller network of the same family for the whole "
        "schedule instead: full training of each shallower network (`--shallow`) and of the "
        "bench's own, mean over seeds, on the FLOPs axis (exact on any machine; the "
        "accuracies of runs of other CPUs differ like seeds). Each method's run against the "
        "line through them at its own FLOPs (piecewise-linear; none outside their range).",
        ["network", "seeds", "TFLOP", "FLOPs ratio", "test acc (%)"], "lrrrr")
    for p in points:
        lines.append(f"| {p.get('model') or '?'} | {p['seeds']} "
                     f"| {_f(p['cost'], '.2f', 1e-12)} | {_f(p['budget'], '.3f')} "
                     f"| {_pm(p['acc'], p['acc_std'])} |")
    lines += ["", *_table_head(["run", "seeds", "FLOPs ratio", "depth frontier there (%)",
                                "margin (pts)", "verdict"], "lrrrrl")]
    for label, r in rows.items():
        d = r.get("depth_frontier")
        if d:
            lines.append(f"| {label} | {d['seeds']} | {_f(r['flops_ratio'], '.3f')} "
                         f"| {_f(d['frontier_acc'], '.2f', 100)} "
                         f"| {_pm(d['margin'], d['margin_std'], sign=True)} | {d['verdict']} |")
    paired = {label: r["depth_frontier"]["own_machine"] for label, r in rows.items()
              if r.get("depth_frontier") and r["depth_frontier"].get("own_machine")}
    machines = set(report.get("trained_on", {})) - {"not recorded"}
    if not paired or len(machines) < 2:
        return lines  # on one machine the paired line says what the pooled one does
    lines += [
        "",
        "The runs trained on several machines, so the line above mixes them. Seed by seed on "
        "the run's own machine: the line through full training of the run's seed on that "
        "machine (the run its time ratio is read against) and the shallower networks of that "
        "seed trained there (a run that recorded no machine counts as any); per seed in "
        "order, its line's networks and margin (– where the run's FLOPs lie outside that "
        "line, or where a network of the line above, between the two around them, did not "
        "train there), mean ± std.",
        "",
        *_table_head(["run", "seeds", "networks (per seed)", "margin per seed (pts)",
                      "margin (pts)", "verdict"], "lrllrl"),
    ]
    for label, o in paired.items():
        lines_used = ["+".join(n) for n in o["networks"]]
        networks = (lines_used[0] if len(set(lines_used)) == 1  # every seed's line alike
                    else " / ".join(lines_used))
        lines.append(f"| {label} | {'/'.join(map(str, o['seeds']))} | {networks} "
                     f"| {', '.join(_f(m, '.2f', 100, sign=True) for m in o['margins'])} "
                     f"| {_pm(o['margin'], o['margin_std'], sign=True)} | {o['verdict']} |")
    return lines


def _first_decision_lines(rows: dict) -> list[str]:
    decided = {label: r["after_first_decision"] for label, r in rows.items()
               if r["after_first_decision"]}
    if not decided:
        return []
    lines = _section(
        "Right after the first decision",
        "Test accuracy at the end of the first epoch in which a run dropped or froze units "
        "(after the decision and, where the method does it, its BatchNorm recalibration) "
        "minus full training's at the same epoch (the full run trained beside it: the A/A "
        "control for a run that copies another), for the runs that were full training "
        "until then (the same test accuracy at every earlier epoch, the same training loss "
        "in that one). Points, mean ± std over seeds; the seeds column counts the seeds "
        "compared, the epochs and units are per seed in order. Units that fade out before "
        "their drop (`fade_steps`) are measured at the end of the epoch in which they left "
        "(`3 (from 2)`: the fade began at the end of epoch 2).",
        ["run", "seeds", "epoch", "units", "test acc (%)", "full at that epoch (%)", "Δ (pts)"],
        "l" + "r" * 6)
    for label, d in decided.items():
        cells = [s["after_first_decision"] for s in rows[label]["per_seed"]
                 if s["after_first_decision"]]
        acc = mean_std([c["test_acc"] for c in cells])
        full_acc = mean_std([c["full_acc"] for c in cells])
        lines.append(
            f"| {label} | {d['seeds']} | {_epochs(d)} "
            f"| {'/'.join(map(str, d['units']))} | {_pm(*acc)} | {_pm(*full_acc)} "
            f"| {_pm(d['delta'], d['delta_std'], sign=True)} |")
    return lines


def _around_drops_lines(rows: dict) -> list[str]:
    around = {label: r["around_drops"] for label, r in rows.items() if r.get("around_drops")}
    if not around:
        return []
    lines = _section(
        "Around each drop",
        "Test accuracy right after a drop minus just before it, measured on the run itself "
        "at the step of the drop (`--eval-around-drops`): after the drop and BatchNorm's "
        "recalibration, against the network a moment before, so that no training comes "
        "between them (a fade is read from its start to its end, the unit's drop). The "
        "drop's recalibration also refreshes statistics that lag the weights at a high "
        "learning rate: *the drop alone* is read against the network before it with its "
        "statistics recalibrated the same way (then put back). Points, mean ± std over "
        "seeds of each seed's first drop, worst drop and mean over its drops; issue 15's "
        "target is within 1 point.",
        ["run", "seeds", "drops", "first (pts)", "worst (pts)", "mean (pts)",
         "the drop alone: first / worst / mean (pts)"], "l" + "r" * 5 + "l")
    for label, a in around.items():
        name = label if a["same_step"] else f"{label} (fades: start to end)"
        alone = " / ".join(_pm(a[k], a[f"{k}_std"], sign=True)
                           for k in ("first_alone", "worst_alone", "mean_alone"))
        lines.append(
            f"| {name} | {a['seeds']} | {'/'.join(map(str, a['drops']))} "
            + "".join(f"| {_pm(a[k], a[f'{k}_std'], sign=True)} "
                      for k in ("first", "worst", "mean")) + f"| {alone} |")
    return lines


def _checks_lines(report: dict) -> list[str]:
    noise = report["noise_floor"]
    checks = []
    if noise:
        per_seed = ", ".join(f"s{r['seed']}: {_f(r['time_ratio'], '.3f')} / "
                             f"{_f(r['cpu_ratio'], '.3f')}" for r in noise["per_seed"])
        checks.append(f"- **Noise floor** (A/A control, full training timed twice): time ratio "
                      f"{_f(noise['time_ratio'], '.3f')}, CPU-time ratio "
                      f"{_f(noise['cpu_ratio'], '.3f')} (median; per seed time / CPU: "
                      f"{per_seed}). A time ratio closer to 1 than this says nothing.")
    pace = report.get("pace")  # absent from reports written before the check
    if pace:
        listed = ", ".join(f"{p['run']} {_f(p['ratio'], '.3f')}" for p in pace["per_run"])
        verdict_text = (
            f"**{', '.join(pace['off'])} timed more than {100 * pace['tolerance']:g}% away from "
            "full training: time ratios between them carry that much of the conditions they "
            "ran under (another session, another load), not of the method; read the FLOPs "
            "axis there**" if pace["off"]
            else f"all within {100 * pace['tolerance']:g}%")
        checks.append(f"- **Pace** (full training's work timed in other runs, seconds per "
                      f"training image against the same seed's full run): {listed}: "
                      f"{verdict_text}.")
    if report["depth"]:
        d = report["depth"]
        checks.append(f"- **Depth check**: full training of {d['deep_model']} "
                      f"{_pm(d['deep_acc'], d['deep_acc_std'])}% against {d['model']} "
                      f"{_pm(d['shallow_acc'], d['shallow_acc_std'])}%: gap "
                      f"{_f(d['gap'], '+.2f', 100)} points.")
    if report["convergence"]:
        g = report["convergence"]
        checks.append(f"- **Convergence**: full training's test accuracy rose "
                      f"{_pm(g['last_fifth_gain'], g['last_fifth_gain_std'], sign=True)} points "
                      f"over its last fifth of epochs ({g['seeds']} seed(s)).")
    return ["", "## Checks", "", *checks] if checks else []


def _every_run_lines(rows: dict) -> list[str]:
    lines = ["", "## Every run", "",
             *_table_head(["run", "test acc (%)", "TFLOP", "time (s)", "CPU (s)", "time ratio",
                           "CPU ratio", "margin at FLOPs / time / CPU (pts)",
                           "time to target (s)", "units dropped"], "l" + "r" * 9)]
    for label, r in rows.items():
        for s in r["per_seed"]:
            margins = " / ".join(
                _f(cell["margin"], ".2f", 100, sign=True) if cell else "–"
                for cell in (s["frontier"][axis] for axis in AXES))
            t2t = s["time_to_target"]
            lines.append(
                f"| {label}-s{s['seed']} | {_f(s['final_test_acc'], '.2f', 100)} "
                f"| {_f(s['flops'], '.2f', 1e-12)} | {_f(s['train_time_s'], '.1f')} "
                f"| {_f(s['train_cpu_s'], '.1f')} | {_f(s['time_ratio'], '.3f')} "
                f"| {_f(s['cpu_ratio'], '.3f')} | {margins} "
                f"| {_f(t2t and t2t['time_s'], '.1f') if t2t else 'not reached'} "
                f"| {s['units_dropped']} |")
    return lines


def shown_epochs(epochs: int) -> list[int]:
    """The epochs the training-loss table shows: every one up to 8, else the first three (how
    fast each network starts) and the quarters of the run (``[1, 2, 3, 5, 8, 10]`` for 10)."""
    if epochs <= 8:
        return list(range(1, epochs + 1))
    return sorted({1, 2, 3, *(max(1, round(epochs * q / 4)) for q in (1, 2, 3)), epochs})


def _train_loss_table(rows: dict) -> list[str]:
    """Markdown lines of the training loss by epoch, for the rows that are not budgets or the
    A/A control (they add nothing the full-training row does not show)."""
    shown = {label: r for label, r in rows.items()
             if r["role"] in ("method", "shallow") and r["train_loss_by_epoch"]}
    if not shown:
        return []
    epochs = max(len(r["train_loss_by_epoch"]) for r in shown.values())
    columns = shown_epochs(epochs)
    lines = _section(
        "Training loss by epoch",
        "Each epoch's training loss (the mean over its batches, augmented, in training mode), "
        "mean over the seeds; the last column is the last epoch's training accuracy. A run "
        "that ends above full training fits the training set less well; the first epochs show "
        "how fast each network starts (a shallow network starts faster; a network cut during "
        "training keeps the lag of the epochs it trained deep). An epoch resumed mid-way by "
        "learndrop before 2026-12-01 logged its remaining steps only.",
        ["run", "seeds", *(f"epoch {e}" for e in columns), "train acc (%)"],
        "l" + "r" * (len(columns) + 2))
    for label, r in shown.items():
        loss = r["train_loss_by_epoch"]
        cells = [_f(loss[e - 1], ".3f") if e <= len(loss) else "–" for e in columns]
        lines.append(f"| {label} | {r['train_loss_seeds']} | " + " | ".join(cells)
                     + f" | {_f(r['final_train_acc'], '.1f', 100)} |")
    return lines


def _precision_text(counts: dict[str, int]) -> str:
    if not counts:
        return "precision unknown"
    if len(counts) == 1:
        return f"all in {next(iter(counts))}"
    return "in " + ", ".join(f"{name} ({n} runs)" for name, n in counts.items())


def _machines_line(trained_on: dict[str, list[str]]) -> list[str]:
    """The line that says which runs trained on which machine (the header's "Report written
    on" is where the report was written, which may be neither); empty where no run finished."""
    if not trained_on:
        return []
    if len(trained_on) == 1:
        machine, names = next(iter(trained_on.items()))
        runs = "1 run" if len(names) == 1 else f"all {len(names)} runs"
        # "not recorded": runs older than the record (session 17)
        where = "machine not recorded" if machine == "not recorded" else machine
        return [f"Trained on: {where} ({runs}).", ""]
    parts = [f"{machine}: {len(names)} run(s) ({', '.join(names)})"
             if len(names) <= 8 else f"{machine}: {len(names)} run(s)"
             for machine, names in sorted(trained_on.items(), key=lambda kv: -len(kv[1]))]
    return ["**Trained on several machines**: " + "; ".join(parts) + ". A time ratio between "
            "runs of different machines measures the machines, not the methods, so the report "
            "leaves it out (–); FLOPs ratios "
            "and accuracies do not depend on the machine (beyond seed-level noise: the CPUs' "
            "kernels round differently).", ""]
