"""Fine-tuning benchmark: Learn&Drop against full fine-tuning and its budget frontier.

1. Splits CIFAR-10 into two related tasks: classes 0-4 (airplane ... deer) and classes 5-9
   (dog ... truck), written once as image folders (``folder:`` datasets) under ``--work``.
2. Pretrains the model on classes 0-4 with full training (``<out>/pretrain``). Its
   ``model.pt`` is committed (1 MB for ResNet-20): the bench's runs record its SHA-256, and a
   pretraining trained again on another CPU would round differently, giving other bytes. Where
   it is missing, it is trained again only if no fine-tuning run started from it.
3. Fine-tunes it on classes 5-9 with ``--weights pretrain/model.pt --replace-head 5`` and a
   small learning rate in one ``learndrop bench`` (:func:`learndrop.bench.run_bench`, into
   ``<out>/bench``): ``--methods`` (default full training, Learn&Drop and random-drop with
   Learn&Drop's schedule), ``--variant`` runs, fine-tuning for 0.25/0.5/0.75 of the epochs with
   the schedule compressed (the budget frontier of fine-tuning), the A/A control, over
   ``--seeds``; each seed's runs in lockstep. Its ``bench.md`` is the comparison.
4. As a reference for what pretraining brings: full training from scratch on classes 5-9
   (seed ``--seed``, ``<out>/scratch-full``).

Writes ``results.md`` and ``results.json`` (the setting, the machine, pretraining and scratch,
and a pointer to the bench) into ``--out``. Resumable: run the same command again; finished
runs are kept. fp32 by default, so that the project's CPUs with and without native bf16 train
the same experiment.

CPU-sized defaults (about 5 minutes on 2 quiet cores)::

    python benchmarks/finetune.py
    python benchmarks/finetune.py --variant cap03=learndrop:max_dropped_fraction=0.3

Full-size settings on a GPU, e.g.::

    python benchmarks/finetune.py --model resnet56 --image-size 32 --pretrain-subset 0 \\
        --finetune-subset 0 --test-per-class 1000 --pretrain-epochs 30 --epochs 15 \\
        --batch-size 128 --device cuda --precision auto --out benchmarks/results/finetune-gpu
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.proof import cifar10_tarball  # noqa: E402
from learndrop.atomic import atomic_write_text  # noqa: E402
from learndrop.bench import parse_variant, run_bench  # noqa: E402
from learndrop.bench.plan import check_same_experiment  # noqa: E402
from learndrop.bench.report import decay_text  # noqa: E402
from learndrop.data import balanced_subset, cache_dir, load_dataset  # noqa: E402
from learndrop.machine import machine_name  # noqa: E402
from learndrop.train import ConfigError, TrainConfig, train  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/finetune-bench"))
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
    p.add_argument("--lr-decay-fraction", type=float, default=1.0,
                   help="the fine-tuning runs' share of steps in the final cosine decay (1: "
                        "cosine after the warm-up; below 1: warmup-stable-decay); the "
                        "pretraining keeps cosine, so its weights are shared")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--methods", default="full,learndrop,random-drop",
                   help="methods of the fine-tuning bench (learndrop bench --methods)")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL=METHOD[:K=V,...]",
                   help="a method under a label with options of its own (learndrop bench "
                        "--variant), e.g. cap03=learndrop:max_dropped_fraction=0.3")
    p.add_argument("--budgets", default=None,
                   help="fractions of the epochs for the frontier (default 0.25,0.5,0.75)")
    p.add_argument("--seeds", type=int, default=3, help="fine-tuning seeds --seed, --seed+1 ...")
    p.add_argument("--no-scratch", dest="scratch", action="store_false",
                   help="skip the from-scratch reference run")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the split, the pretraining and the first fine-tuning run")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16"))
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0 = torch's default: every core)")
    p.add_argument("--dry-run", action="store_true", help="check the plan, train nothing")
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


def run(config: TrainConfig, needs: str | None = None) -> dict:
    """Train ``config`` unless it finished already with the same settings (and still has the
    file ``needs``); a finished run made with other settings is refused in one line."""
    out = Path(config.out)
    name = out.name
    if (out / "summary.json").is_file():
        check_same_experiment(config, out)
        if needs is None or (out / needs).is_file():
            print(f"{name}: done, kept")
            return json.loads((out / "summary.json").read_text())
    print(f"{name}: training")
    config.overwrite = True  # an unfinished or weightless run is trained again
    return train(config, log=lambda s: print(f"  [{name}] {s}"))


def started_from(bench: Path) -> list[str]:
    """The fine-tuning runs under ``bench`` that recorded the digest of their weights."""
    return sorted(p.parent.name for p in bench.glob("*/config.json")
                  if json.loads(p.read_text()).get("weights_sha256"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    try:
        variants = [parse_variant(text) for text in args.variant]
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    task_a, task_b = write_split(args)
    common = dict(model=args.model, image_size=args.image_size, subset=None,
                  batch_size=args.batch_size, device=args.device, precision=args.precision,
                  quiet=True, plots=False)
    pretrain = TrainConfig(dataset=f"folder:{task_a}", method="full", seed=args.seed,
                           epochs=args.pretrain_epochs, lr=args.pretrain_lr,
                           out=str(out / "pretrain"), **common)
    weights = out / "pretrain" / "model.pt"
    tune = TrainConfig(dataset=f"folder:{task_b}", epochs=args.epochs, lr=args.lr,
                       lr_decay_fraction=args.lr_decay_fraction, seed=args.seed,
                       weights=str(weights), replace_head=5, **common)
    try:
        if args.dry_run:
            if not weights.is_file():
                # Nothing to load yet: check the plan, the data and the options without it,
                # against no earlier runs.
                print(f"note: {weights} does not exist yet (the pretraining trains first); "
                      "the fine-tuning plan is checked without it")
                tune.weights = None
                out = Path(tempfile.mkdtemp(prefix="finetune-dry-run-"))
            run_bench(tune, args.methods, args.seeds, out / "bench", budgets=args.budgets,
                      variants=variants, dry_run=True)
            return 0
        if not weights.is_file() and started_from(out / "bench"):
            raise ConfigError(
                f"{weights} is missing, and the fine-tuning runs under {out / 'bench'} started "
                "from it: restore it (git checkout the file), or choose another --out")
        out.mkdir(parents=True, exist_ok=True)
        results = {"pretrain": run(pretrain, needs="model.pt")}
        bench = run_bench(tune, args.methods, args.seeds, out / "bench", budgets=args.budgets,
                          variants=variants, prune=True)
        if args.scratch:
            results["scratch"] = run(TrainConfig(
                dataset=f"folder:{task_b}", method="full", epochs=args.epochs, seed=args.seed,
                lr=args.pretrain_lr, out=str(out / "scratch-full"), **common))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    report(args, argv, out, results, bench)
    print((out / "results.md").read_text())
    return 0


def report(args: argparse.Namespace, argv: list[str], out: Path, results: dict,
           bench: dict) -> None:
    setting = (
        f"{args.model} pretrained (full training, {args.pretrain_epochs} epochs, lr "
        f"{args.pretrain_lr}, seed {args.seed}) on CIFAR-10 classes 0-4 "
        f"({args.pretrain_subset or 25000} training images), then fine-tuned on classes 5-9 "
        f"({args.finetune_subset or 25000} training images) with `--weights pretrain/model.pt "
        f"--replace-head 5`, lr {args.lr}, {args.epochs} epochs, warm-up 1 epoch then "
        f"{decay_text(args.lr_decay_fraction)}; "
        f"images at {args.image_size}x{args.image_size}, batch {args.batch_size}, "
        f"{args.precision}; test accuracy on {args.test_per_class} held-out images per class, "
        f"{args.seeds} fine-tuning seeds from {args.seed}.")
    names = {"pretrain": "pretraining (classes 0-4, its own test images)",
             "scratch": f"classes 5-9 from scratch, full training (lr {args.pretrain_lr}, "
                        f"seed {args.seed})"}
    lines = [
        "# Fine-tuning: Learn&Drop against full fine-tuning and its budget frontier", "",
        f"Written by `python benchmarks/finetune.py {shlex.join(argv)}`", "",
        f"Machine: {machine_name(args.device)}.", "", f"Setting: {setting}", "",
        "**The comparison is [bench/bench.md](bench/bench.md)**: every method against full "
        "fine-tuning and fine-tuning for fewer epochs (the frontier), over the seeds, on "
        "executed FLOPs and wall-clock.", "",
        "| reference run | final test acc | train time (s) |", "|---|---:|---:|",
    ]
    lines += [f"| {names[k]} | {100 * s['final_test_acc']:.2f}% | {s['train_time_s']:.1f} |"
              for k, s in results.items()]
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")
    atomic_write_text(out / "results.json", json.dumps(
        {"machine": machine_name(args.device), "args": vars(args), "setting": setting,
         "references": {k: {key: s[key] for key in ("final_test_acc", "train_time_s")}
                        for k, s in results.items()},
         "bench": "bench/bench.json", "finished": bench.get("finished")}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
