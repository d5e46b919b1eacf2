"""CPU fast path: precision and memory format, trainer overhead, and whether time follows FLOPs.

Four measurements, each written to ``--out`` (default ``benchmarks/results/cpu-fastpath``) as a
JSON file, and all of them summarised in ``README.md`` there:

``throughput``   training steps of ResNet-56 (batch 128, 32x32) in fp32 contiguous (the
                 trainer's CPU path before ``--precision``), fp32 channels_last and bf16 autocast
                 + channels_last; the set-ups alternate in one process, median of ``--repeats``.
``overhead``     ``learndrop.train.train`` with ``--method full`` against a plain PyTorch loop
                 over the same model, in-memory data, augmentation, precision and memory
                 format; alternated, median of ``--repeats``; throughput = trained samples over
                 the time of the training steps (the trainer's ``train_time_s``).
``efficiency``   static slim structures of ResNet-56 (0, 25, 50, 75% of its 25 units removed,
                 evenly over the stages) trained side by side, alternated, median of
                 ``--repeats``: efficiency = (1 - time ratio) / (1 - fwd+bwd FLOPs ratio).
``precision``    the same training (``learndrop train`` defaults, method full) in fp32 and in
                 bf16 for ``--seeds``; final test accuracy on the whole test set, mean and std
                 per precision. Accuracy does not depend on machine load, so this part may run
                 beside other work; the three timed parts must run alone (one benchmark
                 process at a time on this machine).

Each part is resumable: a part (or a precision run) whose result file exists is skipped.

    python benchmarks/cpu_fastpath.py throughput overhead efficiency   # ~10 min, alone
    python benchmarks/cpu_fastpath.py precision                        # ~30 min
    python benchmarks/cpu_fastpath.py report                           # README.md only
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from learndrop.atomic import atomic_write_text  # noqa: E402
from learndrop.bench import machine_info  # noqa: E402
from learndrop.data import load_dataset, make_loaders  # noqa: E402
from learndrop.flops import FlopsLedger  # noqa: E402
from learndrop.models import create_model  # noqa: E402
from learndrop.precision import Precision, native_bf16, resolve_precision  # noqa: E402
from learndrop.surgery import drop_unit  # noqa: E402
from learndrop.train import TrainConfig, train  # noqa: E402
from learndrop.units import find_units  # noqa: E402

PARTS = ("throughput", "overhead", "efficiency", "precision")


def machine() -> dict:
    info = machine_info("cpu")
    info["cpu_features"] = {
        name.removeprefix("_is_").removesuffix("_supported"): bool(getattr(torch.cpu, name)())
        for name in dir(torch.cpu) if name.startswith("_is_") and name.endswith("_supported")
    }
    info["native_bf16"] = native_bf16(torch.device("cpu"))
    return info


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "values": values}


# ---- one training step, as plainly as PyTorch allows ------------------------------------------

def timed_steps(model, batches, precision: Precision, optimizer, scheduler=None) -> float:
    """Plain PyTorch training steps over ``batches``; returns their seconds."""
    started = time.perf_counter()
    for x, y in batches:
        with precision.autocast():
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return time.perf_counter() - started


def plain_epochs(model, loader, precision: Precision, epochs: int, lr: float = 0.1) -> float:
    """The plain loop the trainer is compared with; returns the seconds of its steps."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    steps = epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / steps)
    model.train()
    return sum(timed_steps(model, loader, precision, optimizer, scheduler)
               for _ in range(epochs))


def random_batches(n: int, channels_last: bool, batch: int = 128, size: int = 32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(batch, 3, size, size, generator=gen)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out.append((x, torch.randint(0, 10, (batch,), generator=gen)))
    return out


def resnet56(channels_last: bool, seed: int = 0):
    torch.manual_seed(seed)
    model = create_model("resnet56", num_classes=10, in_channels=3)
    return model.to(memory_format=torch.channels_last) if channels_last else model


# ---- the parts ---------------------------------------------------------------------------------

def part_throughput(args) -> dict:
    setups = {
        "fp32 contiguous (before)": Precision("fp32", "cpu", channels_last=False),
        # A/A control: identical work, its ratio to the line above is the noise floor.
        "fp32 contiguous (A/A copy)": Precision("fp32", "cpu", channels_last=False),
        "fp32 channels_last": Precision("fp32", "cpu", channels_last=True),
        "bf16 channels_last": Precision("bf16", "cpu", channels_last=True),
    }
    state = {}
    for name, p in setups.items():
        model = resnet56(p.channels_last)
        state[name] = (model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                       random_batches(args.steps, p.channels_last))
    rates: dict[str, list[float]] = {name: [] for name in setups}
    for repeat in range(args.repeats + 1):  # the first round warms up oneDNN's kernel caches
        for name, p in setups.items():
            model, optimizer, batches = state[name]
            seconds = timed_steps(model, batches, p, optimizer)
            if repeat:
                rates[name].append(round(128 * len(batches) / seconds, 1))
    base = statistics.median(rates["fp32 contiguous (before)"])
    return {"setting": f"ResNet-56, batch 128, 3x32x32, {args.steps} steps per repeat",
            "img_per_s": {name: spread(v) for name, v in rates.items()},
            "speedup_vs_before": {name: round(statistics.median(v) / base, 3)
                                  for name, v in rates.items()}}


def _overhead_config(out: Path, repeat: int, precision: str) -> TrainConfig:
    return TrainConfig(model="resnet20", dataset="fashion-mnist", method="full", epochs=2,
                       subset=3840, test_subset=500, batch_size=128, precision=precision,
                       out=str(out / f"overhead-run-{repeat}"), overwrite=True, quiet=True,
                       plots=False)


def part_overhead(args) -> dict:
    out = Path(args.out) / "tmp"
    config = _overhead_config(out, 0, args.precision)
    precision = resolve_precision(config.precision, "cpu")
    data = load_dataset(config.dataset, None, None, config.subset, config.seed, 500)
    trainer_rates, plain_rates, end_to_end = [], [], []
    for repeat in range(args.repeats + 1):
        config = _overhead_config(out, repeat, args.precision)
        started = time.perf_counter()
        summary = train(config, log=lambda *a: None)
        whole = time.perf_counter() - started
        torch.manual_seed(config.seed)
        model = create_model(config.model, num_classes=10, in_channels=1)
        loader, _ = make_loaders(data, config.batch_size, "cpu", config.seed,
                                 channels_last=precision.channels_last)
        if precision.channels_last:
            model = model.to(memory_format=torch.channels_last)
        seconds = plain_epochs(model, loader, precision, config.epochs)
        samples = config.epochs * len(loader) * config.batch_size
        assert summary["samples_seen"] == samples, (summary["samples_seen"], samples)
        if repeat:  # the first pair warms up the kernel caches
            trainer_rates.append(round(samples / summary["train_time_s"], 1))
            plain_rates.append(round(samples / seconds, 1))
            end_to_end.append(round(whole, 2))
    ratios = [t / p for t, p in zip(trainer_rates, plain_rates)]
    return {"setting": f"ResNet-20, Fashion-MNIST {config.subset} images, batch 128, "
                       f"{config.epochs} epochs, {precision.name} {precision.memory_format}",
            "trainer_img_per_s": spread(trainer_rates), "plain_img_per_s": spread(plain_rates),
            "trainer_over_plain": spread([round(r, 4) for r in ratios]),
            "trainer_whole_run_s": spread(end_to_end)}


def slim_structures(fractions: list[float], channels_last: bool) -> list[tuple]:
    """(fraction, model, dropped names): ResNet-56 with ``fraction`` of its units dropped,
    spread evenly over the unit list."""
    structures = []
    for f in fractions:
        model = resnet56(channels_last)
        units = find_units(model, torch.zeros(2, 3, 32, 32))
        k = round(f * len(units))
        chosen = [units[round(i * len(units) / k)] for i in range(k)] if k else []
        for unit in chosen:
            drop_unit(model, unit)
        structures.append((f, model, [u.name for u in chosen]))
    return structures


def part_efficiency(args) -> dict:
    precision = resolve_precision(args.precision, "cpu")
    # The full network twice: the second is the A/A control (identical work).
    structures = slim_structures([0.0, 0.0, 0.25, 0.5, 0.75], precision.channels_last)
    batches = random_batches(args.steps, precision.channels_last)
    flops, optimizers = [], []
    for _, model, _ in structures:
        cost = FlopsLedger(model, torch.zeros(128, 3, 32, 32)).full
        flops.append(cost.fwd + cost.bwd)
        optimizers.append(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    times: list[list[float]] = [[] for _ in structures]
    for repeat in range(args.repeats + 1):  # the first round warms up oneDNN's kernel caches
        for i, (_, model, _) in enumerate(structures):
            seconds = timed_steps(model, batches, precision, optimizers[i])
            if repeat:
                times[i].append(seconds)
    rows = []
    for i, (f, _, dropped) in enumerate(structures):
        time_ratios = [t / t0 for t, t0 in zip(times[i], times[0])]
        flops_ratio = flops[i] / flops[0]
        tr = statistics.median(time_ratios)
        rows.append({
            "fraction_removed": f,
            "label": "A/A control" if i == 1 else f"{f:.0%} removed",
            "units_dropped": dropped,
            "fwd_bwd_flops_ratio": round(flops_ratio, 4),
            "time_ratio": spread([round(r, 4) for r in time_ratios]),
            "efficiency": round((1 - tr) / (1 - flops_ratio), 3) if f else None,
            "step_s_median": round(statistics.median(times[i]) / args.steps, 4),
        })
    return {"setting": f"ResNet-56, batch 128, 3x32x32, {args.steps} training steps per "
                       f"repeat, {precision.name} {precision.memory_format}", "structures": rows}


def part_precision(args) -> dict:
    out = Path(args.out) / "precision-runs"
    path = Path(args.out) / "precision.json"
    result = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    for seed in args.seeds:
        for name in ("fp32", "bf16"):  # interleaved: a stop leaves both precisions comparable
            key = f"{name}-s{seed}"
            if key in result["runs"]:
                continue
            config = TrainConfig(method="full", seed=seed, precision=name, quiet=True,
                                 plots=False, out=str(out / key), overwrite=True)
            summary = train(config, log=lambda *a: None)
            result["runs"][key] = {k: summary[k] for k in (
                "final_test_acc", "train_time_s", "precision", "memory_format", "samples_seen")}
            result["setting"] = ("learndrop train defaults with --method full: ResNet-20, "
                                 "Fashion-MNIST 5,000 images, 8 epochs, full test set")
            _write(path, result)  # after every run: resumable
    for name in ("fp32", "bf16"):
        accs = [r["final_test_acc"] for k, r in result["runs"].items() if k.startswith(name)]
        result[name] = {"mean": statistics.mean(accs),
                        "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                        "min": min(accs), "max": max(accs), "seeds": len(accs)}
    fp32 = result["fp32"]
    result["bf16_mean_within_fp32_spread"] = fp32["min"] <= result["bf16"]["mean"] <= fp32["max"]
    return result


def _write(path: Path, value: dict) -> None:
    atomic_write_text(path, json.dumps(value, indent=2) + "\n")


def report(out: Path) -> str:
    def load(name):
        path = out / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    lines = ["# CPU fast path", "",
             "Written by `python benchmarks/cpu_fastpath.py` (see its docstring).", ""]
    tp = load("throughput")
    if tp:
        lines += [f"## Precision and memory format ({tp['setting']})", "",
                  "The A/A copy repeats the first set-up: its ratio is the noise floor.", "",
                  "| set-up | img/s (median) | min-max | vs fp32 contiguous |",
                  "|---|---:|---:|---:|"]
        for name, s in tp["img_per_s"].items():
            lines.append(f"| {name} | {s['median']:.1f} | {s['min']:.0f}-{s['max']:.0f} | "
                         f"{tp['speedup_vs_before'][name]:.2f}x |")
        lines += ["", f"Machine: {_machine_line(tp)}", ""]
    ov = load("overhead")
    if ov:
        r = ov["trainer_over_plain"]
        lines += [f"## Trainer overhead ({ov['setting']})", "",
                  f"Trainer {ov['trainer_img_per_s']['median']:.1f} img/s, plain loop "
                  f"{ov['plain_img_per_s']['median']:.1f} img/s: trainer/plain = "
                  f"**{r['median']:.3f}** (median of {len(r['values'])}; range "
                  f"{r['min']:.3f}-{r['max']:.3f}). Target >= 0.95.", "",
                  f"Machine: {_machine_line(ov)}", ""]
    ef = load("efficiency")
    if ef:
        lines += [f"## Time follows FLOPs ({ef['setting']})", "",
                  "| units removed | fwd+bwd FLOPs ratio | time ratio (median) | min-max | "
                  "efficiency |", "|---:|---:|---:|---:|---:|"]
        for row in ef["structures"]:
            t = row["time_ratio"]
            eff = "" if row["efficiency"] is None else f"{row['efficiency']:.2f}"
            lines.append(f"| {row['label']} ({len(row['units_dropped'])}) | "
                         f"{row['fwd_bwd_flops_ratio']:.3f} | {t['median']:.3f} | "
                         f"{t['min']:.3f}-{t['max']:.3f} | {eff} |")
        lines += ["", "Efficiency = (1 - time ratio) / (1 - FLOPs ratio); target >= 0.9.", "",
                  f"Machine: {_machine_line(ef)}", ""]
    pr = load("precision")
    if pr and "fp32" in pr:
        lines += [f"## Does bf16 change what is learned? ({pr['setting']})", "",
                  "| precision | seeds | final test acc, mean ± std | min-max |",
                  "|---|---:|---:|---:|"]
        for name in ("fp32", "bf16"):
            s = pr[name]
            lines.append(f"| {name} | {s['seeds']} | {100 * s['mean']:.2f} ± {100 * s['std']:.2f}"
                         f" | {100 * s['min']:.2f}-{100 * s['max']:.2f} |")
        lines += ["", f"bf16 mean within the fp32 seeds' range: "
                      f"**{pr['bf16_mean_within_fp32_spread']}**.", "",
                  f"Machine: {_machine_line(pr)}", ""]
    text = "\n".join(lines)
    atomic_write_text(out / "README.md", text)
    return text


def _machine_line(result: dict) -> str:
    m = result.get("machine", {})
    feats = ", ".join(k for k, v in m.get("cpu_features", {}).items() if v)
    return (f"{m.get('cpu')}, {m.get('cpus_usable')} cores, {m.get('torch_threads')} torch "
            f"threads, torch {m.get('torch')}; CPU features: {feats}; native bf16: "
            f"{m.get('native_bf16')}; load average at the end {m.get('load_average')}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("parts", nargs="+", choices=(*PARTS, "report"))
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/cpu-fastpath"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=6, help="training steps per timed repeat")
    p.add_argument("--precision", default="auto", help="of the overhead and efficiency parts")
    p.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
    p.add_argument("--force", action="store_true", help="measure again parts that have results")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for part in args.parts:
        if part == "report":
            continue
        path = out / f"{part}.json"
        if path.is_file() and not args.force and part != "precision":
            print(f"{part}: {path} exists (--force measures again)")
            continue
        started = time.perf_counter()
        result = {"command": "python benchmarks/cpu_fastpath.py " + " ".join(argv or sys.argv[1:]),
                  **globals()[f"part_{part}"](args)}
        result["machine"] = machine()
        result["seconds"] = round(time.perf_counter() - started, 1)
        _write(path, result)
        print(f"{part}: {json.dumps({k: v for k, v in result.items() if k != 'machine'})[:600]}")
    print(report(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
