"""The proof regime: every method against full training and its budget frontier (issue 13).

Per model (CIFAR ResNet-56 and the CIFAR-size VGG-16) one ``learndrop bench``
(:func:`learndrop.bench.run_bench`) on CIFAR-10: full training; full training at 0.25, 0.5 and
0.75 of the epochs with the schedule compressed (the budget frontier); Learn&Drop with its
current defaults; Learn&Drop with the paper's rule as it stood before issue 15
(``learndrop-paper``) and with the defaults until session 16, which froze the units too costly
to drop (``costly-freeze``: issue 13's "before" picture); random-drop (Learn&Drop's schedule
of drops and freezes, units drawn at random); slim-from-scratch (Learn&Drop's final structure
trained from the first step: the oracle where a smaller network is as good); FreezeOut;
stochastic depth; the A/A control (full training timed a second time: the noise floor); and, for
ResNet-56, full training of ResNet-20 (the check that depth matters). Each seed's runs train in
lockstep (one epoch of each in turn).

Profiles (``--profile``):

- ``cpu``: the regime chosen for 2 CPU cores (docs/bench.md, "The proof regime"): 20,000
  training images (VGG-16 10,000: 17 min per full run, near the cost check), 10 epochs, batch
  128, the whole 10,000-image test set, seeds 0, 1, 2;
- ``cpu-depth``: the regime where depth may matter, for 2 CPU cores with native bf16 (AMX or
  AVX512_BF16): all 50,000 training images, 20 epochs under warmup-stable-decay (the last 30%
  decays), bf16 autocast, ResNet-56 with ResNet-20 as the depth check; about 40 minutes per full
  ResNet-56 run on an Intel Xeon with AMX (session 30), so that each run finishes within a
  session (``--methods full,learndrop``, then ``--methods depth-check``, ...);
- ``gpu``: paper scale on one GPU (all 50,000 training images, ResNet-56 and ResNet-110, one
  seed), bf16 autocast and channels_last (the trainer's CUDA path), batch 512 with the learning
  rate scaled linearly (0.4 = 0.1 x 512/128; Goyal et al. 2017) so that the small CIFAR ResNets
  are not launch-bound; the epochs are fitted to ``--time-budget`` (8 minutes) by timing a few
  steps of each model first, at most 30, and recorded in ``proof-plan.json`` so that a rerun
  continues the same plan;
- ``smoke``: the gpu profile's path (the fitted epochs included) on a few hundred Fashion-MNIST
  images at 16x16 with ResNet-20 and ResNet-32, seconds on a CPU; CI runs it
  (tests/test_proof.py).

Resumable and splittable: one seed per invocation is fine (``--seeds 0``, then ``--seeds 1``,
...); finished runs are kept, an interrupted run continues from its last finished epoch, and
``OUT/README.md`` and the report of each model the invocation trains are rewritten after every
finished run (``--report-only``: every bench's report).
The CIFAR-10 tarball is looked for at ``../shared/data`` and ``shared/data`` from the repository
root::

    python benchmarks/proof.py --seeds 0 --models resnet56        # about 2 h on 2 quiet cores
    python benchmarks/proof.py --seeds 0 --models vgg16_cifar --methods learndrop
                                        # a first look: full and Learn&Drop alone (kept later)
    python benchmarks/proof.py --seeds 1 --models vgg16_cifar --methods learndrop,budgets
                                        # the "before" picture: + the frontier (kept later)
    python benchmarks/proof.py --seeds 0 --models resnet56 --methods full \
        --variant cap0.5=learndrop:max_dropped_fraction=0.5     # a tuning run, in the report
    python benchmarks/proof.py --profile cpu-depth --seeds 0 --methods depth-check
                                        # ResNet-20's full run alone: does depth matter here?
    python benchmarks/proof.py --dry-run                          # the plan and an estimate
    python benchmarks/proof.py --profile gpu --device cuda        # about 8 min on one H200
    python benchmarks/proof.py --profile smoke --out /tmp/proof   # seconds, checks the path
    python benchmarks/proof.py --report-only                      # README.md from what finished
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(REPO))

from learndrop.atomic import atomic_write  # noqa: E402
from learndrop.bench import (  # noqa: E402
    BENCH_JSON,
    BENCH_MD,
    DEFAULT_BUDGETS,
    Variant,
    machine_info,
    parse_methods,
    parse_seeds,
    parse_variant,
    run_bench,
    write_report,
)
from learndrop.bench.plan import NEEDS_REFERENCE, shallow_models  # noqa: E402
from learndrop.bench.report import decay_text  # noqa: E402
from learndrop.train import ConfigError, TrainConfig  # noqa: E402

BUDGETS = "budgets"  # --methods word for the frontier runs (full training at DEFAULT_BUDGETS)
DEPTH_CHECK = "depth-check"  # --methods word for the shallow model's full run (the profile's)
METHODS = ["full", "learndrop", "random-drop", "slim-from-scratch", "freezeout",
           "stochastic-depth"]
# The "before" picture (issue 13): Learn&Drop as it stood before the decisions issue (15), the
# paper reading: each unit's own learning-rate normalised change, candidate at half of its own
# peak, no drop cost measured, no stability guard, no BatchNorm recalibration.
# (costly_units has no effect without cost measurement; it is pinned at the value its runs
# recorded, so that a later default does not make them another experiment)
PAPER_RULE = Variant("learndrop-paper", "learndrop", {
    "normalization": "per-unit", "change_threshold": 0.5, "cost_batches": 0,
    "max_drop_cost": math.inf, "max_loss_rise": math.inf, "recalibration_batches": 0,
    "costly_units": "freeze", "min_lr_fraction": 0.0})
# Learn&Drop as its defaults stood until session 16 (issue 13's "before" picture): the units too
# costly to drop were frozen. Kept in the bench so that every seed measures the change.
FREEZE_RULE = Variant("costly-freeze", "learndrop", {"costly_units": "freeze",
                                                    "min_lr_fraction": 0.0})
RESERVED = (PAPER_RULE, FREEZE_RULE)
CIFAR10 = ("../shared/data/cifar10-jpg.tar.gz", "shared/data/cifar10-jpg.tar.gz")
PLAN = "proof-plan.json"
# The regime's checks (issue 13): a full run within the profile's cost limit (``cpu``: about 15
# minutes on 2 cores), converged (the last fifth of the epochs gains under 0.5 point), depth
# matters (the deep network beats the shallow one by 1 point or more).
MAX_FULL_RUN_S = 15 * 60
MAX_LAST_FIFTH_GAIN = 0.005
MIN_DEPTH_GAP = 0.01


@dataclass(frozen=True)
class Profile:
    """The settings of a proof profile. ``epochs=None``: fitted to ``time_budget_s``."""

    dataset: str | None  # None: the CIFAR-10 tarball (CIFAR10's first existing path)
    subset: int | None
    epochs: int | None
    batch_size: int
    lr: float
    models: tuple[str, ...]
    shallow: dict[str, str] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    test_subset: int | None = None
    image_size: int | None = None
    warmup_epochs: float = 1.0
    # The cosine decay's share of every run (1: warm-up then cosine to zero; < 1: the rate holds
    # at its peak until the decay, warmup-stable-decay): ``TrainConfig.lr_decay_fraction``.
    lr_decay_fraction: float = 1.0
    time_budget_s: float | None = None
    epoch_range: tuple[int, int] = (4, 30)
    run_plots: bool = True  # each run's own plots (the bench's are always drawn)
    # Part of the regime, not of the machine: ``auto`` is bf16 on a CPU with AVX512_BF16 and
    # fp32 on one without, and the two train different numbers (the bench refuses to mix them).
    precision: str = "auto"
    note: str = ""
    # A model whose full run would not fit the regime's cost check (a) at ``subset`` trains on
    # fewer images; the epochs, and so the number of Learn&Drop's checks, stay the same.
    model_subsets: dict[str, int] = field(default_factory=dict)
    # The regime's cost check (a): a full run's wall-clock limit on the machine it is sized for.
    max_full_run_s: float = MAX_FULL_RUN_S
    # Method options pinned at the values the regime's committed runs were made with, so that a
    # later default does not turn them into another experiment (the bench refuses to mix them):
    # every run whose method has the option trains with it; a --variant's own options win.
    pinned_options: dict[str, object] = field(default_factory=dict)

    def subset_of(self, model: str) -> int | None:
        """The training subset of ``model`` (images; None: all)."""
        return self.model_subsets.get(model, self.subset)


# The late-drop guard off: Learn&Drop's default until session 33 (``DropPolicy.min_lr_fraction``).
GUARD_OFF = {"min_lr_fraction": 0.0}
PROFILES = {
    "cpu": Profile(dataset=None, subset=20_000, epochs=10, batch_size=128, lr=0.1,
                   models=("resnet56", "vgg16_cifar"), shallow={"resnet56": "resnet20"},
                   seeds=(0, 1, 2), model_subsets={"vgg16_cifar": 10_000}, precision="fp32",
                   pinned_options=GUARD_OFF,
                   note="2 CPU cores: 20,000 class-balanced training images (VGG-16: 10,000, so "
                        "that its full run is near 15 minutes), 10 epochs, the whole test set, "
                        "fp32 on every CPU (every committed run of it is fp32); Learn&Drop "
                        "without the late-drop guard (`min_lr_fraction=0`, the default until "
                        "session 33, as every committed run of it; the guard is a --variant)"),
    # The regime where depth may matter, on a CPU with native bf16 (AMX or AVX512_BF16, where
    # bf16 autocast trains ResNet-56 1.7-1.8x as fast as fp32; sessions 17, 30): all 50,000
    # training images, 20 epochs under warmup-stable-decay, ResNet-56 against ResNet-20. About 40
    # minutes per full ResNet-56 run on the Intel Xeon with AMX, so that every run ends within one
    # session (checkpoints of an unfinished run do not reach the next session's checkout).
    "cpu-depth": Profile(dataset=None, subset=None, epochs=20, batch_size=128, lr=0.1,
                         models=("resnet56",), shallow={"resnet56": "resnet20"},
                         seeds=(0, 1, 2), lr_decay_fraction=0.3, precision="bf16",
                         max_full_run_s=50 * 60, pinned_options=GUARD_OFF,
                         note="2 CPU cores with native bf16: all 50,000 training images, 20 "
                              "epochs, warmup-stable-decay (the last 30% decays), bf16 autocast "
                              "+ channels_last; the depth check (ResNet-20) says whether depth "
                              "matters here; Learn&Drop without the late-drop guard "
                              "(`min_lr_fraction=0`, the default until session 33, as every "
                              "committed run of it; the guard is a --variant)"),
    "gpu": Profile(dataset=None, subset=None, epochs=None, batch_size=512, lr=0.4,
                   models=("resnet56", "resnet110"),
                   shallow={"resnet56": "resnet20", "resnet110": "resnet20"},
                   time_budget_s=8 * 60,
                   note="one GPU, paper scale: all 50,000 training images, bf16 autocast, "
                        "channels_last, batch 512 (lr 0.4, linear scaling), epochs fitted to 8 "
                        "minutes"),
    "smoke": Profile(dataset="fashion-mnist", subset=128, test_subset=100, image_size=16,
                     epochs=None, batch_size=64, lr=0.05, models=("resnet32",),
                     shallow={"resnet32": "resnet20"}, time_budget_s=60, epoch_range=(4, 5),
                     run_plots=False,
                     note="a check that the protocol runs; numbers mean nothing"),
}


def cifar10_tarball() -> Path | None:
    """The offline CIFAR-10 tarball (the first of ``CIFAR10`` that exists, relative to the
    repository), or None."""
    return next(((REPO / p).resolve() for p in CIFAR10 if (REPO / p).is_file()), None)


def dataset_of(profile: Profile, override: str | None) -> str:
    if override:
        return override
    if profile.dataset:
        return profile.dataset
    found = cifar10_tarball()
    if found is None:
        raise ConfigError(f"CIFAR-10 not found at {' or '.join(CIFAR10)} (relative to {REPO}); "
                          "pass --dataset folder:PATH")
    return f"folder:{found}"


def decay_fraction_of(profile: Profile, args: argparse.Namespace) -> float:
    """The cosine decay's share of every run: ``--lr-decay-fraction`` or the profile's."""
    given = args.lr_decay_fraction
    return profile.lr_decay_fraction if given is None else given


def base_config(profile: Profile, model: str, epochs: int, args: argparse.Namespace,
                methods: tuple[str, ...] = ()) -> TrainConfig:
    """The bench's base configuration; ``methods``: every method this invocation trains (its
    variants' included), which receive the profile's pinned options that they have."""
    from learndrop.train.config import default_method_options

    known = {name for m in methods for name in default_method_options(m)}
    return TrainConfig(
        model=model, dataset=dataset_of(profile, args.dataset), subset=profile.subset_of(model),
        test_subset=profile.test_subset, image_size=profile.image_size, epochs=epochs,
        batch_size=profile.batch_size, lr=profile.lr, warmup_epochs=profile.warmup_epochs,
        lr_decay_fraction=decay_fraction_of(profile, args),
        device=args.device, precision=profile.precision, quiet=True, plots=profile.run_plots,
        # What each drop does on its own (issue 15's "right after a drop"): the runs whose
        # method drops while training test before and after it, outside their training time.
        eval_around_drops=True,
        method_options={k: v for k, v in profile.pinned_options.items() if k in known},
    )


# ---- fitting the epochs to a time budget (gpu, smoke) ----------------------------------------

def step_seconds(model_name: str, shape: tuple[int, int, int, int], device_name: str,
                 steps: int = 6) -> float:
    """Seconds per training step of full training of ``model_name`` on batches of ``shape``,
    timed on random data after two untimed steps, on the trainer's path (bf16 autocast and
    channels_last on CUDA)."""
    import contextlib

    import torch

    from learndrop.models import create_model
    from learndrop.train.trainer import pick_device

    device = pick_device(device_name)
    model = create_model(model_name, num_classes=10, in_channels=shape[1]).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(shape, device=device)
    y = torch.randint(0, 10, (shape[0],), device=device)
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else (
        contextlib.nullcontext)
    elapsed = 0.0
    for i in range(steps + 2):
        started = time.perf_counter()
        with autocast():
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        if i >= 2:
            elapsed += time.perf_counter() - started
    return elapsed / steps


def fit_epochs(profile: Profile, args: argparse.Namespace, log=print) -> dict:
    """The epochs that fit ``profile.time_budget_s`` for every model, from timed steps.

    Per model and seed the bench trains about 8.5 full runs' worth of steps (full, A/A, budgets
    0.25 + 0.5 + 0.75, five methods counted as full runs: an upper bound, they drop or skip
    work) plus the shallow model's full run, and evaluates the test set once per epoch per run
    (a forward pass: a third of a training step per image). A tenth of the budget is kept for
    start-up, data loading and the reports.
    """
    from learndrop.data import load_dataset

    config = base_config(profile, profile.models[0], 1, args)
    subsets = [profile.subset_of(m) for m in profile.models]
    data = load_dataset(config.dataset, None, config.image_size,
                        None if None in subsets else max(subsets), 0, config.test_subset)
    train_images, test_images = len(data.train_y), len(data.test_y)
    shape = (config.batch_size, data.in_channels, data.image_size, data.image_size)
    runs_per_epoch = len(METHODS) + 1 + sum(DEFAULT_BUDGETS)  # + A/A; budgets in epochs
    epoch_s, steps = 0.0, {}
    for model in profile.models:
        shallow = shallow_models(args.shallow or profile.shallow.get(model))
        for m, weight in ((model, runs_per_epoch), *((name, 1.0) for name in shallow)):
            s = steps.setdefault(m, step_seconds(m, shape, config.device))
            per_image = s / config.batch_size
            images = min(profile.subset_of(model) or train_images, train_images)
            epoch_s += weight * per_image * (images + test_images / 3)
    budget = 0.9 * profile.time_budget_s
    seeds = len(parse_seeds(args.seeds) if args.seeds else profile.seeds)
    lo, hi = profile.epoch_range
    epochs = max(lo, min(hi, math.floor(budget / (epoch_s * seeds))))
    log(f"fitted epochs: {epochs} (one epoch of every run of every model: {epoch_s:.1f}s, "
        f"timed steps {', '.join(f'{m} {1e3 * s:.1f} ms' for m, s in steps.items())}, budget "
        f"{profile.time_budget_s:.0f}s for {seeds} seed(s))")
    return {"epochs": epochs, "step_s": steps, "epoch_s": epoch_s, "train_images": train_images,
            "time_budget_s": profile.time_budget_s, "seeds": seeds}


def planned_epochs(profile: Profile, args: argparse.Namespace, out: Path) -> tuple[int, dict]:
    """The profile's epochs: fixed, or fitted once and kept in ``OUT/proof-plan.json`` (so that
    the same command run again continues the same experiment)."""
    if args.epochs:
        return args.epochs, {"epochs": args.epochs, "source": "--epochs"}
    if profile.epochs is not None:
        return profile.epochs, {"epochs": profile.epochs, "source": "profile"}
    path = out / PLAN
    if path.is_file():
        plan = json.loads(path.read_text())
        return plan["epochs"], plan
    plan = {**fit_epochs(profile, args), "source": "fitted"}
    if not args.dry_run:
        data = json.dumps(plan, indent=2).encode()
        atomic_write(path, lambda f: f.write(data))
    return plan["epochs"], plan


# ---- the report -------------------------------------------------------------------------------

def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def regime_checks(report: dict, max_full_run_s: float = MAX_FULL_RUN_S,
                  lr_decay_fraction: float = 1.0) -> list[str]:
    """The regime's three checks from one model's bench report, as Markdown bullets
    (``max_full_run_s``: the profile's limit for check (a); ``lr_decay_fraction`` < 1: the
    decay of warmup-stable-decay fills the last epochs, so check (b) cannot be read)."""
    rows = report["rows"]
    lines = []
    full = rows.get("full")
    if full:
        t, cpu = full["train_time_s"], full["train_cpu_s"]
        lines.append(f"- (a) cost: a full run trained in {t / 60:.1f} min wall-clock, "
                     f"{(cpu or 0) / 60:.1f} min CPU time (median over seeds; limit about "
                     f"{max_full_run_s / 60:.0f} min on 2 cores): "
                     f"{'ok' if t <= max_full_run_s else 'over'} (wall-clock on a shared "
                     "machine overstates it)")
    g = report.get("convergence")
    if g:
        gain = g["last_fifth_gain"]
        verdict = ("ok" if gain < MAX_LAST_FIFTH_GAIN else "not converged")
        if lr_decay_fraction < 1:
            verdict = (f"not a convergence check here: the learning rate decays over the last "
                       f"{100 * lr_decay_fraction:g}% of the steps, and the accuracy rises in "
                       "the decay by design")
        lines.append(f"- (b) converged: the last fifth of the epochs gained {100 * gain:+.2f} "
                     f"points (limit {100 * MAX_LAST_FIFTH_GAIN:.1f}): {verdict}")
    d = report.get("depth")
    if d:
        verdict = ("ok" if d["gap"] >= MIN_DEPTH_GAP
                   else "no: slim-from-scratch is the oracle")
        lines.append(f"- (c) depth matters: {d['deep_model']} {_pct(d['deep_acc'])} against "
                     f"{d['model']} {_pct(d['shallow_acc'])}, gap {100 * d['gap']:+.2f} points "
                     f"(need {100 * MIN_DEPTH_GAP:+.1f}): {verdict}")
    return lines


def _read_report(model_dir: Path) -> dict | None:
    """The bench report as written (``bench.json``, with its ``bench.md``), or None where either
    is missing, unreadable or lacks the rows (a report to regenerate)."""
    try:
        report = json.loads((model_dir / BENCH_JSON).read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(report, dict) and "rows" in report and (model_dir / BENCH_MD).is_file()
    return report if ok else None


def _schedule_note(settings: dict) -> str:
    fraction = settings.get("lr_decay_fraction", 1.0)  # absent: written before the option
    option = "" if fraction == 1 else " (`--lr-decay-fraction`)"
    return f" Schedule: a linear warm-up, then {decay_text(fraction)}{option}."


def write_readme(out: Path, profile_name: str, settings: dict,
                 rewrite_reports: bool = True) -> Path:
    """``OUT/README.md``: per model the regime's checks and its bench report.

    ``rewrite_reports``: regenerate every model's ``bench.json``/``bench.md`` from its runs
    first (``--report-only``); False: read them as they are (after training, whose bench has
    just written its own), so that an invocation that trained one model leaves another's report
    (and the machine it names as the report's writer) untouched. A report that is missing,
    unreadable or of an older layout is regenerated all the same."""
    profile = PROFILES[profile_name]
    lines = ["# The proof regime", "",
             f"Generated by `{settings.get('command', 'python benchmarks/proof.py')}`; redo with "
             f"`python benchmarks/proof.py --profile {profile_name} --report-only` "
             f"(`--out {settings.get('out', out)}`).", "",
             f"Profile **{profile_name}**: {profile.note}. Epochs: {settings.get('epochs', '?')} "
             f"({settings.get('epochs_source', '?')}).{_schedule_note(settings)}", ""]
    from learndrop.models import list_models

    # One bench per model directory; archived runs beside them (e.g. ``vgg16_cifar-20k-first-look``)
    # are records of another experiment: neither listed here nor rewritten.
    models = set(list_models())
    benches = [d for d in sorted(out.iterdir())
               if d.is_dir() and d.name in models and list(d.glob("*/summary.json"))]
    for model_dir in benches:
        report = None if rewrite_reports else _read_report(model_dir)
        if report is None:
            report = write_report(model_dir)
        # The bench's own report, its headings one level down.
        bench_md = "\n".join("##" + line if line.startswith("#") else line
                             for line in (model_dir / BENCH_MD).read_text().splitlines())
        checks = regime_checks(report, profile.max_full_run_s,
                               settings.get("lr_decay_fraction", 1.0))
        lines += [f"## {model_dir.name}", "", "Regime checks:", "", *checks, "",
                  bench_md, ""]
    if not benches:
        lines.append("No run has finished yet.")
    lines += ["", "This README written on: `" + json.dumps(machine_info()) + "`", ""]
    text = "\n".join(lines)
    atomic_write(out / "README.md", lambda f: f.write(text.encode()))
    return out / "README.md"


# ---- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    p.add_argument("--out", default=None,
                   help="default benchmarks/results/proof-<profile> (relative to the repository)")
    p.add_argument("--models", default=None, help="comma-separated; default: the profile's")
    p.add_argument("--seeds", default=None,
                   help="comma-separated seeds, e.g. 0 (one per invocation is fine); default: "
                        "the profile's")
    p.add_argument("--methods", default=None,
                   help="comma-separated, from " + ",".join(METHODS) + f", {BUDGETS!r} (full "
                        "training at 0.25, 0.5 and 0.75 of the epochs: the frontier) and "
                        f"{DEPTH_CHECK!r} (full training of the shallow models): a first "
                        "look at those runs alone (no A/A control, learndrop-paper or "
                        "costly-freeze, and no budget runs or depth check unless named); the "
                        "whole bench, run later without --methods, keeps them. Default: the "
                        "whole bench")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL=METHOD[:K=V,...]",
                   help="also train METHOD under LABEL with options of its own (repeatable), "
                        "e.g. cap0.5=learndrop:max_dropped_fraction=0.5: a tuning run, reported "
                        "beside the proof runs of its seed (against full and the frontier); with "
                        "--methods full it trains alone and the finished runs are kept; "
                        "rd-x=random-drop:reference=x copies variant x's schedule (chance "
                        "against its scores); r20-b=full:model=resnet20 trains a shallower "
                        "network in full under a label of its own (e.g. on another machine, "
                        "where full-resnet20 of that seed is taken)")
    p.add_argument("--shallow", default=None, metavar="MODEL[,MODEL...]",
                   help="the shallower networks trained in full beside the bench's model: the "
                        "depth frontier (what training a smaller network costs and reaches), "
                        f"the shallowest also the depth check; default: the profile's. With "
                        f"--methods they train without naming {DEPTH_CHECK!r}, e.g. --methods "
                        "full --shallow resnet32 (the finished full runs are kept)")
    p.add_argument("--no-aa-control", action="store_true",
                   help="with --methods: train random-drop or slim-from-scratch without the A/A "
                        "control (full training again) beside them, to save a full run; their "
                        "time ratios are then against full training of another invocation")
    p.add_argument("--epochs", type=int, default=None,
                   help="override the profile's (fitted) epochs: use a new --out")
    p.add_argument("--lr-decay-fraction", type=float, default=None, metavar="F",
                   help="the cosine decay takes the last F of every run (budget runs included) "
                        "and the rate holds at its peak before it (warmup-stable-decay; 1: "
                        "warm-up then cosine, the profile's): a different regime, use a new "
                        "--out")
    p.add_argument("--dataset", default=None, help="default: the profile's")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--dry-run", action="store_true",
                   help="check every bench, print the plans and estimates, write nothing")
    p.add_argument("--report-only", action="store_true",
                   help="only rewrite the reports from what has finished")
    args = p.parse_args(argv)
    profile = PROFILES[args.profile]
    out = Path(args.out) if args.out else REPO / f"benchmarks/results/proof-{args.profile}"
    if args.report_only:
        given = [f for f, v in (("--models", args.models), ("--seeds", args.seeds),
                                ("--methods", args.methods), ("--variant", args.variant),
                                ("--epochs", args.epochs), ("--dataset", args.dataset),
                                ("--lr-decay-fraction", args.lr_decay_fraction is not None),
                                ("--threads", args.threads), ("--dry-run", args.dry_run),
                                ("--no-aa-control", args.no_aa_control),
                                ("--shallow", args.shallow),
                                ("--device", args.device != "auto")) if v]
        if given:
            raise ConfigError(f"--report-only rewrites the reports of every finished run: "
                              f"leave out {given[0]}")
        settings = json.loads((out / PLAN).read_text()).get("settings", {}) if (
            out / PLAN).is_file() else {}
        print(write_readme(out, args.profile, settings).read_text())
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    models = args.models.split(",") if args.models else list(profile.models)
    from learndrop.models import list_models

    unknown = [m for m in models if m not in list_models()]
    if unknown:
        raise ConfigError(f"--models: unknown model {unknown[0]!r}; see `learndrop models`")
    seeds = parse_seeds(args.seeds) if args.seeds else list(profile.seeds)
    own = next((m for m in models if m in shallow_models(args.shallow)), None)
    if own:  # refused before any bench trains, not when its model's turn comes
        raise ConfigError(f"--shallow {own} is one of --models; name shallower networks "
                          "than each of them")
    methods, budgets, depth_check = METHODS, True, True
    if args.no_aa_control and not args.methods:
        raise ConfigError("--no-aa-control: the whole bench always trains the A/A control (its "
                          "noise floor); give --methods, or leave --no-aa-control out")
    if args.methods:
        names = [m.strip() for m in args.methods.split(",")]
        twice = next((w for w in (BUDGETS, DEPTH_CHECK) if names.count(w) > 1), None)
        if twice:
            raise ConfigError(f"--methods names {twice!r} twice")
        budgets, depth_check = BUDGETS in names, DEPTH_CHECK in names
        lacking = next((m for m in models if m not in profile.shallow), None)
        if depth_check and lacking and not args.shallow:
            raise ConfigError(f"--methods {DEPTH_CHECK}: profile {args.profile!r} names no "
                              f"shallow model for {lacking}; leave {DEPTH_CHECK} out")
        methods = parse_methods([m for m in names if m not in (BUDGETS, DEPTH_CHECK)])
        outside = [m for m in methods if m not in METHODS]
        if outside:
            raise ConfigError(f"--methods: {outside[0]!r} is not in the proof bench; choose from "
                              f"{','.join(METHODS)}")
        methods = [m for m in METHODS if m in methods]  # the bench's order
    variants = [parse_variant(text) for text in args.variant]
    taken = next((v.label for v in variants if v.label in {r.label for r in RESERVED}), None)
    if taken:
        raise ConfigError(f"--variant {taken}: the label is one of the proof bench's own runs "
                          f"({', '.join(r.label for r in RESERVED)}); choose another")
    copies = any(m in NEEDS_REFERENCE for m in [*methods, *(v.method for v in variants)])
    if args.no_aa_control and not copies:
        raise ConfigError("--no-aa-control: only random-drop and slim-from-scratch train the A/A "
                          "control beside them, and none is asked for; leave it out")
    epochs, plan = planned_epochs(profile, args, out)
    settings = {
        "profile": args.profile, "epochs": epochs, "epochs_source": plan.get("source"),
        "lr_decay_fraction": decay_fraction_of(profile, args),
        "out": str(out), "command": "python benchmarks/proof.py " + shlex.join(
            argv if argv is not None else sys.argv[1:]),
    }
    record = json.dumps({**plan, "settings": settings}, indent=2).encode()
    whole = methods == METHODS and budgets
    if whole:
        variants = [*RESERVED, *variants]
    trained = (*methods, *(v.method for v in variants))
    for model in models:
        base = base_config(profile, model, epochs, args, trained)
        print(f"== {model}: {base.dataset}, {base.subset or 'all'} training images, {epochs} "
              f"epochs, seeds {','.join(map(str, seeds))}", flush=True)
        if whole:
            extras = dict(budgets=DEFAULT_BUDGETS, aa_control=True,
                          shallow=args.shallow or profile.shallow.get(model), variants=variants)
        else:  # a first look: the chosen runs alone, named and configured as in the whole bench
            # (the copies of Learn&Drop's run are timed against the A/A control beside them)
            extras = dict(budgets=DEFAULT_BUDGETS if budgets else "none",
                          shallow=args.shallow or (profile.shallow.get(model) if depth_check
                                                   else None),
                          variants=variants,
                          aa_control=copies and not args.no_aa_control)
        run_bench(base, methods, seeds, out / model, dry_run=args.dry_run, prune=True,
                  log=lambda s: print(s, flush=True), **extras)
        if not args.dry_run:
            # The settings are recorded once a bench has accepted them (a bench that refuses
            # this invocation's regime, e.g. runs of another schedule in --out, leaves the
            # record as it was). run_bench has just written this model's report; the others
            # are read as they are.
            atomic_write(out / PLAN, lambda f: f.write(record))
            write_readme(out, args.profile, settings, rewrite_reports=False)
    if not args.dry_run:
        print(f"wrote {out / 'README.md'}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as err:
        sys.exit(f"proof.py: error: {err}")
    except KeyboardInterrupt as err:  # TrainingInterrupted says how to continue
        sys.exit(f"proof.py: {err or 'interrupted; run the same command again to continue'}")
