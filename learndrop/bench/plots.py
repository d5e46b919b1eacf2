"""The bench's plots (matplotlib, headless): accuracy against FLOPs and against time, with the
budget frontier as a line and every run as a point with its seed spread."""

from __future__ import annotations

from pathlib import Path

from learndrop.atomic import atomic_write

__all__ = ["plot_bench"]

_X = {
    "flops": ("executed fwd+bwd TFLOP", 1e-12),
    "time": ("training time / full training's (same seed, lockstep)", 1.0),
    "cpu": ("process CPU time / full training's (same seed, lockstep)", 1.0),
}


def plot_bench(out: Path, report: dict) -> list[Path]:
    """``accuracy_vs_flops.png`` and ``accuracy_vs_time.png`` (wall-clock and CPU time side by
    side) from a bench report; returns the paths written (none without finished runs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    if not rows:
        return []
    title = f"{report['config'].get('model', '')} on {report['config'].get('dataset', '')}"
    colors = {label: plt.cm.tab10(i % 10) for i, label in enumerate(
        label for label, r in rows.items() if r["role"] != "budget")}
    paths = []
    for name, axes in (("accuracy_vs_flops.png", ["flops"]), ("accuracy_vs_time.png",
                                                             ["time", "cpu"])):
        fig, subplots = plt.subplots(1, len(axes), figsize=(6.5 * len(axes), 4.6), squeeze=False)
        for ax, axis in zip(subplots[0], axes, strict=True):
            _draw(ax, axis, report, colors)
        fig.suptitle(title)
        paths.append(_save(fig, Path(out) / name))
    return paths


def _draw(ax, axis: str, report: dict, colors: dict) -> None:
    xlabel, scale = _X[axis]
    points = report["frontier"][axis]
    if points:
        ax.plot([p["cost"] * scale for p in points], [100 * p["acc"] for p in points],
                color="black", marker="s", markersize=4, linewidth=1.4,
                label="budget frontier (full training, fewer epochs)")
        for p in points:
            ax.annotate(f"{p['budget']:g}", (p["cost"] * scale, 100 * p["acc"]), fontsize=7,
                        xytext=(4, -10), textcoords="offset points")
    noise = report.get("noise_floor")
    if axis != "flops" and noise and noise.get(f"{axis}_ratio"):
        spread = abs(noise[f"{axis}_ratio"] - 1)
        ax.axvspan(1 - spread, 1 + spread, color="gray", alpha=0.15,
                   label=f"A/A noise floor (±{100 * spread:.1f}%)")
    for label, r in report["rows"].items():
        if r["role"] == "budget" or label == "full":
            continue
        cells = [(s["frontier"][axis] or {}).get("cost") for s in r["per_seed"]]
        pairs = [(c * scale, 100 * s["final_test_acc"]) for c, s in zip(cells, r["per_seed"],
                                                                          strict=True)
                 if c is not None]
        if not pairs:
            continue
        xs, ys = zip(*pairs, strict=True)
        ax.scatter(xs, ys, color=colors[label], alpha=0.35, s=16)
        x = sum(xs) / len(xs)
        y = sum(ys) / len(ys)
        xerr = (max(xs) - min(xs)) / 2 if len(xs) > 1 else None
        yerr = (100 * r["final_test_acc_std"]) if r["final_test_acc_std"] else None
        ax.errorbar([x], [y], xerr=xerr, yerr=yerr, color=colors[label], marker="o",
                    markersize=7, markeredgecolor="black", capsize=3, linestyle="none",
                    label=f"{label} ({len(pairs)} seed{'s' if len(pairs) > 1 else ''})")
    ax.set(xlabel=xlabel, ylabel="final test accuracy (%)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, dpi=110, format="png"))
    plt.close(fig)
    return path
