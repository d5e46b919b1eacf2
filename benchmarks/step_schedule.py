"""The late-drop guard under a step schedule: what does ``min_lr_fraction=0.5`` (the default since
session 33) cost in savings where the learning rate falls in steps?

Under a step schedule the guard trips at the first cut below half the peak rate and nothing is
dropped after it (``DropPolicy.min_lr_fraction``). This measures the savings that loses, and what
it does to accuracy, against the guard off (``min_lr_fraction=0``, the default until session 33)
and full training, each seed's three runs in turn on one machine.

The regime is the Fashion-MNIST bench of the guard's paired runs (``decay-guard-fashion-mnist``:
ResNet-56, 5,000 training images, 8 epochs, batch 128, SGD 0.1, fp32), with its cosine replaced by
the classic step schedule of He et al. (2016): one warm-up epoch, then the peak rate, x0.1 at half
of the steps and x0.1 again at three quarters. The trainer offers cosine and warmup-stable-decay
only, so this script swaps the trainer's schedule function for the step one (each run's
``config.json`` still says ``lr_decay_fraction: 1``; ``results.json`` records the schedule).

Resumable run by run (a run with a ``summary.json`` is kept, without its checkpoint and model,
so that the directory stays small enough to commit). Accuracy and exact FLOPs are the
measures; wall-clock is reported but the runs are short. Writes ``results.json`` and ``results.md``
into ``--out``::

    nice -n -10 python benchmarks/step_schedule.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import learndrop.train.trainer as trainer  # noqa: E402
from learndrop.atomic import atomic_write_text  # noqa: E402
from learndrop.bench import prune_checkpoints  # noqa: E402
from learndrop.bench.frontier import mean_std  # noqa: E402
from learndrop.train import TrainConfig, train  # noqa: E402

MILESTONES = (0.5, 0.75)  # fractions of the run's steps where the rate is cut
GAMMA = 0.1
RUNS = {  # label: Learn&Drop's options (None: full training)
    "full": None,
    "guard-off": {"min_lr_fraction": 0.0},
    "guard": {},  # the defaults: min_lr_fraction=0.5
}


def step_schedule(total_steps: int, warmup_steps: int, extensions: list, decay_fraction: float = 1.0
                  ) -> Callable[[float], float]:
    """Learning-rate factor of step ``s``: linear warm-up over ``warmup_steps``, then 1, times
    ``GAMMA`` after each of ``MILESTONES`` (fractions of ``total_steps``). Replaces
    :func:`learndrop.train.trainer.lr_schedule` (same signature; no extensions, no decay)."""
    if extensions or decay_fraction != 1:
        raise SystemExit("step_schedule.py: runs are not extended and have no decay fraction")
    cuts = [round(m * total_steps) for m in MILESTONES]

    def factor(step: float) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return GAMMA ** sum(step >= c for c in cuts)

    return factor


def run_one(label: str, seed: int, out: Path, args: argparse.Namespace) -> dict:
    run = out / f"{label}-s{seed}"
    summary = run / "summary.json"
    if not summary.is_file():
        options = RUNS[label]
        config = TrainConfig(
            model="resnet56", dataset="fashion-mnist", subset=5000, epochs=args.epochs,
            batch_size=128, lr=0.1, seed=seed, precision="fp32", quiet=True, plots=False,
            method="full" if options is None else "learndrop",
            method_options=dict(options or {}), out=str(run), overwrite=True)
        train(config, log=lambda s: print(f"  {label}-s{seed}: {s}", flush=True))
        prune_checkpoints(out)  # a finished run is kept by its summary and metrics
    result = json.loads(summary.read_text())
    if result.get("epochs") != args.epochs:  # another experiment: never mixed into this one
        raise SystemExit(f"step_schedule.py: {run} trained {result.get('epochs')} epochs, not "
                         f"{args.epochs}; choose another --out")
    return result


def flops_ratio(s: dict) -> float:
    return (s["fwd_flops"] + s["bwd_flops"]) / (s["fwd_flops_full"] + s["bwd_flops_full"])


def after_cut(s: dict, cut_epoch: float) -> int:
    return sum(1 for d in s.get("drops", []) if d["action"] == "drop" and d["epoch"] > cut_epoch)


def mean_std_text(xs: list[float]) -> str:
    mean, std = mean_std(xs)
    return f"{mean:+.2f}" if std is None else f"{mean:+.2f} ± {std:.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/step-schedule"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=8)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trainer.lr_schedule = step_schedule
    cut_epoch = MILESTONES[0] * args.epochs
    rows = {}
    for seed in args.seeds:
        for label in RUNS:
            s = run_one(label, seed, out, args)
            rows[f"{label}-s{seed}"] = {
                "seed": seed, "label": label, "acc": s["final_test_acc"],
                "flops_ratio": flops_ratio(s), "units_dropped": s["units_dropped"],
                "drops_after_first_cut": after_cut(s, cut_epoch),
                "train_time_s": s["train_time_s"], "machine": s["machine"]}
    lines = ["# The late-drop guard under a step schedule", "",
             f"Generated by `python benchmarks/step_schedule.py --seeds "
             f"{' '.join(map(str, args.seeds))}`. ResNet-56, Fashion-MNIST (5,000 training "
             f"images, the whole test set), {args.epochs} epochs, batch 128, SGD 0.1, fp32; one "
             f"warm-up epoch, then x{GAMMA:g} at {MILESTONES[0]:g} and {MILESTONES[1]:g} of the "
             "steps. `guard`: today's defaults (`min_lr_fraction=0.5`); `guard-off`: "
             "`min_lr_fraction=0`. FLOPs: forward + backward executed over full training's.", "",
             "| run | test acc | FLOPs ratio | units dropped | of them after the first cut |",
             "|---|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {100 * r['acc']:.2f}% | {r['flops_ratio']:.3f} | "
                     f"{r['units_dropped']} | {r['drops_after_first_cut']} |")
    seeds = args.seeds
    diff = {k: [100 * (rows[f"{k}-s{s}"]["acc"] - rows[f"full-s{s}"]["acc"]) for s in seeds]
            for k in ("guard-off", "guard")}
    pair = [100 * (rows[f"guard-s{s}"]["acc"] - rows[f"guard-off-s{s}"]["acc"]) for s in seeds]
    lost = [rows[f"guard-s{s}"]["flops_ratio"] - rows[f"guard-off-s{s}"]["flops_ratio"]
            for s in seeds]
    lines += ["", f"- Against full training (points, mean ± std over {len(seeds)} seed(s)): "
              f"guard-off {mean_std_text(diff['guard-off'])}, "
              f"guard {mean_std_text(diff['guard'])}.",
              f"- Guard minus guard-off: {mean_std_text(pair)} points, "
              f"{', '.join(f'{x:+.3f}' for x in lost)} of full training's FLOPs (the savings "
              "the guard gives up).",
              f"- Machine: {next(iter(rows.values()))['machine']}.", ""]
    result = {"milestones": MILESTONES, "gamma": GAMMA, "epochs": args.epochs, "runs": rows,
              "vs_full": diff, "guard_minus_off": pair, "flops_given_up": lost}
    atomic_write_text(out / "results.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "results.md", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
