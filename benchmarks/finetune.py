"""Fine-tuning benchmark: Learn&Drop against full training, starting from pretrained weights.

1. Splits CIFAR-10 into two related tasks: classes 0-4 (airplane ... deer) and classes 5-9
   (dog ... truck), written once as image folders (``folder:`` datasets) under ``--work``.
2. Pretrains the model on classes 0-4 with full training (``<out>/pretrain``).
3. Fine-tunes it on classes 5-9 with ``--weights pretrain/model.pt --replace-head 5`` and a
   small learning rate, once with full training and once with Learn&Drop (and, as a reference
   for what pretraining brings, full training from scratch).

Writes ``results.json`` and ``results.md`` (time ratio learndrop/full, accuracy of both, FLOPs
reductions, drops, the machine) into ``--out``. Runs are resumable one by one: a run whose
summary.json exists is not run again.

CPU-sized defaults (about 3-5 minutes on 2 shared cores)::

    python benchmarks/finetune.py

Full-size settings on a GPU, e.g.::

    python benchmarks/finetune.py --model resnet56 --image-size 32 --pretrain-subset 0 \\
        --finetune-subset 0 --test-per-class 1000 --pretrain-epochs 30 --epochs 15 \\
        --batch-size 128 --device cuda --threads 0 --out benchmarks/results/finetune-gpu
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.proof import cifar10_tarball  # noqa: E402
from benchmarks.streaming import machine  # noqa: E402
from learndrop.data import balanced_subset, cache_dir, load_dataset  # noqa: E402
from learndrop.train import TrainConfig, train  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/finetune"))
    p.add_argument("--work", default=str(cache_dir() / "bench" / "cifar10-split"),
                   help="where the two tasks' image folders are written")
    p.add_argument("--source", default=None,
                   help="the CIFAR-10 dataset to split: default the tarball at ../shared/data "
                        "(offline), else torchvision's cifar10 (downloads)")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--pretrain-subset", type=int, default=2500,
                   help="training images of classes 0-4 (0 = all 25,000)")
    p.add_argument("--finetune-subset", type=int, default=2000,
                   help="training images of classes 5-9 (0 = all 25,000)")
    p.add_argument("--test-per-class", type=int, default=400, help="held-out images per class")
    p.add_argument("--pretrain-epochs", type=int, default=8)
    p.add_argument("--pretrain-lr", type=float, default=0.05)
    p.add_argument("--epochs", type=int, default=8, help="fine-tuning epochs")
    p.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate (small)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--policy", default="{}", help="JSON of DropPolicy fields")
    p.add_argument("--no-scratch", dest="scratch", action="store_false",
                   help="skip the from-scratch reference run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 avoids oversubscription on shared cores; 0 = "
                        "torch's default)")
    return p.parse_args(argv)


def cifar10_source() -> str:
    """The offline CIFAR-10 tarball beside the checkout (``../shared/data``), else ``cifar10``."""
    found = cifar10_tarball()
    return f"folder:{found}" if found else "cifar10"


def write_split(args: argparse.Namespace) -> tuple[str, str]:
    """The two tasks as folder datasets (written once; a marker file says it is complete)."""
    from PIL import Image

    work = Path(args.work) / f"{args.pretrain_subset}-{args.finetune_subset}-{args.test_per_class}"
    tasks = {"a": range(0, 5), "b": range(5, 10)}
    if (work / "done").is_file():
        return str(work / "a"), str(work / "b")
    data = load_dataset(args.source or cifar10_source())
    sizes = {"a": args.pretrain_subset, "b": args.finetune_subset}
    for task, classes in tasks.items():
        for split, x, y in (("train", data.train_x, data.train_y),
                            ("test", data.test_x, data.test_y)):
            keep = torch.nonzero(torch.isin(y, torch.tensor(list(classes)))).flatten()
            n = sizes[task] if split == "train" else args.test_per_class * len(classes)
            if n and n < len(keep):
                keep = keep[balanced_subset(y[keep], n, 10, args.seed)]
            for i in keep.tolist():
                folder = work / task / split / f"{int(y[i]):02d}-{data.classes[int(y[i])]}"
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(x[i].permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    (work / "done").write_text("ok\n")
    return str(work / "a"), str(work / "b")


def run(config: TrainConfig) -> dict:
    summary_file = Path(config.out) / "summary.json"
    name = Path(config.out).name
    if summary_file.is_file():
        print(f"{name}: done already, skipped")
        return json.loads(summary_file.read_text())
    print(f"{name}: running")
    return train(config, log=lambda s: print(f"  [{name}] {s}"))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    task_a, task_b = write_split(args)
    common = dict(model=args.model, image_size=args.image_size, subset=None,
                  batch_size=args.batch_size, seed=args.seed, device=args.device,
                  quiet=True, overwrite=True)
    pre = run(TrainConfig(dataset=f"folder:{task_a}", method="full", epochs=args.pretrain_epochs,
                          lr=args.pretrain_lr, out=str(out / "pretrain"), **common))
    weights = str(out / "pretrain" / "model.pt")
    tune = dict(dataset=f"folder:{task_b}", epochs=args.epochs, lr=args.lr,
                weights=weights, replace_head=5, **common)
    results = {"pretrain": pre}
    for method in ("full", "learndrop"):
        options = json.loads(args.policy) if method == "learndrop" else {}  # full has none
        results[method] = run(TrainConfig(method=method, out=str(out / f"finetune-{method}"),
                                          method_options=options, **tune))
    if args.scratch:
        results["scratch"] = run(TrainConfig(
            dataset=f"folder:{task_b}", method="full", epochs=args.epochs, lr=args.pretrain_lr,
            out=str(out / "scratch-full"), **common))
    report(args, out, results)
    print((out / "results.md").read_text())


def report(args: argparse.Namespace, out: Path, results: dict) -> None:
    full, ld = results["full"], results["learndrop"]
    ratio = ld["train_time_s"] / full["train_time_s"]
    lines = [
        "# Fine-tuning: Learn&Drop vs full training from pretrained weights",
        "",
        f"Machine: {machine()}. Shared with other workers while it ran: wall-clock times are "
        "noisy; compare the ratio of the runs, measured one after the other.",
        "",
        f"Setup: {args.model} pretrained (full training, {args.pretrain_epochs} epochs, lr "
        f"{args.pretrain_lr}) on CIFAR-10 classes 0-4 ({args.pretrain_subset or 25000} training "
        f"images), then fine-tuned on classes 5-9 ({args.finetune_subset or 25000} training "
        f"images) with `--weights pretrain/model.pt --replace-head 5`, lr {args.lr}, "
        f"{args.epochs} epochs, warm-up 1 epoch then cosine; images at "
        f"{args.image_size}x{args.image_size}, batch {args.batch_size}; test accuracy on "
        f"{args.test_per_class} held-out images per class. Policy: {args.policy}.",
        "",
        "Command: `python benchmarks/finetune.py " + " ".join(sys.argv[1:]) + "`",
        "",
        "| run | train time (s) | time ratio vs full fine-tune | final test acc | best test acc "
        "| fwd FLOPs saved | bwd FLOPs saved | units dropped | params final |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    table = {}
    names = {"pretrain": "pretrain (classes 0-4)", "full": "fine-tune, full",
             "learndrop": "fine-tune, Learn&Drop", "scratch": "classes 5-9 from scratch, full"}
    for key, s in results.items():
        r = s["train_time_s"] / full["train_time_s"]
        table[key] = {k: s[k] for k in (
            "train_time_s", "final_test_acc", "best_test_acc", "fwd_flops_reduction",
            "bwd_flops_reduction", "units_dropped", "units_total", "params_initial",
            "params_final", "samples_seen")}
        table[key]["time_ratio_vs_full_finetune"] = r
        lines.append(
            f"| {names[key]} | {s['train_time_s']:.1f} | "
            f"{f'{r:.2f}' if key in ('full', 'learndrop') else ''} | "
            f"{100 * s['final_test_acc']:.1f}% | {100 * s['best_test_acc']:.1f}% | "
            f"{100 * s['fwd_flops_reduction']:.1f}% | {100 * s['bwd_flops_reduction']:.1f}% | "
            f"{s['units_dropped']}/{s['units_total']} | {s['params_final']:,} |")
    drops = ", ".join(f"epoch {d['epoch']:g}: {d['unit']}" for d in ld["drops"]) or "none"
    lines += ["", f"Learn&Drop fine-tuning: time ratio {ratio:.2f}, drops: {drops}.", ""]
    (out / "results.md").write_text("\n".join(lines))
    (out / "results.json").write_text(json.dumps(
        {"machine": machine(), "args": vars(args), "results": table}, indent=2))


if __name__ == "__main__":
    main()
