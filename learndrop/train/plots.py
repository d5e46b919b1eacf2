"""PNG plots of a run, drawn from its metrics rows.

Figures are built with ``matplotlib.figure.Figure`` and its Agg canvas, never through pyplot:
drawing a run's plots does not touch (or switch) the user's matplotlib backend.
"""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.figure import Figure

from learndrop.atomic import atomic_write

__all__ = ["plot_run"]

HEATMAP_COLUMNS = 40  # a long stream's score map is thinned to this many checks


def plot_run(metrics: list[dict], summary: dict, out: Path) -> list[Path]:
    """Write the run's plots into ``out`` (test accuracy and training loss over time, forward
    FLOPs per sample over steps, the units' continuation scores); returns their paths."""
    if not metrics:
        return []
    paths = [_accuracy_and_loss(metrics, out), _flops_per_step(metrics, out)]
    few = metrics[:: max(1, math.ceil(len(metrics) / HEATMAP_COLUMNS))]
    heat = _score_heatmap(few, summary, out)
    if heat is not None:
        paths.append(heat)
    return paths


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, dpi=110, format="png"))
    return path


def _accuracy_and_loss(metrics: list[dict], out: Path) -> Path:
    t = [m["time_s"] for m in metrics]
    fig = Figure(figsize=(10, 3.8))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(t, [100 * m["test_acc"] for m in metrics], marker="o")
    ax1.set(xlabel="training time (s)", ylabel="test accuracy (%)", title="Test accuracy")
    ax2.plot(t, [m["train_loss"] for m in metrics], marker="o", color="tab:red")
    ax2.set(xlabel="training time (s)", ylabel="training loss", title="Training loss")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    return _save(fig, out / "accuracy_loss.png")


def _flops_per_step(metrics: list[dict], out: Path) -> Path:
    fig = Figure(figsize=(6, 3.8))
    ax = fig.subplots()
    steps = [0] + [m["step"] for m in metrics]
    fwd = [metrics[0]["fwd_flops_per_sample_full"]] + [m["fwd_flops_per_sample"] for m in metrics]
    full = metrics[0]["fwd_flops_per_sample_full"]
    ax.step(steps, [f / 1e6 for f in fwd], where="pre", label="this run")
    ax.axhline(full / 1e6, color="gray", linestyle="--", label="full network")
    ax.set(xlabel="training step", ylabel="forward MFLOPs per sample",
           title="Forward FLOPs per step", ylim=(0, full / 1e6 * 1.1))
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, out / "flops_per_step.png")


def _score_heatmap(metrics: list[dict], summary: dict, out: Path) -> Path | None:
    rows = [m for m in metrics if m.get("scores")]
    if not rows:
        return None
    units = list(dict.fromkeys(u for m in rows for u in m["scores"]))
    grid = [[math.nan] * len(rows) for _ in units]
    for j, m in enumerate(rows):
        for i, unit in enumerate(units):
            score = m["scores"].get(unit)
            if score is not None and score["continuation"] > 0:
                grid[i][j] = math.log10(score["continuation"])
    fig = Figure(figsize=(max(5, 0.5 * len(rows) + 3), max(3, 0.22 * len(units) + 1.5)))
    ax = fig.subplots()
    image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="log10 continuation score")
    # Drop costs measured at a check (training-loss increase without the unit, nats).
    for j, m in enumerate(rows):
        for i, unit in enumerate(units):
            cost = (m["scores"].get(unit) or {}).get("drop_cost")
            if cost is not None:
                ax.text(j, i + 0.32, f"{cost:+.2f}", ha="center", va="center", fontsize=6,
                        color="white")
    col = {m["epoch"]: j for j, m in enumerate(rows)}
    marks = {"drop": {"marker": "x", "color": "red", "mew": 2},
             "freeze": {"marker": "s", "color": "cyan", "mew": 1.5, "fillstyle": "none"}}
    for event in summary.get("drops", []):
        j = col.get(round(event["epoch"]) if event.get("epoch") is not None else None)
        if event["unit"] in units and j is not None and event["action"] in marks:
            ax.plot(j, units.index(event["unit"]) - 0.1, markersize=9, **marks[event["action"]])
    started: set[str] = set()  # units fading out (fade_steps): marked where the fade began
    for j, m in enumerate(rows):
        for unit in m.get("fading", ()):
            if unit in units and unit not in started:
                started.add(unit)
                ax.plot(j, units.index(unit) - 0.1, marker=">", color="orange", markersize=8)
    ax.set_xticks(range(len(rows)), [str(m["epoch"]) for m in rows])
    ax.set_yticks(range(len(units)), units, fontsize=7)
    ax.set_xlabel("check (epoch)")
    ax.set_title("Unit scores\n(x = dropped, > = fade-out began, square = frozen;\n"
                 "numbers: drop cost, nats)", fontsize=8)
    return _save(fig, out / "unit_scores.png")
