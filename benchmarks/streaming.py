"""Streaming benchmark: Learn&Drop against full training and the stream frontier, one pass.

For each stream order (the dataset's shuffled order, class-incremental) and seed it trains the
same model on the same stream with each method, and full training on the first 25%, 50% and 75%
of the stream (``--budgets``): the *stream frontier*, the budget alternative of a stream (train
on only part of it, at the same constant learning rate). Learn&Drop is worth using on a stream
where its accuracy lies above that frontier at its own executed FLOPs (forward, its extra passes
included, plus backward; :mod:`learndrop.bench.frontier`, interpolated between the budgets).
It writes to ``--out``:

* ``<order>-<method>-s<seed>/`` and ``<order>-full-b<f>-s<seed>/``: each run's directory
  (summary.json, metrics.jsonl, plots);
* ``results.json`` and ``results.md``: wall-clock ratio learndrop/full, accuracy of both,
  FLOPs reductions and drops, and the machine it ran on;
* ``streaming.png``: test accuracy over time and forward FLOPs per step over the stream.

Runs are resumable one by one: a run whose summary.json exists is not run again.

CPU-sized defaults (about 3-5 minutes on 2 shared cores)::

    python benchmarks/streaming.py

Full-size settings on a GPU, e.g.::

    python benchmarks/streaming.py --dataset cifar10 --model resnet56 --image-size 32 \\
        --subset 0 --batch-size 128 --lr 0.1 --steps-per-check 100 --eval-every 100 \\
        --test-subset 0 --device cuda --threads 0 --out benchmarks/results/streaming-gpu
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from learndrop.atomic import atomic_write, atomic_write_text  # noqa: E402
from learndrop.bench.frontier import build_frontier, compare, mean_std, verdict  # noqa: E402
from learndrop.bench.plan import parse_budgets, parse_seeds  # noqa: E402
from learndrop.bench.report import run_cost  # noqa: E402
from learndrop.machine import cpu_model  # noqa: E402
from learndrop.precision import resolve_precision  # noqa: E402
from learndrop.train.config import TrainConfig  # noqa: E402
from learndrop.train.report import read_rows  # noqa: E402
from learndrop.train.stream import train_stream  # noqa: E402


def machine() -> str:
    """One line naming the CPU/GPU, cores and torch threads."""
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu_model()}, {os.cpu_count()} cores (nproc), torch {torch.__version__} with "
            f"{torch.get_num_threads()} thread(s){gpu}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None,
                   help="default benchmarks/results/streaming, or streaming-cosine with "
                        "--stream-schedule cosine")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--subset", type=int, default=16000,
                   help="training images in the stream (0 = all): one pass")
    p.add_argument("--test-subset", type=int, default=1000, help="0 = the whole test set")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--steps-per-check", type=int, default=25)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--classes-per-stage", type=int, default=2)
    p.add_argument("--orders", default="dataset,class-incremental")
    p.add_argument("--methods", default="full,learndrop")
    p.add_argument("--policy", default="{}", help='JSON of DropPolicy fields, e.g. '
                                                 '\'{"change_threshold": 0.6}\'')
    p.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--budgets", default="0.25,0.5,0.75",
                   help="full training on these fractions of the stream: the stream frontier "
                        "('none' for none)")
    p.add_argument("--stream-schedule", default="constant", choices=("constant", "cosine"),
                   help="learning rate after the warm-up: constant (a stream of unknown end, "
                        "the paper's case) or cosine to zero over each run's own stream (the "
                        "whole stream, or a budget's prefix: the frontier with its schedule "
                        "compressed, and a final iterate that is not a constant rate's noisy one)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16"),
                   help="fp32 by default: auto is bf16 on a CPU with AVX512_BF16 and fp32 on "
                        "one without, and the committed runs are fp32")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 avoids oversubscription on shared cores; 0 = "
                        "torch's default)")
    args = p.parse_args(argv)
    if args.out is None:
        name = "streaming" + ("-cosine" if args.stream_schedule == "cosine" else "")
        args.out = str(ROOT / "benchmarks/results" / name)
    return args


def seeds_of(args: argparse.Namespace) -> list[int]:
    try:
        return parse_seeds(args.seeds)
    except ValueError as err:
        raise SystemExit(f"streaming.py: error: {err}") from err


def planned_runs(args: argparse.Namespace) -> list[tuple[str, str, str, float, int]]:
    """``(order, label, method, fraction of the stream, seed)`` of every run, seed by seed."""
    try:
        budgets = parse_budgets(args.budgets)
    except ValueError as err:
        raise SystemExit(f"streaming.py: error: {err}") from err
    runs = []
    for seed in seeds_of(args):
        for order in args.orders.split(","):
            runs += [(order, m, m, 1.0, seed) for m in args.methods.split(",")]
            runs += [(order, f"full-b{f:g}", "full", f, seed) for f in budgets]
    return runs


def precision_of(args: argparse.Namespace) -> str:
    """What ``--precision`` resolves to on ``--device`` (``auto``: bf16 where native)."""
    return resolve_precision(args.precision, args.device).name


def run_all(args: argparse.Namespace) -> dict:
    """``{order: {label: {seed: summary}}}``; a run whose summary.json exists is kept."""
    out = Path(args.out)
    results: dict[str, dict[str, dict[int, dict]]] = {}
    for order, label, method, fraction, seed in planned_runs(args):
        run = out / f"{order}-{label}-s{seed}"
        summary_file = run / "summary.json"
        if summary_file.is_file():
            summary = json.loads(summary_file.read_text())
            ran, asked = summary.get("precision", "fp32"), precision_of(args)
            if ran != asked:
                raise SystemExit(f"streaming.py: error: {run} trained in {ran}, this run asks "
                                 f"for {asked}; pass --precision {ran}, or choose another --out")
            kept = json.loads((run / "config.json").read_text()).get("stream_schedule",
                                                                     "constant")
            if kept != args.stream_schedule:
                raise SystemExit(f"streaming.py: error: {run} trained with a {kept} learning "
                                 f"rate, this run asks for {args.stream_schedule}; pass "
                                 f"--stream-schedule {kept}, or choose another --out")
            print(f"{run.name}: done already, kept")
        else:
            batches = None
            if fraction < 1.0:  # the first fraction of the same stream, in batches
                images = args.subset or None
                if images is None:
                    raise SystemExit("streaming.py: error: --budgets needs --subset N (the "
                                     "stream's length); use --budgets none with --subset 0")
                batches = max(1, round(fraction * images / args.batch_size))
            config = TrainConfig(
                model=args.model, dataset=args.dataset, method=method, stream=True,
                stream_order=order,
                classes_per_stage=(args.classes_per_stage if order == "class-incremental"
                                   else TrainConfig.classes_per_stage),
                image_size=args.image_size, subset=args.subset or None,
                test_subset=args.test_subset or None, batch_size=args.batch_size,
                lr=args.lr, steps_per_check=args.steps_per_check, eval_every=args.eval_every,
                method_options=json.loads(args.policy) if method != "full" else {},
                stream_length=batches, stream_schedule=args.stream_schedule, seed=seed,
                device=args.device, precision=args.precision,
                out=str(run), overwrite=True, quiet=True)
            print(f"{run.name}: running")
            summary = train_stream(config, log=lambda s, n=run.name: print(f"  [{n}] {s}"))
        summary["budget"] = fraction
        results.setdefault(order, {}).setdefault(label, {})[seed] = summary
    return results


def flops(summary: dict) -> float:
    """Executed FLOPs, the bench's own measure (forward with the extra passes, plus backward)."""
    return run_cost(summary, "flops")


def stream_frontier(by_label: dict[str, dict[int, dict]]) -> dict:
    """The stream frontier of one order and every method's place against it (FLOPs axis)."""
    points = build_frontier((s["budget"], flops(s), s["final_test_acc"])
                            for label, by_seed in by_label.items()
                            if label == "full" or label.startswith("full-b")
                            for s in by_seed.values())
    full = by_label.get("full", {})
    rows = {}
    for label, by_seed in by_label.items():
        mean, std = mean_std([s["final_test_acc"] for s in by_seed.values()])
        deltas = [s["final_test_acc"] - full[seed]["final_test_acc"]
                  for seed, s in by_seed.items() if seed in full]
        comparisons = [compare(points, flops(s), s["final_test_acc"]) for s in by_seed.values()]
        margins = [c.margin for c in comparisons]
        margin_mean, margin_std = mean_std([m for m in margins if m is not None])
        rows[label] = {
            "seeds": sorted(by_seed), "acc_mean": mean, "acc_std": std,
            "acc_delta_vs_full_mean": mean_std(deltas)[0],
            "flops_mean": statistics.fmean(flops(s) for s in by_seed.values()),
            "flops_ratio_vs_full": (statistics.fmean(flops(s) / flops(full[seed])
                                                     for seed, s in by_seed.items()
                                                     if seed in full) if full else None),
            "units_dropped": [s["units_dropped"] for s in by_seed.values()],
            "units_total": next(iter(by_seed.values()))["units_total"],
            "margin_mean": margin_mean, "margin_std": margin_std,
            "frontier_acc_mean": mean_std([c.frontier_acc for c in comparisons
                                           if c.frontier_acc is not None])[0],
            "verdict": verdict(margins),
            # The bar: above the frontier by more than one seed-std of the accuracy.
            "above_by_more_than_one_std": bool(margin_mean is not None and std is not None
                                               and margin_mean > std),
        }
    return {"points": [vars(p) for p in points], "rows": rows}


def _pct(x: float | None, sign: bool = False) -> str:
    return "" if x is None else f"{100 * x:+.2f}" if sign else f"{100 * x:.2f}"


def write_report(args: argparse.Namespace, results: dict) -> None:
    out = Path(args.out)
    lines = [
        "# Streaming: Learn&Drop vs full training and the stream frontier",
        "",
        f"Machine: {machine()}. Runs one after another; time on a shared machine is noisy, so "
        "the comparison is on executed FLOPs (exact: forward, the method's extra passes "
        "included, plus backward).",
        "",
        f"Setup: {args.model} on a one-pass stream of {args.dataset} "
        f"({args.subset or 'all'} training images at {args.image_size}x{args.image_size}, "
        f"batches of {args.batch_size}, each used once), SGD lr {args.lr} "
        f"{'constant' if args.stream_schedule == 'constant' else 'in a cosine decay to zero'} "
        f"after a {args.steps_per_check}-step warm-up, scores and drop decisions every "
        f"{args.steps_per_check} steps, test accuracy on {args.test_subset or 'all'} held-out "
        f"images every {args.eval_every} steps. Seeds {args.seeds}. Policy: {args.policy}. The "
        f"stream frontier: full training on the first {args.budgets} of the stream, "
        + ("same constant rate" if args.stream_schedule == "constant"
           else "the cosine compressed to each prefix") + ", and on all of it.",
        "",
        "Command: `python benchmarks/streaming.py " + " ".join(sys.argv[1:]) + "`",
        "",
    ]
    report = {}
    for order, by_label in results.items():
        front = stream_frontier(by_label)
        report[order] = front
        lines += [
            f"## {order} stream", "",
            "| run | seeds | final test acc (mean ± std) | vs full | FLOPs vs full | "
            "stream frontier at its FLOPs | margin (mean ± std) | verdict | units dropped |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for label, row in front["rows"].items():
            std = "" if row["acc_std"] is None else f" ± {_pct(row['acc_std'])}"
            mstd = "" if row["margin_std"] is None else f" ± {_pct(row['margin_std'])}"
            ratio = row["flops_ratio_vs_full"]
            lines.append(
                f"| {label} | {len(row['seeds'])} | {_pct(row['acc_mean'])}%{std} | "
                f"{_pct(row['acc_delta_vs_full_mean'], True)} | "
                f"{'' if ratio is None else f'{ratio:.3f}'} | "
                f"{_pct(row['frontier_acc_mean'])} | {_pct(row['margin_mean'], True)}{mstd} | "
                f"{row['verdict'] if not label.startswith('full') else 'frontier'} | "
                f"{', '.join(map(str, row['units_dropped']))} of {row['units_total']} |")
        lines += ["", "Drops (seed, step: unit):", ""]
        for label, by_seed in by_label.items():
            for seed, s in by_seed.items():
                if s["drops"]:
                    drops = ", ".join(f"{d['step']}: {d.get('action', 'drop')} {d['unit']}"
                                      for d in s["drops"])
                    lines.append(f"- {label}, seed {seed}: {drops}")
        lines.append("")
    lines += [
        "Accuracies in percent, differences in points. The margin is a run's accuracy minus the "
        "stream frontier's at the run's own executed FLOPs (linear between the budgets, never "
        "extrapolated). The class-incremental stream has no replay: every method forgets the "
        "earlier classes, so its final accuracy is about that of the last stage's classes alone "
        "(metrics.jsonl's test_acc_seen follows the classes seen so far), and a prefix of it has "
        "seen other classes: its frontier says little. Test accuracy is measured every "
        "--eval-every steps on the held-out images; evaluation is not counted as stream time.",
        "",
        "![accuracy and FLOPs over the stream](streaming.png)", ""]
    atomic_write_text(out / "results.md", "\n".join(lines))
    atomic_write_text(out / "results.json", json.dumps(
        {"machine": machine(), "args": vars(args), "orders": report}, indent=2))
    plot(out, results)


def plot(out: Path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    orders = list(results)
    fig, axes = plt.subplots(len(orders), 2, figsize=(11, 3.6 * len(orders)), squeeze=False)
    for row, order in enumerate(orders):
        ax_acc, ax_flops = axes[row]
        for label, by_seed in results[order].items():
            seed = min(by_seed)
            rows = read_rows(out / f"{order}-{label}-s{seed}" / "metrics.jsonl")
            ax_acc.plot([r["time_s"] for r in rows], [100 * r["test_acc"] for r in rows],
                        marker=".", label=f"{label} (seed {seed})")
            steps = [0] + [r["step"] for r in rows]
            fwd = [rows[0]["fwd_flops_per_sample_full"]] + [r["fwd_flops_per_sample"]
                                                             for r in rows]
            ax_flops.step(steps, [f / 1e6 for f in fwd], where="post", label=label)
        ax_acc.set(xlabel="stream time (s, evaluation excluded)", ylabel="test accuracy (%)",
                   title=f"{order} stream: accuracy over time")
        ax_flops.set(xlabel="stream step", ylabel="forward MFLOPs per sample",
                     title=f"{order} stream: FLOPs per step", ylim=(0, None))
        for ax in (ax_acc, ax_flops):
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    atomic_write(out / "streaming.png", lambda f: fig.savefig(f, dpi=100, format="png"))
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    results = run_all(args)
    write_report(args, results)
    print((Path(args.out) / "results.md").read_text())


if __name__ == "__main__":
    main()
