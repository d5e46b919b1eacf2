"""The regime where depth matters: does Learn&Drop keep the deep network's accuracy?

In short runs on small subsets a 2-block ResNet learns as much as a 27-block one, so any drop
rule looks free (DESIGN.md section 6). This benchmark first measures the depth gap (full training
of ResNet-110 against full training of ResNet-20, same data, schedule and seed), then runs the
whole method set on ResNet-110: full, learndrop, slim-from-scratch, random-drop, freezeout,
stochastic-depth. Learn&Drop's scores matter only if it beats slim-from-scratch (the slim final
network trained from the first step) and random-drop (the same drops, chosen at random) there.

Resumable run by run (a finished run is never redone; an interrupted one resumes from its
checkpoint), so the CPU profile, which takes hours on 2 cores, can run in the background and
continue later with the same command (but a checkpoint does not reach another session's
checkout: on 2 CPU cores with native bf16, ``python benchmarks/proof.py --profile cpu-depth``
is the depth regime whose runs each finish within a session, ResNet-56 against ResNet-20):

    python benchmarks/depth_regime.py --profile cpu          # full CIFAR-10, 2 CPU cores: hours
    python benchmarks/depth_regime.py --profile gpu          # full CIFAR-10, paper-like epochs
    python benchmarks/depth_regime.py --profile smoke --out /tmp/depth   # seconds, proves the path
    python benchmarks/depth_regime.py --report-only          # tables from whatever has finished
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from learndrop.atomic import atomic_write_text  # noqa: E402
from learndrop.bench import machine_info, run_bench  # noqa: E402
from learndrop.train.config import TrainConfig  # noqa: E402

METHODS = ["full", "learndrop", "slim-from-scratch", "random-drop", "freezeout",
           "stochastic-depth"]
DEEP, SHALLOW = "resnet110", "resnet20"

PROFILES = {
    # Full CIFAR-10 with the standard recipe, scaled in epochs to what 2 cores can finish in a
    # few sessions; the gap between ResNet-110 and ResNet-20 needs the whole training set.
    "cpu": dict(dataset="cifar10", subset=None, epochs=30, batch_size=128, lr=0.1, seeds=1),
    # The paper-scale setting for one GPU.
    "gpu": dict(dataset="cifar10", subset=None, epochs=160, batch_size=128, lr=0.1, seeds=3),
    "smoke": dict(dataset="fashion-mnist", subset=256, test_subset=500, epochs=3, batch_size=64,
                  lr=0.05, seeds=1, image_size=16),
}


def base_config(profile: dict, device: str) -> TrainConfig:
    settings = {k: v for k, v in profile.items() if k != "seeds"}
    return TrainConfig(model=DEEP, quiet=True, device=device, **settings)


def report(out: Path) -> str:
    """Markdown: the depth gap, then the method table on the deep network."""
    lines = ["# Depth regime: ResNet-110 vs ResNet-20, and the method set on ResNet-110", ""]
    gap = None
    shallow = out / SHALLOW / "bench.json"
    deep = out / DEEP / "bench.json"
    if shallow.exists() and deep.exists():
        acc = {m: json.loads(p.read_text())["rows"]["full"]["final_test_acc"]
               for m, p in ((SHALLOW, shallow), (DEEP, deep))}
        gap = acc[DEEP] - acc[SHALLOW]
        verdict = ("depth matters here" if gap >= 0.02
                   else "below the 2-point bar: depth does not matter enough here")
        lines += [f"Full training: {DEEP} {100 * acc[DEEP]:.2f}%, {SHALLOW} "
                  f"{100 * acc[SHALLOW]:.2f}%: depth gap **{100 * gap:+.2f} points** "
                  f"({verdict}).", ""]
    else:
        lines += ["The depth gap is not measured yet (runs unfinished).", ""]
    if deep.exists():
        lines += [(out / DEEP / "bench.md").read_text()]
    lines += ["", "Machine: `" + json.dumps(machine_info()) + "`"]
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / "README.md", text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/depth_regime"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    if not args.report_only:
        profile = PROFILES[args.profile]
        base = base_config(profile, args.device)
        # Shallow reference first (one full run), then the deep network with every method.
        run_bench(replace(base, model=SHALLOW), ["full"], profile["seeds"], out / SHALLOW,
                  budgets=(), aa_control=False)
        run_bench(base, METHODS, profile["seeds"], out / DEEP, budgets=(), aa_control=False)
    print(report(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
