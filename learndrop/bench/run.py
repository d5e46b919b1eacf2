"""``run_bench``: plan the bench, train its runs in lockstep, report after every finished run.

Resumable run by run and epoch by epoch: a run with a ``summary.json`` is read back, not redone;
a run with a ``last.ckpt`` continues from its checkpoint (its last finished epoch, or the step
at which Ctrl-C stopped it); so an interrupted bench continues where it stopped when the same
command is run again.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from learndrop.bench.lockstep import run_lockstep
from learndrop.bench.plan import (
    RunSpec,
    Variant,
    check_same_experiment,
    copy_is_full_training,
    default_budgets,
    parse_budgets,
    parse_methods,
    parse_seeds,
    plan_bench,
    run_config,
    run_state,
    shallow_models,
)
from learndrop.bench.plots import plot_bench
from learndrop.bench.report import BENCH_JSON, BENCH_MD, write_report
from learndrop.bench.trainer_run import TrainerRun
from learndrop.train.config import ConfigError, TrainConfig
from learndrop.train.rundir import RunDir

__all__ = ["DEFAULT_BUDGETS", "prune_checkpoints", "run_bench"]

DEFAULT_BUDGETS = (0.25, 0.5, 0.75)

Log = Callable[[str], None]


def run_bench(
    base: TrainConfig,
    methods: str | Sequence[str],
    seeds: int | Sequence[int],
    out: Path,
    *,
    budgets: str | Sequence[float] | None = None,
    aa_control: bool = True,
    shallow: str | Sequence[str] | None = None,
    variants: Sequence[Variant] = (),
    dry_run: bool = False,
    prune: bool = False,
    log: Log = print,
) -> dict:
    """Train every method, budget run, the A/A control and the optional shallower models' full runs
    into ``out``, seed by seed, each seed's runs in lockstep (:mod:`learndrop.bench.plan`).

    ``seeds``: a count K (seeds ``base.seed`` … ``base.seed + K - 1``) or the seeds themselves.
    ``budgets``: fractions of ``base.epochs`` for full training with the schedule compressed
    (``()`` or ``"none"``: none; ``None``: :data:`DEFAULT_BUDGETS`, less those that make no
    distinct run at so few epochs, each left out with a logged note). ``aa_control``: time full
    training a second time (the noise floor). ``shallow``: the shallower networks (a name, a
    comma-separated list or a sequence) whose full training is the depth check (the shallowest)
    and the depth frontier. ``variants``: methods under labels of their own with options of
    their own (:class:`~learndrop.bench.plan.Variant`). ``prune``: delete each finished run's
    checkpoint and model (:func:`prune_checkpoints`), so that the directory stays small enough
    to commit.

    Returns the bench report (what ``bench.json`` holds); with ``dry_run`` it checks everything
    and returns the plan instead, writing nothing. ``base.overwrite`` redoes every run. Raises
    :class:`ConfigError` (one line) for impossible options and
    :class:`learndrop.train.TrainingInterrupted` on Ctrl-C (every finished epoch is kept).
    """
    out = Path(out)
    methods = parse_methods(methods)
    if budgets is None:
        budgets, notes = default_budgets(base.epochs, DEFAULT_BUDGETS)
        for note in notes:
            log(f"note: {note}")
    else:
        budgets = parse_budgets(budgets)
    seed_list = parse_seeds(seeds, first=base.seed)
    if base.resume:
        raise ConfigError("bench resumes by itself: run the same bench command again")
    if base.stream:  # a stream run has no epochs to compare or resume
        raise ConfigError("--stream is not available in bench; compare streams with "
                          "`learndrop train --stream --method M`, one run per method")
    shallow = shallow_models(shallow)
    if shallow:
        from learndrop.models import list_models

        unknown = next((model for model in shallow if model not in list_models()), None)
        if unknown:  # a variant's model is checked when the variant is made
            raise ConfigError(f"--shallow: unknown model {unknown!r}; see `learndrop models`")
    # Every other network the bench trains in full: none may be the bench's own.
    others = [(model, f"--shallow {model}", "name a shallower network (e.g. resnet20)")
              for model in shallow]
    others += [(v.model, f"--variant {v.label}: model={v.model}",
                f"leave model out for another full run of it ({v.label}=full)")
               for v in variants if v.model]
    for model, given, hint in others:
        if model == base.model:
            raise ConfigError(f"{given} is the bench's own --model; {hint}")
    groups = plan_bench(methods, seed_list, base.epochs, budgets, aa_control, shallow, variants)
    configs = {spec.name: run_config(base, spec, out) for group in groups for spec in group}
    used = {k for c in configs.values() for k in c.method_options}
    unused = sorted(set(base.method_options) - used)
    if unused:  # no option is silently ignored
        methods = ", ".join(dict.fromkeys(c.method for c in configs.values()))
        raise ConfigError(f"--{unused[0].replace('_', '-')} is an option of none of the bench's "
                          f"methods ({methods})")
    for name, config in configs.items():
        config.validate()
        if not base.overwrite:
            check_same_experiment(config, out / name)
    plan = {"methods": methods, "seeds": seed_list, "budgets": budgets,
            "variants": {v.label: {"method": v.method, "options": v.options,
                                   **({"model": v.model} if v.model else {})}
                         for v in variants},
            "aa_control": aa_control, "shallow": list(shallow),
            "groups": [[spec.name for spec in group] for group in groups]}
    if dry_run:
        return dry_run_check(base, groups, configs, out, log)

    from learndrop.train import TrainingInterrupted
    from learndrop.train.steps import StopFlag

    def report(plots: bool = True) -> dict:
        result = write_report(out, base, plan)
        if plots:
            plot_bench(out, result)
        return result

    total = sum(len(g) for g in groups)
    done, result, cleared = 0, None, []
    # One Ctrl-C handler for the whole bench: the first Ctrl-C stops the run training at that
    # moment after its step (each suspended training would otherwise keep its own handler).
    stop = StopFlag()

    def runs_to_train(group: list[RunSpec]) -> list[TrainerRun]:
        """The group's runs that are not finished, each new, resumed or restarted."""
        nonlocal done
        runs = []
        for spec in group:
            config = configs[spec.name]
            state = "new" if base.overwrite else run_state(out / spec.name)
            if state == "done":
                done += 1
                log(f"[{done}/{total}] {spec.name}: done, kept")
                continue
            if copy_is_full_training(spec.method, spec.seed, out, spec.reference):
                if base.overwrite and run_state(out / spec.name) != "new":
                    RunDir(out / spec.name).clear()  # a copy of the run --overwrite replaced
                    cleared.append(spec.name)
                done += 1
                log(f"[{done}/{total}] {spec.name}: not trained: {spec.reference}-s{spec.seed} "
                    "dropped and froze nothing, so this run would be full training of the same "
                    "seed, step for step (the report says so)")
                continue
            if state == "resume":
                config = dataclasses.replace(config, resume=str(out / spec.name))
            elif state == "restart":  # started, stopped before its first checkpoint
                config = dataclasses.replace(config, overwrite=True)
            runs.append(TrainerRun(spec.name, config, log=_prefixed(log, spec.name), stop=stop))
            log(f"{spec.name}: {'resuming' if state == 'resume' else 'training'} "
                f"({config.model}, {config.epochs} epochs)")
        return runs

    def finished(run: TrainerRun) -> None:
        nonlocal done
        done += 1
        s = run.summary
        log(f"[{done}/{total}] {run.name}: test acc {s['final_test_acc']:.4f}, "
            f"{s['train_time_s']:.1f}s ({s['train_cpu_s']:.1f}s CPU), fwd FLOPs saved "
            f"{100 * s['fwd_flops_reduction']:.1f}%, {s['units_dropped']} dropped and "
            f"{s.get('units_frozen', 0)} frozen of {s['units_total']} units")
        if prune:
            prune_checkpoints(out)
        report(plots=False)  # the tables after every run; the plots after every group

    try:
        with stop:
            for g, group in enumerate(groups):
                runs = runs_to_train(group)
                if runs:
                    log(f"lockstep group {g + 1}/{len(groups)}: "
                        f"{', '.join(r.name for r in runs)} (one epoch of each in turn)")
                    run_lockstep(runs, on_done=finished)
                    result = report()
                if stop.set:  # Ctrl-C outside a step: building a group, its report, its plots
                    raise KeyboardInterrupt
    except KeyboardInterrupt as err:
        report()
        raise TrainingInterrupted(
            "bench interrupted; every run is checkpointed where it stopped: run the same "
            "command again to continue") from err
    if result is None or cleared:  # nothing left to train, or a run's files gone since
        result = report()
    log(f"wrote {out / BENCH_JSON}, {out / BENCH_MD}, {out / 'accuracy_vs_flops.png'}, "
        f"{out / 'accuracy_vs_time.png'}")
    return result


def prune_checkpoints(out: Path) -> None:
    """Delete the checkpoint and model of every finished run under ``out``: a finished run is
    kept by its summary and metrics alone (VGG checkpoints weigh 100 MB or more), so that a
    results directory stays small enough to commit."""
    for summary in Path(out).glob("*/summary.json"):
        for name in ("last.ckpt", "model.pt"):
            (summary.parent / name).unlink(missing_ok=True)


def _prefixed(log: Log, name: str) -> Log:
    return lambda text: log(f"  {name}: {text}")


def dry_run_check(base: TrainConfig, groups: list[list[RunSpec]],
                  configs: dict[str, TrainConfig], out: Path, log: Log) -> dict:
    """Load the data, build every method on a meta copy of its model (units, FLOPs, options)
    and take one real training step of the full network; print the plan. Writes nothing."""
    from learndrop.data import load_dataset, make_loaders
    from learndrop.distributed import DistContext
    from learndrop.flops import measure_cost
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
    shape = (base.batch_size, data.in_channels, data.image_size, data.image_size)
    example = torch.zeros(shape, device="meta")
    flops: dict[str, float] = {}  # per model: fwd+bwd FLOPs per sample, for the estimate
    units = 0
    for method_name, model_name in dict.fromkeys((s.method, s.model or base.model)
                                                 for g in groups for s in g):
        config = next(c for c in configs.values()
                      if (c.method, c.model) == (method_name, model_name))
        with torch.device("meta"):  # shapes only: no memory, no compute
            parts = build_parts(config, data, shape, DistContext(0, 1, 0, torch.device("meta")),
                                steps_per_check=steps_per_epoch,
                                total_steps=steps_per_epoch * config.epochs,
                                lr_factor=lambda step: 1.0, dry_run=True)
        model, method = parts.model, parts.method
        cost = measure_cost(model, example)
        flops[config.model] = cost.fwd + cost.bwd
        if config.model == base.model:
            units = max(units, len(method.units))

    # One real step (plus one to time, after the first's one-off costs) of the full network.
    full = build_parts(dataclasses.replace(base, method="full", method_options={}), data, shape,
                       DistContext(0, 1, 0, device), steps_per_check=steps_per_epoch,
                       total_steps=steps_per_epoch * base.epochs, lr_factor=lambda step: 1.0)
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
    full_run_s = step_s * steps_per_epoch * base.epochs
    log(f"one full-network step took {step_s:.3f}s: about {full_run_s / 60:.1f} min per full run "
        "(rough: dropping methods take less; a busy machine takes more)")
    rows, todo_s = [], 0.0
    actions = {"done": "kept (summary.json exists)", "resume": "resume from last.ckpt",
               "restart": "restart (no checkpoint yet)", "new": "train",
               "copy": "not trained (the run it copies made no decision)"}
    for g, group in enumerate(groups):
        log(f"  lockstep group {g + 1}/{len(groups)} (seed {group[0].seed}):")
        for spec in group:
            config = configs[spec.name]
            state = "new" if base.overwrite else run_state(out / spec.name)
            if (state != "done" and not base.overwrite
                    and copy_is_full_training(spec.method, spec.seed, out, spec.reference)):
                state = "copy"
            rows.append({"run": spec.name, "method": spec.method, "seed": spec.seed,
                         "epochs": config.epochs, "group": g + 1, "action": actions[state]})
            if state not in ("done", "copy"):
                todo_s += (step_s * steps_per_epoch * config.epochs
                           * flops[config.model] / flops[base.model])
            log(f"    {spec.name:<28} {config.epochs:>4} epochs  {actions[state]}")
    todo = sum(r["action"] not in (actions["done"], actions["copy"]) for r in rows)
    log(f"dry run OK in {time.perf_counter() - started:.1f}s: {todo} of {len(rows)} runs to do, "
        f"at most about {todo_s / 60:.0f} min of training steps; nothing written")
    return {"dry_run": True, "runs": rows, "step_s": step_s, "steps_per_epoch": steps_per_epoch,
            "estimated_full_run_s": full_run_s, "estimated_s": todo_s}
