"""``learndrop bench``: several training methods side by side, same model, data and machine.

Each run is an ordinary ``learndrop.train.train`` run in ``OUT/<method>-s<seed>/``. The bench is
resumable run by run: a run with a ``summary.json`` is read back, not redone; a run with a
``last.ckpt`` is resumed; so an interrupted bench continues where it stopped when the same command
is run again. After every finished run ``bench.json`` and ``bench.md`` are rewritten from the run
directories on disk (so they always describe what has finished), and at the end
``accuracy_vs_time.png`` and ``tradeoff.png`` are drawn.

Ratios are per seed against the ``full`` run of the same seed, then the median over seeds:
wall-clock time is noisy on shared machines, and a ratio measured a few minutes apart is far more
stable than an absolute time. With several seeds the runs are interleaved (see :func:`plan_runs`)
so that drift of the machine's speed hits every method alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from learndrop.atomic import atomic_write
from learndrop.methods import METHODS
from learndrop.train.config import ConfigError, TrainConfig

__all__ = [
    "BENCH_JSON", "BENCH_MD", "add_bench_parser", "aggregate", "machine_info", "plan_runs",
    "plot_bench", "run_bench", "run_dir_name", "write_report",
]

BENCH_JSON = "bench.json"
BENCH_MD = "bench.md"
REFERENCE_METHOD = "learndrop"
# Methods that copy the drops of the Learn&Drop run of the same seed (their ``reference``).
NEEDS_REFERENCE = tuple(name for name, cls in METHODS.items() if cls.needs_reference)
# Config fields that may differ between an existing run directory and the bench's plan without
# making its result a different experiment (where and how it reports, where it ran).
_IGNORED_FIELDS = {"out", "resume", "overwrite", "quiet", "plots", "device", "tensorboard",
                   "eval_batch_size", "reference"}
_RUN_DIR = re.compile(r"^(?P<method>.+)-s(?P<seed>\d+)$")

Log = Callable[[str], None]


# ---- the plan -------------------------------------------------------------------------------

def parse_methods(text: str | Sequence[str]) -> list[str]:
    """Method names from ``"full,learndrop,..."``; ``full`` (the reference of every ratio) and,
    when random-drop or slim-from-scratch is asked for, ``learndrop`` are added when missing."""
    names = [m.strip() for m in (text.split(",") if isinstance(text, str) else text)]
    names = [m for m in names if m]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise ConfigError(f"--methods: unknown method {unknown[0]!r}; choose from "
                          f"{', '.join(sorted(METHODS))}")
    duplicates = sorted({m for m in names if names.count(m) > 1})
    if duplicates:
        raise ConfigError(f"--methods names {duplicates[0]!r} twice")
    if any(m in NEEDS_REFERENCE for m in names) and REFERENCE_METHOD not in names:
        names.insert(0, REFERENCE_METHOD)
    if "full" not in names:
        names.insert(0, "full")
    return names


def plan_runs(methods: Sequence[str], seeds: Sequence[int]) -> list[tuple[str, int]]:
    """The order of the runs: ``(method, seed)`` pairs.

    Seed by seed, so that a stopped bench has complete seeds. Within a seed ``full`` and
    ``learndrop`` come first (random-drop and slim-from-scratch need that seed's Learn&Drop run),
    swapped on every other seed, then the other methods, their order rotated by one per seed: with
    several seeds every method runs early and late, so slow drift of the machine's speed averages
    out in the medians.
    """
    head = [m for m in ("full", REFERENCE_METHOD) if m in methods]
    rest = [m for m in methods if m not in head]
    order = []
    for i, seed in enumerate(seeds):
        first = head if i % 2 == 0 else head[::-1]
        k = i % len(rest) if rest else 0
        order += [(m, seed) for m in first + rest[k:] + rest[:k]]
    return order


def run_dir_name(method: str, seed: int) -> str:
    return f"{method}-s{seed}"


def run_config(base: TrainConfig, method: str, seed: int, out: Path) -> TrainConfig:
    """The configuration of one run of the bench."""
    option_type = METHODS[method].options_type
    names = {f.name for f in dataclasses.fields(option_type)} if option_type else set()
    options = {k: v for k, v in base.method_options.items() if k in names}
    if method in NEEDS_REFERENCE:
        options["reference"] = str(out / run_dir_name(REFERENCE_METHOD, seed))
    config = dataclasses.replace(
        base, method=method, seed=seed, out=str(out / run_dir_name(method, seed)),
        resume=None, method_options=options,
        units=list(base.units) if base.units else None,
    )
    return config


def _state(run: Path) -> str:
    """``done``, ``resume`` (has a checkpoint), ``restart`` (started, nothing to keep) or
    ``new``."""
    if (run / "summary.json").is_file():
        return "done"
    if (run / "last.ckpt").is_file():
        return "resume"
    if any((run / m).exists() for m in ("config.json", "metrics.jsonl")):
        return "restart"
    return "new"


def _check_same_experiment(config: TrainConfig, run: Path) -> None:
    """Refuse to mix an existing run made with other settings into this bench."""
    path = run / "config.json"
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    new = config.to_dict()
    for key in sorted(set(old) & set(new) - _IGNORED_FIELDS):
        if old[key] != new[key]:
            raise ConfigError(
                f"{run} was run with {key}={old[key]!r}, this bench asks for {new[key]!r}; "
                "choose another --out, or pass --overwrite to redo every run")


# ---- running --------------------------------------------------------------------------------

def run_bench(
    base: TrainConfig,
    methods: Sequence[str],
    seeds: int,
    out: Path,
    dry_run: bool = False,
    log: Log = print,
) -> dict:
    """Run every method for ``seeds`` seeds (``base.seed``, ``base.seed + 1``, ...) into ``out``.

    Returns the bench report (what ``bench.json`` holds); with ``dry_run`` it checks everything
    and returns the plan instead, writing nothing. ``base.overwrite`` redoes every run.
    """
    out = Path(out)
    methods = parse_methods(methods)
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    if base.resume:
        raise ConfigError("bench resumes by itself: run the same bench command again")
    if getattr(base, "stream", False):  # a stream run has no epochs to compare or resume
        raise ConfigError("--stream is not available in bench; compare streams with "
                          "`learndrop train --stream --method M`, one run per method")
    seed_list = [base.seed + i for i in range(seeds)]
    order = plan_runs(methods, seed_list)
    configs = {(m, s): run_config(base, m, s, out) for m, s in order}
    used = {k for c in configs.values() for k in c.method_options}
    unused = sorted(set(base.method_options) - used)
    if unused:  # no option is silently ignored
        raise ConfigError(f"--{unused[0].replace('_', '-')} is an option of none of the bench's "
                          f"methods ({', '.join(methods)})")
    for (m, s), config in configs.items():
        config.validate()
        if not base.overwrite:
            _check_same_experiment(config, out / run_dir_name(m, s))
    if dry_run:
        return dry_run_check(base, methods, order, configs, out, log)

    from learndrop.train import TrainingInterrupted, train

    for i, (m, s) in enumerate(order):
        config = configs[(m, s)]
        run = Path(config.out)
        state = "new" if base.overwrite else _state(run)
        if state == "done":
            log(f"[{i + 1}/{len(order)}] {run.name}: done, kept")
            continue
        if state == "resume":
            config = dataclasses.replace(config, resume=str(run))
        elif state == "restart":  # started but stopped before its first checkpoint
            config = dataclasses.replace(config, overwrite=True)
        log(f"[{i + 1}/{len(order)}] {run.name}: "
            f"{'resuming' if state == 'resume' else 'training'} ({config.model}, "
            f"{config.dataset}, {config.epochs} epochs)")
        try:
            summary = train(config, log=log)
        except TrainingInterrupted as err:
            write_report(out, methods, seed_list, base)
            raise TrainingInterrupted(
                f"bench interrupted in {run.name}; its checkpoint is saved: run the same "
                "`learndrop bench` command again to continue") from err
        log(f"[{i + 1}/{len(order)}] {run.name}: test acc {summary['final_test_acc']:.4f}, "
            f"{summary['train_time_s']:.1f}s, forward FLOPs "
            f"-{100 * summary['fwd_flops_reduction']:.1f}%, "
            f"{summary['units_dropped']}/{summary['units_total']} units dropped")
        write_report(out, methods, seed_list, base)
    report = write_report(out, methods, seed_list, base)
    plot_bench(out, report)
    log(f"wrote {out / BENCH_JSON}, {out / BENCH_MD}, {out / 'accuracy_vs_time.png'}, "
        f"{out / 'tradeoff.png'}")
    return report


def dry_run_check(base: TrainConfig, methods: list[str], order: list[tuple[str, int]],
                  configs: dict[tuple[str, int], TrainConfig], out: Path, log: Log) -> dict:
    """Load the data, build every method on a meta copy of the model (units, FLOPs, options)
    and take one real training step; print the plan. Writes nothing."""
    from learndrop.data import load_dataset, make_loaders
    from learndrop.distributed import DistContext
    from learndrop.train.builder import build_parts, pick_device

    started = time.perf_counter()
    device = pick_device(base.device)
    data = load_dataset(base.dataset, base.data_dir, base.image_size, base.subset, base.seed,
                        base.test_subset)
    train_loader, _ = make_loaders(data, base.batch_size, device, base.seed,
                                   augment=base.augment, eval_batch_size=base.eval_batch_size)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ConfigError("the training set is smaller than one batch; lower --batch-size")
    total_steps = steps_per_epoch * base.epochs
    shape = (base.batch_size, data.in_channels, data.image_size, data.image_size)
    units = 0
    meta = DistContext(0, 1, 0, torch.device("meta"))
    for m in methods:
        with torch.device("meta"):  # shapes only: no memory, no compute
            parts = build_parts(configs[(m, base.seed)], data, shape, meta,
                                steps_per_check=steps_per_epoch, total_steps=total_steps,
                                lr_factor=lambda step: 1.0, dry_run=True)
        units = max(units, len(parts.method.units))

    # One real step (plus one to time, after the first's one-off costs) of the full network.
    full = build_parts(configs[("full", base.seed)], data, shape, DistContext(0, 1, 0, device),
                       steps_per_check=steps_per_epoch, total_steps=total_steps,
                       lr_factor=lambda step: 1.0)
    model, optimizer = full.model, full.optimizer
    x, y = next(iter(train_loader))
    step_s = 0.0
    for _ in range(2):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        step_s = time.perf_counter() - t0
        if not torch.isfinite(loss):
            raise ConfigError(f"the first training step gave a loss of {loss.item()}")

    log(f"bench plan: {base.model} on {data.name} ({len(data.train_y)} train / "
        f"{len(data.test_y)} test images, {data.in_channels}x{data.image_size}x"
        f"{data.image_size}), {units} droppable units, {base.epochs} epochs of "
        f"{steps_per_epoch} steps, batch {base.batch_size}, on {device}")
    full_run_s = step_s * total_steps
    log(f"one full-network step took {step_s:.3f}s: about {full_run_s / 60:.1f} min per full run "
        "(rough: dropping methods take less; a busy machine takes more)")
    rows = []
    for i, (m, s) in enumerate(order):
        run = out / run_dir_name(m, s)
        state = "new" if base.overwrite else _state(run)
        action = {"done": "kept (summary.json exists)", "resume": "resume from last.ckpt",
                  "restart": "restart (no checkpoint yet)", "new": "train"}[state]
        rows.append({"run": run.name, "method": m, "seed": s, "action": action})
        log(f"  {i + 1:>3}. {run.name:<28} {action}")
    todo = sum(r["action"] != "kept (summary.json exists)" for r in rows)
    log(f"dry run OK in {time.perf_counter() - started:.1f}s: {todo} of {len(rows)} runs to do, "
        f"at most about {todo * full_run_s / 60:.0f} min; nothing written")
    return {"dry_run": True, "runs": rows, "step_s": step_s, "steps_per_epoch": steps_per_epoch,
            "estimated_full_run_s": full_run_s}


# ---- the report -----------------------------------------------------------------------------

def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _read_runs(out: Path, methods: Sequence[str] | None, seeds: Sequence[int] | None
               ) -> dict[tuple[str, int], dict]:
    """Summaries of the finished runs under ``out`` (all of them when methods/seeds are None)."""
    found = {}
    for path in sorted(out.glob("*/summary.json")):
        match = _RUN_DIR.match(path.parent.name)
        if not match:
            continue
        m, s = match["method"], int(match["seed"])
        if (methods is None or m in methods) and (seeds is None or s in seeds):
            found[(m, s)] = json.loads(path.read_text())
    return found


def _metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def aggregate(runs: dict[tuple[str, int], dict], methods: Sequence[str]) -> dict[str, dict]:
    """Per method: medians over seeds of the ratios against the ``full`` run of the same seed.

    ``fwd_flops_ratio`` / ``bwd_flops_ratio`` are the run's executed FLOPs over the full network's
    over the same samples, from the run's own ledger (``fwd_flops / fwd_flops_full``): equal to
    the ratio against the full run's ``fwd_flops`` when both saw the same samples, which they do
    in a bench (same data, epochs and batch size), and immune to a missing full run.
    """
    result = {}
    for m in methods:
        seeds = sorted(s for (mm, s) in runs if mm == m)
        if not seeds:
            continue
        per_seed = []
        for s in seeds:
            r, full = runs[(m, s)], runs.get(("full", s))
            row = {
                "seed": s,
                "final_test_acc": r["final_test_acc"],
                "train_time_s": r["train_time_s"],
                "fwd_flops_ratio": r["fwd_flops"] / r["fwd_flops_full"],
                "bwd_flops_ratio": r["bwd_flops"] / r["bwd_flops_full"],
                "units_dropped": r["units_dropped"],
                "params_final": r["params_final"],
                "time_ratio": None,
                "acc_delta": None,
            }
            if full is not None and full["train_time_s"] > 0:
                row["time_ratio"] = r["train_time_s"] / full["train_time_s"]
                row["acc_delta"] = r["final_test_acc"] - full["final_test_acc"]
            per_seed.append(row)

        def med(key: str, rows: list[dict] = per_seed) -> float | None:
            return _median([row[key] for row in rows if row[key] is not None])

        r0 = runs[(m, seeds[0])]
        result[m] = {
            "seeds": seeds,
            "time_ratio": med("time_ratio"),
            "acc_delta": med("acc_delta"),
            "fwd_flops_ratio": med("fwd_flops_ratio"),
            "bwd_flops_ratio": med("bwd_flops_ratio"),
            "final_test_acc": med("final_test_acc"),
            "train_time_s": med("train_time_s"),
            "units_dropped": med("units_dropped"),
            "units_total": r0["units_total"],
            "params_initial": r0["params_initial"],
            "params_final": med("params_final"),
            "per_seed": per_seed,
        }
    return result


def machine_info(device: str | None = None) -> dict:
    """What the timings were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": device,
        # How busy the machine was when the report was written: timings on a loaded machine
        # (load above the cores) are not comparable with quiet ones.
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg")
        else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_report(out: Path, methods: Sequence[str] | None = None,
                 seeds: Sequence[int] | None = None, base: TrainConfig | None = None) -> dict:
    """Rewrite ``bench.json`` and ``bench.md`` from the finished runs under ``out``.

    Without ``methods``/``seeds`` every ``<method>-s<seed>`` run directory found is used, so the
    report can be redone from whatever finished.
    """
    out = Path(out)
    runs = _read_runs(out, methods, seeds)
    if methods is None:
        found = {m for m, _ in runs}
        methods = [m for m in ("full", REFERENCE_METHOD) if m in found]
        methods += sorted(found - set(methods))
    if base is None:  # re-reporting: take the settings from a run's config.json
        configs = sorted(out.glob("*/config.json"))
        base = TrainConfig.from_dict(json.loads(configs[0].read_text())) if configs else None
    devices = sorted({r.get("device", "?") for r in runs.values()})
    report = {
        "config": _bench_settings(base),
        "methods": list(methods),
        "seeds": sorted({s for _, s in runs}) if seeds is None else list(seeds),
        "finished": len(runs),
        "machine": machine_info(", ".join(devices) or None),
        "notes": {
            "time_ratio": "train time (training steps only, no evaluation) / the full run's "
                          "of the same seed; median over seeds",
            "acc_delta": "final test accuracy - the full run's of the same seed; median",
            "fwd_flops_ratio": "forward FLOPs executed / the full network's over the same "
                               "samples (the run's own ledger); median",
            "bwd_flops_ratio": "backward FLOPs executed / the full network's; median",
        },
        "aggregate": aggregate(runs, methods),
        "runs": {run_dir_name(m, s): runs[(m, s)] for m, s in sorted(runs)},
    }
    data = json.dumps(report, indent=2).encode()
    atomic_write(out / BENCH_JSON, lambda f: f.write(data))
    markdown = bench_markdown(report).encode()
    atomic_write(out / BENCH_MD, lambda f: f.write(markdown))
    return report


def _bench_settings(base: TrainConfig | None) -> dict:
    if base is None:
        return {}
    values = base.to_dict()
    for key in ("method", "out", "resume", "reference", "overwrite", "quiet"):
        values.pop(key, None)
    return values


def _fmt(value: float | None, spec: str, scale: float = 1.0, sign: bool = False) -> str:
    if value is None:
        return "–"
    text = format(value * scale, spec)
    return f"+{text}" if sign and value > 0 else text


def bench_markdown(report: dict) -> str:
    """The Markdown table of a bench report."""
    c = report["config"]
    lines = [
        f"# Bench: {c.get('model', '?')} on {c.get('dataset', '?')}",
        "",
        f"{c.get('epochs', '?')} epochs, training subset {c.get('subset') or 'all'}, batch "
        f"{c.get('batch_size', '?')}, lr {c.get('lr', '?')}, seeds "
        f"{', '.join(map(str, report['seeds']))}; {report['finished']} runs finished; "
        f"{report['machine']['cpu']}, {report['machine']['cpus_usable']} CPUs, torch "
        f"{report['machine']['torch']}, device {report['machine']['device']}.",
        "",
        "Medians over seeds. Time ratio: training time over the full run's of the same seed. "
        "Δ acc: final test accuracy minus the full run's, in points. FLOPs ratios: executed over "
        "the full network's over the same samples.",
        "",
        "| method | seeds | final test acc | Δ acc (pts) | train time (s) | time ratio "
        "| fwd FLOPs ratio | bwd FLOPs ratio | units dropped | params final |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m, a in report["aggregate"].items():
        lines.append(
            f"| {m} | {len(a['seeds'])} | {_fmt(a['final_test_acc'], '.2f', 100)}% "
            f"| {_fmt(a['acc_delta'], '.2f', 100, sign=True)} | {_fmt(a['train_time_s'], '.1f')} "
            f"| {_fmt(a['time_ratio'], '.3f')} | {_fmt(a['fwd_flops_ratio'], '.3f')} "
            f"| {_fmt(a['bwd_flops_ratio'], '.3f')} | {_fmt(a['units_dropped'], 'g')}/"
            f"{a['units_total']} | {_fmt(a['params_final'], ',.0f')} |")
    lines += ["", "## Every run", "",
              "| run | final test acc | train time (s) | time ratio | fwd FLOPs ratio "
              "| bwd FLOPs ratio | units dropped |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for m, a in report["aggregate"].items():
        for r in a["per_seed"]:
            lines.append(
                f"| {run_dir_name(m, r['seed'])} | {_fmt(r['final_test_acc'], '.2f', 100)}% "
                f"| {_fmt(r['train_time_s'], '.1f')} | {_fmt(r['time_ratio'], '.3f')} "
                f"| {_fmt(r['fwd_flops_ratio'], '.3f')} | {_fmt(r['bwd_flops_ratio'], '.3f')} "
                f"| {r['units_dropped']} |")
    return "\n".join(lines) + "\n"


# ---- plots ----------------------------------------------------------------------------------

def plot_bench(out: Path, report: dict) -> list[Path]:
    """``accuracy_vs_time.png`` (test accuracy over training time, every run; the first seed
    bold, the others faint) and ``tradeoff.png`` (final accuracy against training time per
    method: the median, and every seed faint)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    agg = report["aggregate"]
    if not agg:
        return []
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(agg)}

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for m, a in agg.items():
        bold = True  # the first seed with metrics; the others faint
        for s in a["seeds"]:
            rows = _metrics(out / run_dir_name(m, s))
            if not rows:
                continue
            ax.plot([r["time_s"] for r in rows], [100 * r["test_acc"] for r in rows],
                    color=colors[m], marker="o" if bold else None, markersize=3,
                    alpha=1.0 if bold else 0.3, linewidth=1.6 if bold else 1.0,
                    label=m if bold else None)
            bold = False
    ax.set(xlabel="training time (s)", ylabel="test accuracy (%)",
           title=f"Test accuracy over training time ({report['config'].get('model', '')}, "
                 f"{report['config'].get('dataset', '')})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    paths = [_save(fig, out / "accuracy_vs_time.png")]

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for m, a in agg.items():
        ax.scatter([r["train_time_s"] for r in a["per_seed"]],
                   [100 * r["final_test_acc"] for r in a["per_seed"]],
                   color=colors[m], alpha=0.3, s=18)
        ax.scatter([a["train_time_s"]], [100 * a["final_test_acc"]], color=colors[m], s=60,
                   edgecolor="black", label=m, zorder=3)
        ax.annotate(m, (a["train_time_s"], 100 * a["final_test_acc"]), fontsize=8,
                    xytext=(5, 4), textcoords="offset points")
    ax.set(xlabel="training time (s)", ylabel="final test accuracy (%)",
           title="Accuracy against training time (median; seeds faint)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "tradeoff.png"))
    return paths


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, dpi=110, format="png"))
    plt.close(fig)
    return path


# ---- command line ---------------------------------------------------------------------------

def add_bench_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``learndrop bench`` (every ``learndrop train`` option, plus the bench's own)."""
    from learndrop.cli import add_train_arguments

    p = subparsers.add_parser(
        "bench", help="train several methods side by side and compare them",
        description="Train every method of --methods on the same model, data and settings, "
                    "one run after another, and report time, accuracy and FLOPs against full "
                    "training (bench.json, bench.md, plots). Resumable: run the same command "
                    "again to continue.")
    add_train_arguments(p)
    bench = p.add_argument_group("bench")
    bench.add_argument("--methods", default="full,learndrop,freezeout,stochastic-depth,random-drop",
                       help="comma-separated methods (full is always included; default "
                            "%(default)s)")
    bench.add_argument("--seeds", type=int, default=1, metavar="K",
                       help="seeds --seed .. --seed+K-1, runs interleaved (default 1)")
    bench.add_argument("--dry-run", action="store_true",
                       help="check the configuration, data and one training step, print the "
                            "plan, write nothing")
    # Set by the bench per run: given on the command line they would be silently overridden.
    p.set_defaults(func=cmd_bench, method=None, resume=None, reference=None)
    return p


def cmd_bench(args: argparse.Namespace) -> int:
    from learndrop.cli import config_from_args

    for flag in ("method", "resume", "reference"):
        if getattr(args, flag) is not None:
            hint = {"method": "use --methods", "resume": "run the same bench command again",
                    "reference": "each seed's learndrop run is the reference"}[flag]
            raise ConfigError(f"--{flag} is not a bench option: {hint}")
    if getattr(args, "nproc", 1) != 1:
        raise ConfigError("bench runs every run in this one process: leave out --nproc "
                          "(on several GPUs, use `learndrop train --nproc N` per method)")
    args.method = "full"
    config = config_from_args(args)
    out = Path(args.out or f"runs/bench-{config.model}-"
               f"{config.dataset.replace('folder:', '').replace('/', '_').strip('._')}")
    config.out = None
    report = run_bench(config, args.methods, args.seeds, out, dry_run=args.dry_run, log=print)
    if not args.dry_run:
        print((out / BENCH_MD).read_text())
    return 0 if report else 1
