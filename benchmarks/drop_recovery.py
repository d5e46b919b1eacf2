"""Test accuracy right before and right after a drop: stale BatchNorm statistics against
recalibration (how many batches, which layers), and the cheapest units against random ones.

On the ``make run`` setting (``learndrop train`` defaults: ResNet-20, Fashion-MNIST 5,000
training images, batch 128, SGD 0.1 with one warm-up epoch then cosine over 8 epochs, the full
10,000-image test set), for each seed: train ``--epoch`` epochs with full training, evaluate,
measure every unit's drop cost on the last 4 training batches (:mod:`learndrop.drop_cost`), drop
the ``--drop`` cheapest units (and, separately, as many random ones), and evaluate:

* with the stale statistics;
* after recalibrating every trainable BatchNorm layer ("all") from the last 1, 2, 4, 8 training
  batches and from the whole training subset (the reference: the statistics as well estimated as
  this data allows), and only the layers after the first dropped unit ("downstream") from 4.

Accuracy and exact FLOPs only (no timing). Writes ``results.json`` and ``results.md`` into
``--out``::

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/drop_recovery.py --seeds 0 1
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
from collections import deque
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from learndrop.atomic import atomic_write_text  # noqa: E402
from learndrop.data import load_dataset, make_loaders  # noqa: E402
from learndrop.drop_cost import drop_costs  # noqa: E402
from learndrop.methods import Full  # noqa: E402
from learndrop.recalibrate import batchnorms_after, recalibrate_batchnorm  # noqa: E402
from learndrop.surgery import drop_unit  # noqa: E402
from learndrop.train import TrainConfig  # noqa: E402
from learndrop.train.trainer import build_model, evaluate, train_step, warmup_cosine  # noqa: E402
from learndrop.units import find_units  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/drop_recovery"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--epoch", type=int, default=2, help="epochs trained before the drop")
    p.add_argument("--drop", type=int, default=3, help="units dropped at once")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def no_autocast():
    return contextlib.nullcontext()


def accuracy(model, loader) -> float:
    return round(100 * evaluate(model, loader, no_autocast)[1], 2)


def recalibrated(model, example, first_modules, batches, scope: str) -> torch.nn.Module:
    """A copy of ``model`` with its BatchNorm statistics recomputed from ``batches``."""
    model = copy.deepcopy(model)
    names = batchnorms_after(model, example, first_modules if scope == "downstream" else None)
    recalibrate_batchnorm(model, batches, names)
    return model


def run_seed(seed: int, args: argparse.Namespace) -> dict:
    config = TrainConfig(seed=seed)
    torch.manual_seed(seed)
    data = load_dataset(config.dataset, None, None, config.subset, seed, None)
    train_loader, test_loader = make_loaders(data, config.batch_size, "cpu", seed,
                                             eval_batch_size=config.eval_batch_size)
    model = build_model(config, data, torch.device("cpu"))
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    steps = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(steps * config.epochs, round(config.warmup_epochs * steps)))
    example = torch.zeros(config.batch_size, data.in_channels, data.image_size, data.image_size)
    method = Full(model, optimizer, example)
    recent: deque = deque(maxlen=8)
    for _ in range(args.epoch):
        model.train()
        for x, y in train_loader:
            train_step(method, model, optimizer, scheduler, x, y, no_autocast, len(y))
            recent.append((x, y))
    everything = [x for x, _ in train_loader]  # the whole subset, one more augmented pass
    result = {"seed": seed, "epoch": args.epoch, "acc_before": accuracy(model, test_loader),
              # The network before the drop, its own statistics recomputed from 4 batches.
              "acc_before_recalibrated": accuracy(
                  recalibrated(model, example, None, [x for x, _ in recent][-4:], "all"),
                  test_loader)}
    units = find_units(model, example)
    loss, costs = drop_costs(model, units, list(recent)[-4:])
    result["check_loss"] = loss
    result["drop_costs"] = {n: round(c, 4) for n, c in costs.items()}
    generator = torch.Generator().manual_seed(seed)
    picks = {
        "cheapest": sorted(costs, key=costs.get)[: args.drop],
        "random": [units[i].name for i in torch.randperm(len(units), generator=generator)
                   [: args.drop].tolist()],
    }
    by_name = {u.name: u for u in units}
    batches = [x for x, _ in recent]
    for choice, names in picks.items():
        dropped = copy.deepcopy(model)
        for name in names:
            drop_unit(dropped, by_name[name])
        first = min((by_name[n] for n in names), key=lambda u: u.index).modules
        row = {"units": names, "stale": accuracy(dropped, test_loader)}
        # The batch-count sweep and the whole-subset reference for the cheapest units and every
        # layer (what Method.after_change does); the layers after the drop only, at 4 batches.
        sweep = (1, 2, 4, 8) if choice == "cheapest" else (4,)
        for scope, counts in (("downstream", (4,)), ("all", sweep)):
            for n in counts:
                row[f"{scope}_{n}"] = accuracy(
                    recalibrated(dropped, example, first, batches[-n:], scope), test_loader)
        if choice == "cheapest":
            row["all_subset"] = accuracy(
                recalibrated(dropped, example, first, everything, "all"), test_loader)
        result[choice] = row
        print(json.dumps({"seed": seed, "acc_before": result["acc_before"], choice: row}),
              flush=True)
    return result


def write_markdown(results: list[dict], out: Path) -> None:
    lines = [
        "# Test accuracy right before and right after a drop",
        "",
        "`OMP_NUM_THREADS=1 nice -n 19 python benchmarks/drop_recovery.py --seeds "
        + " ".join(str(r["seed"]) for r in results) + "` (the `make run` setting; drop after "
        f"epoch {results[0]['epoch']} of 8; full 10,000-image test set; test accuracy in %).",
        "",
        "Before: the network before the drop, as it is / with all its BatchNorm statistics "
        "recomputed from 4 batches. After the drop: stale statistics, then recalibrated from "
        "1 / 2 / 4 / 8 recent batches / the whole training subset (– = not measured), either "
        "the layers after the first dropped unit only (downstream) or every layer (all).",
        "",
        "| seed | units dropped | before | stale BN | downstream | all |",
        "|---|---|---:|---:|---|---|",
    ]

    def sweep(row: dict, scope: str) -> str:
        return " / ".join(str(row.get(f"{scope}_{n}", "–")) for n in (1, 2, 4, 8, "subset"))

    for r in results:
        for choice in ("cheapest", "random"):
            row = r[choice]
            lines.append(
                f"| {r['seed']} | {choice}: {', '.join(row['units'])} | {r['acc_before']} / "
                f"{r['acc_before_recalibrated']} | {row['stale']} | {sweep(row, 'downstream')} "
                f"| {sweep(row, 'all')} |")
    lines += ["", "Drop costs (training-loss increase with the unit bypassed, nats, 4 batches):",
              ""]
    for r in results:
        costs = ", ".join(f"{n} {c:+.3f}" for n, c in sorted(r["drop_costs"].items(),
                                                             key=lambda kv: kv[1]))
        lines.append(f"- seed {r['seed']} (check loss {r['check_loss']:.3f}): {costs}")
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = [run_seed(seed, args) for seed in args.seeds]
    atomic_write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    write_markdown(results, out)
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
