"""The paper's experiment grid (Learn&Drop, arXiv 2604.23403) at this machine's scale.

Paper: VGG-11, VGG-16, ResNet-50 and ResNet-152 on MNIST, CIFAR-10 and Imagenette; training time
more than halved, forward FLOPs during training cut by 17.83% (VGG-11) up to 83.74%
(ResNet-152). Here, by default:

- models: ``vgg11_cifar``, ``vgg16_cifar`` (the CIFAR-size VGGs: same 8 / 13 convolutions, a
  small head), ``resnet56`` as the stand-in for the ResNet-50 class and ``resnet110`` for the
  ResNet-152 class (CIFAR-size ResNets, He et al. 2016: ImageNet ResNets are built for 224 px
  inputs and their stems reduce a 32 px image to 1x1 after four stages);
- datasets: Fashion-MNIST in place of MNIST (MNIST is near-trivial for every method) and CIFAR-10
  (the offline copy in ``../shared/data``);
- methods: ``full`` and ``learndrop`` (``--with-peers`` adds FreezeOut and stochastic depth).

Each grid cell is one ``learndrop bench`` (``learndrop.bench.run_bench``) into
``OUT/<model>-<dataset>/``, resumable run by run: run the same command again after an
interruption. ``OUT/README.md`` (the combined table, next to the paper's figures),
``OUT/grid.json``, ``OUT/grid.png`` and ``OUT/machine.json`` are rewritten after every cell and by
``--report-only``, from whatever has finished.

Profiles:

- ``cpu``: subsets and epochs sized for about an hour on 2 quiet CPU cores (55-75 min,
  estimated from the FLOPs of each cell; check with ``--dry-run``, which times one step per cell);
- ``gpu``: whole datasets, paper-like epochs, three seeds;
- ``smoke``: a few hundred images and 2 epochs, to check that everything runs (minutes).

    python benchmarks/paper_grid.py --profile cpu --dry-run   # checks + time estimate, seconds
    python benchmarks/paper_grid.py --profile cpu             # about an hour on 2 quiet cores
    python benchmarks/paper_grid.py --profile gpu --device cuda
    python benchmarks/paper_grid.py --report-only             # redo the tables from what finished
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(REPO))

from learndrop.atomic import atomic_write  # noqa: E402
from learndrop.bench import machine_info, run_bench, write_report  # noqa: E402
from learndrop.train import TrainConfig  # noqa: E402

MODELS = ("vgg11_cifar", "vgg16_cifar", "resnet56", "resnet110")
DATASETS = ("fashion-mnist", "cifar10")
PEERS = ("freezeout", "stochastic-depth")
DEFAULT_OUT = {"cpu": REPO / "benchmarks/results/paper_grid",
               "gpu": REPO / "benchmarks/results/paper_grid_gpu"}

# The paper's network each model stands in for, and its forward-FLOPs cut where the paper states
# one.
PAPER = {
    "vgg11_cifar": ("VGG-11", "17.83%"),
    "vgg16_cifar": ("VGG-16", "–"),
    "resnet56": ("ResNet-50 (stand-in)", "–"),
    "resnet110": ("ResNet-152 (stand-in)", "83.74%"),
    "resnet50": ("ResNet-50", "–"),
    "resnet152": ("ResNet-152", "83.74%"),
    "vgg11": ("VGG-11", "17.83%"),
    "vgg16": ("VGG-16", "–"),
}


@dataclass(frozen=True)
class Profile:
    """Settings of a grid profile: common ones, and per-model training subsets."""

    epochs: int
    subset: dict[str, int | None]  # per model; None = the whole training set
    test_subset: int | None
    seeds: int
    batch_size: int = 128
    lr: float = 0.1
    note: str = ""

    def cell_subset(self, model: str) -> int | None:
        return self.subset.get(model, self.subset.get("*"))


# CPU: about an hour in all on 2 quiet cores (55-75 min). The estimate behind it: per cell,
# training FLOPs (fwd+bwd per sample: VGG-11 0.8-0.9 GFLOPs, VGG-16 1.6-1.9, ResNet-56
# 0.6-0.75, ResNet-110 1.2-1.5) times subset x epochs, Learn&Drop's run at about 0.7 of full's,
# plus evaluating 1,000 test images per epoch per run (a third of the total): about 115 TFLOPs
# for the 8 cells, at 25-35 GFLOP/s (one step per cell timed at 17-27 GFLOP/s on a *busy*
# machine). The heavier networks get half the images so that every cell costs about the same.
# Batch 64 (lr scaled to 0.05): twice the optimizer steps of batch 128 for the same compute,
# which so small a sample budget needs. `--dry-run` times one step per cell and prints the total.
PROFILES = {
    "cpu": Profile(epochs=8, test_subset=1000, seeds=1, batch_size=64, lr=0.05,
                   subset={"vgg11_cifar": 2000, "vgg16_cifar": 800, "resnet56": 2000,
                           "resnet110": 800, "*": 1000},
                   note="2 CPU cores, one thread per run: small class-balanced subsets, 8 "
                        "epochs, 1,000 test images; ratios at this scale are indicative, not the "
                        "paper's regime"),
    "gpu": Profile(epochs=30, test_subset=None, seeds=3, subset={"*": None},
                   note="whole training and test sets, 30 epochs, 3 seeds"),
    "smoke": Profile(epochs=2, test_subset=200, seeds=1, batch_size=64, lr=0.05,
                     subset={"*": 256}, note="a check that the grid runs; numbers mean nothing"),
}


def cell_name(model: str, dataset: str) -> str:
    return f"{model}-{dataset}"


def cell_config(profile: Profile, model: str, dataset: str, args: argparse.Namespace
                ) -> TrainConfig:
    """The bench's base configuration of one grid cell."""
    return TrainConfig(
        model=model, dataset=dataset,
        epochs=args.epochs or profile.epochs,
        subset=(args.subset or None) if args.subset is not None else profile.cell_subset(model),
        test_subset=profile.test_subset,
        batch_size=profile.batch_size, lr=profile.lr, seed=args.seed, device=args.device,
        quiet=True, plots=True,
    )


# ---- the report ------------------------------------------------------------------------------

def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}%"


def _signed_pts(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:+.2f}"


def _ratio(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def collect(out: Path) -> list[dict]:
    """Every cell under ``out`` with a finished run, its bench report redone from its runs."""
    cells = []
    for d in sorted(p for p in out.iterdir() if p.is_dir()):
        if not list(d.glob("*/summary.json")):
            continue
        report = write_report(d)  # from the run directories: whatever has finished
        cells.append({"cell": d.name, **report})
    return cells


def write_grid_report(out: Path, settings: dict | None = None) -> Path:
    """Write ``README.md``, ``grid.json``, ``grid.png`` and ``machine.json`` into ``out`` from the
    finished runs (can be re-run at any time: ``--report-only``)."""
    out = Path(out)
    grid_path = out / "grid.json"
    previous = json.loads(grid_path.read_text()) if grid_path.is_file() else {}
    settings = settings or previous.get("settings", {})
    cells = collect(out)
    rows = []
    for c in cells:
        agg = {label: r for label, r in c["rows"].items() if r["role"] == "method"}
        full, ld = agg.get("full", {}), agg.get("learndrop", {})
        cfg = c["config"]
        rows.append({
            "cell": c["cell"], "model": cfg.get("model"), "dataset": cfg.get("dataset"),
            "epochs": cfg.get("epochs"), "subset": cfg.get("subset"),
            "test_subset": cfg.get("test_subset"), "seeds": c["seeds"],
            "full_acc": full.get("final_test_acc"), "learndrop_acc": ld.get("final_test_acc"),
            "acc_delta": ld.get("acc_delta"), "time_ratio": ld.get("time_ratio"),
            "fwd_flops_reduction": None if not ld else 1 - ld["fwd_flops_ratio"],
            "bwd_flops_reduction": None if not ld else 1 - ld["bwd_flops_ratio"],
            "units_dropped": ld.get("units_dropped"), "units_total": ld.get("units_total"),
            "full_time_s": full.get("train_time_s"), "learndrop_time_s": ld.get("train_time_s"),
            "others": {m: {k: a[k] for k in ("time_ratio", "acc_delta", "final_test_acc",
                                             "fwd_flops_ratio", "bwd_flops_ratio")}
                       for m, a in agg.items() if m not in ("full", "learndrop")},
        })
    def order(row: dict) -> tuple:  # the paper's order: by network, then dataset
        known = lambda seq, x: seq.index(x) if x in seq else len(seq)  # noqa: E731
        return known(MODELS, row["model"]), known(DATASETS, row["dataset"]), row["cell"]

    rows.sort(key=order)
    machine = {**machine_info(cells[0]["machine"]["device"] if cells else None), **_lscpu()}
    grid = {"settings": settings, "cells": rows}
    _write(grid_path, json.dumps(grid, indent=2))
    _write(out / "machine.json", json.dumps(machine, indent=2))
    if rows:
        _grid_plot(rows, out / "grid.png")
    _write(out / "README.md", grid_markdown(rows, settings, machine))
    return out / "README.md"


def grid_markdown(rows: list[dict], settings: dict, machine: dict) -> str:
    lines = [
        "# The paper's grid at this machine's scale",
        "",
        "Generated by `benchmarks/paper_grid.py` "
        f"(`{settings.get('command', 'python benchmarks/paper_grid.py')}`); redo this file from "
        "the finished runs with `python benchmarks/paper_grid.py --report-only --out "
        f"{settings.get('out', 'DIR')}`.",
        "",
        f"Profile **{settings.get('profile', '?')}**: {settings.get('note', '')}. Machine: "
        f"{machine.get('cpu')}, {machine.get('cpus_usable')} CPUs usable, torch "
        f"{machine.get('torch')}, device {machine.get('device')} (`machine.json`).",
        "",
        "**The paper** (Cruciata et al., arXiv 2604.23403), on VGG-11, VGG-16, ResNet-50 and "
        "ResNet-152 with MNIST, CIFAR-10 and Imagenette: training time more than halved (time "
        "ratio below 0.5) with little accuracy loss; forward FLOPs during training cut by 17.83% "
        "(VGG-11) up to 83.74% (ResNet-152).",
        "",
        "**Here**: Learn&Drop against full training of the same network, data, seed and "
        "epochs, in one bench per cell (medians over seeds). Time ratio: Learn&Drop's training "
        "time over full's (training steps only). FLOPs reductions: executed against the full "
        "network over the same samples. Stand-ins: CIFAR ResNet-56 for the ResNet-50 class, "
        "CIFAR ResNet-110 for the ResNet-152 class, Fashion-MNIST for MNIST.",
        "",
        "| paper's network | here | dataset | epochs | train / test images | acc full | "
        "acc Learn&Drop | Δ (pts) | time ratio | fwd FLOPs cut | paper's fwd cut | "
        "bwd FLOPs cut | units dropped |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        who, paper_cut = PAPER.get(r["model"], (r["model"], "–"))
        units = ("–" if r["units_dropped"] is None
                 else f"{r['units_dropped']:g}/{r['units_total']}")
        lines.append(
            f"| {who} | `{r['model']}` | {r['dataset']} | {r['epochs']} "
            f"| {r['subset'] or 'all'} / {r['test_subset'] or 'all'} | {_pct(r['full_acc'])} "
            f"| {_pct(r['learndrop_acc'])} | {_signed_pts(r['acc_delta'])} "
            f"| {_ratio(r['time_ratio'])} | {_pct(r['fwd_flops_reduction'])} | {paper_cut} "
            f"| {_pct(r['bwd_flops_reduction'])} | {units} |")
    others = sorted({m for r in rows for m in r["others"]})
    if others:
        lines += ["", "Peers, same cells (time ratio / Δ acc in points / fwd FLOPs ratio):", "",
                  "| cell | " + " | ".join(others) + " |",
                  "|---|" + "---:|" * len(others)]
        for r in rows:
            cells = [(f"{_ratio(o['time_ratio'])} / {_signed_pts(o['acc_delta'])} / "
                      f"{_ratio(o['fwd_flops_ratio'])}") if (o := r["others"].get(m)) else "–"
                     for m in others]
            lines.append(f"| {r['cell']} | " + " | ".join(cells) + " |")
    lines += ["", "Per cell: `<model>-<dataset>/bench.md` (every run), `bench.json`, "
              "`accuracy_vs_flops.png`, `accuracy_vs_time.png`, and the run directories. All "
              "cells: `grid.json`, `grid.png`.", ""]
    if not rows:
        lines.insert(2, "No cell has finished yet.\n")
    return "\n".join(lines)


def _grid_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["cell"] for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows)), 4.2))
    w = 0.38
    ax.bar([i - w / 2 for i in x], [r["time_ratio"] or 0 for r in rows], w,
           label="time ratio (Learn&Drop / full)")
    ax.bar([i + w / 2 for i in x], [1 - (r["fwd_flops_reduction"] or 0) for r in rows], w,
           label="forward FLOPs ratio")
    ax.axhline(0.5, color="gray", linestyle="--", linewidth=1, label="paper: time halved")
    ax.set_xticks(list(x), names, rotation=30, ha="right", fontsize=8)
    top = max(1.25, 1.1 * max(r["time_ratio"] or 0 for r in rows))
    ax.set(ylabel="Learn&Drop / full", ylim=(0, top), title="Learn&Drop against full training")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, dpi=110, format="png"))
    plt.close(fig)


def _lscpu() -> dict:
    """The CPU as ``lscpu`` describes it (model, cores, caches), where available."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    keep = ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket", "Socket(s)",
            "L2 cache", "L3 cache", "Hypervisor vendor")
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {"lscpu": {k: fields[k].strip() for k in keep if k in fields},
            "nproc": os.cpu_count()}


def _write(path: Path, text: str) -> None:
    data = text.encode()
    atomic_write(path, lambda f: f.write(data))


# ---- main -----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    p.add_argument("--out", default=None,
                   help="grid directory (default benchmarks/results/paper_grid for cpu, "
                        "…/paper_grid_gpu for gpu, a new temporary directory for smoke)")
    p.add_argument("--models", default=",".join(MODELS),
                   help="comma-separated (e.g. resnet50,resnet152 for the ImageNet ResNets)")
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--with-peers", action="store_true",
                   help="also FreezeOut and stochastic depth")
    p.add_argument("--seeds", type=int, default=None, help="default: the profile's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="override the profile's")
    p.add_argument("--subset", type=int, default=None,
                   help="override the profile's per-model subsets (0 = whole training set)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dry-run", action="store_true",
                   help="check every cell and time one step of each; writes nothing")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep last.ckpt and model.pt of finished runs (by default deleted, so "
                        "that the results directory stays small enough to commit)")
    p.add_argument("--report-only", action="store_true",
                   help="only rewrite README.md, grid.json, grid.png, machine.json from what "
                        "has finished")
    args = p.parse_args(argv)

    profile = PROFILES[args.profile]
    if args.out:
        out = Path(args.out)
    elif args.profile in DEFAULT_OUT:
        out = DEFAULT_OUT[args.profile]
    else:
        out = Path(tempfile.mkdtemp(prefix="paper_grid-smoke-"))
    if args.report_only:
        print(write_grid_report(out).read_text())
        return 0

    methods = ["full", "learndrop", *(PEERS if args.with_peers else ())]
    seeds = args.seeds or profile.seeds
    cells = [(m, d) for d in args.datasets.split(",") for m in args.models.split(",")]
    settings = {
        "profile": args.profile, "note": profile.note, "methods": methods, "seeds": seeds,
        "out": str(out.relative_to(REPO)) if out.is_relative_to(REPO) else str(out),
        "command": "python benchmarks/paper_grid.py " + shlex.join(
            a for a in (argv if argv is not None else sys.argv[1:])),
    }
    estimate_s = 0.0
    for i, (model, dataset) in enumerate(cells):
        base = cell_config(profile, model, dataset, args)
        cell = out / cell_name(model, dataset)
        print(f"== cell {i + 1}/{len(cells)}: {cell.name} ({base.epochs} epochs, subset "
              f"{base.subset or 'all'}, methods {','.join(methods)}, {seeds} seed(s))",
              flush=True)
        # The paper's comparison only (no budget frontier or A/A control: the grid's cost is
        # sized without them; benchmarks/proof.py runs the whole protocol).
        result = run_bench(base, methods, seeds, cell, budgets=(), aa_control=False,
                           dry_run=args.dry_run, prune=not args.keep_checkpoints,
                           log=lambda s: print(s, flush=True))
        if args.dry_run:
            # Learn&Drop's run costs less than full's; 0.75 of it is a middle guess.
            todo = [r for r in result["runs"] if not r["action"].startswith("kept")]
            estimate_s += result["estimated_full_run_s"] * sum(
                1.0 if r["method"] == "full" else 0.75 for r in todo)
        else:
            write_grid_report(out, settings)
    if args.dry_run:
        print(f"dry run OK: {len(cells)} cells; about {estimate_s / 60:.0f} min of training "
              "steps (one timed step per cell; evaluation adds up to half as much again; on a "
              "busy machine the estimate means nothing)")
        return 0
    print(f"wrote {write_grid_report(out, settings)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
