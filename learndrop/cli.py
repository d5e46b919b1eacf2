"""``learndrop`` command line: parses arguments and calls the trainer, the bench or the core.

Every failure the user can fix ends in one line on stderr and a non-zero exit; set
``LEARNDROP_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from learndrop.policy import DropPolicy
from learndrop.train.config import TrainConfig

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _drops_per_check(text: str) -> int | float:
    return float(text) if any(c in text for c in ".eE") else int(text)


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per DropPolicy field, with its documented default."""
    group = parser.add_argument_group("Learn&Drop policy (see docs/method-card.md)")
    for f in dataclasses.fields(DropPolicy):
        kind = _drops_per_check if f.name == "max_drops_per_check" else f.type
        kind = {"int": int, "float": float}.get(kind, kind)
        group.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=None,
                           dest=f"policy_{f.name}", help=f"default {f.default}")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    what = parser.add_argument_group("what to train")
    what.add_argument("--model", default=d.model, help="a name from `learndrop models`")
    what.add_argument("--dataset", default=d.dataset,
                      help="mnist, fashion-mnist, cifar10, imagenette or folder:PATH "
                           "(a directory or .tar/.tar.gz of train|test/<class>/ images)")
    what.add_argument("--epochs", type=int, default=d.epochs)
    what.add_argument("--out", default=None, help="run directory (default runs/MODEL-DATA-METHOD)")
    data = parser.add_argument_group("data")
    data.add_argument("--subset", type=int, default=d.subset,
                      help="class-balanced, seeded training subset; 0 = the whole training set")
    data.add_argument("--test-subset", type=int, default=None)
    data.add_argument("--image-size", type=int, default=None)
    data.add_argument("--data-dir", default=None)
    data.add_argument("--no-augment", dest="augment", action="store_false")
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--batch-size", type=int, default=d.batch_size)
    opt.add_argument("--lr", type=float, default=d.lr)
    opt.add_argument("--momentum", type=float, default=d.momentum)
    opt.add_argument("--weight-decay", type=float, default=d.weight_decay)
    opt.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    opt.add_argument("--seed", type=int, default=d.seed)
    opt.add_argument("--device", default=d.device, help="auto, cpu or cuda")
    start = parser.add_argument_group("starting point")
    start.add_argument("--weights", default=None, help="a local state dict to start from")
    start.add_argument("--pretrained", action="store_true",
                       help="torchvision's ImageNet weights (needs the internet)")
    start.add_argument("--replace-head", type=int, default=None, metavar="N",
                       help="a new classifier head for N classes")
    method = parser.add_argument_group("method")
    method.add_argument("--method", default=d.method,
                        help="learndrop, full, freeze, freezeout, stochastic-depth, random-drop, "
                             "slim-from-scratch")
    method.add_argument("--units", default=None,
                        help="comma-separated module names to use as units (default: found)")
    method.add_argument("--reference", default=None,
                        help="run directory of the learndrop run that random-drop and "
                             "slim-from-scratch copy")
    method.add_argument("--freezeout-t0", type=float, default=d.freezeout_t0)
    method.add_argument("--drop-rate", type=float, default=d.drop_rate,
                        help="stochastic depth: drop probability of the last unit")
    add_policy_arguments(parser)
    run = parser.add_argument_group("run control")
    run.add_argument("--resume", default=None, metavar="CKPT",
                     help="a run directory or its last.ckpt; continues with its configuration")
    run.add_argument("--overwrite", action="store_true")
    run.add_argument("--quiet", action="store_true", help="log lines instead of progress bars")
    run.add_argument("--compile", action="store_true",
                     help="torch.compile the model (rebuilt once after each drop)")
    run.add_argument("--tensorboard", action="store_true",
                     help="also write the metrics as TensorBoard scalars to RUN_DIR/tensorboard "
                          "(needs learndrop[tensorboard])")
    run.add_argument("--no-plots", dest="plots", action="store_false")
    par = parser.add_argument_group("data parallel (docs/scaling.md)")
    par.add_argument("--nproc", type=int, default=1, metavar="N",
                     help="train in N processes with DistributedDataParallel (re-runs this "
                          "command under torchrun; --batch-size is the global batch)")
    par.add_argument("--dist-timeout", type=float, default=d.dist_timeout, metavar="SECONDS",
                     help="how long a process waits for the others before failing")
    add_stream_arguments(parser)


def add_stream_arguments(parser: argparse.ArgumentParser) -> None:
    """``--stream`` and its options (docs/streaming-and-finetuning.md)."""
    d = TrainConfig()
    group = parser.add_argument_group("streaming (online training: each batch used once)")
    group.add_argument("--stream", action="store_true",
                       help="train on one pass of a stream of batches instead of epochs")
    group.add_argument("--stream-order", default=d.stream_order,
                       choices=("dataset", "class-incremental"))
    group.add_argument("--stream-length", type=int, default=None, metavar="BATCHES",
                       help="stop after this many batches (default: one pass of the data)")
    group.add_argument("--classes-per-stage", type=int, default=d.classes_per_stage,
                       help="class-incremental: classes that arrive together")
    group.add_argument("--check-every", type=int, default=d.check_every, metavar="N",
                       help="steps between score checks and drop decisions")
    group.add_argument("--eval-every", type=int, default=d.eval_every, metavar="M",
                       help="steps between test-set evaluations")
    group.add_argument("--warmup-steps", type=int, default=None,
                       help="linear LR warm-up steps (default: --check-every)")
    group.add_argument("--stream-schedule", default=d.stream_schedule,
                       choices=("constant", "cosine"),
                       help="LR after warm-up; cosine needs a known length")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
              if hasattr(args, f.name)}
    values["subset"] = args.subset or None
    values["units"] = args.units.split(",") if args.units else None
    values["policy"] = {f.name: getattr(args, f"policy_{f.name}")
                        for f in dataclasses.fields(DropPolicy)
                        if getattr(args, f"policy_{f.name}") is not None}
    return TrainConfig(**values)


def cmd_train(args: argparse.Namespace) -> int:
    from learndrop.distributed import env_world_size, launch
    from learndrop.train import ConfigError, train

    nproc = getattr(args, "nproc", 1)
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    if getattr(args, "stream", False) and (nproc > 1 or env_world_size() > 1):
        raise ConfigError("--stream runs in one process; leave out --nproc and torchrun")
    if nproc > 1 and "LOCAL_RANK" not in os.environ:  # not yet under torchrun: start it
        return launch(getattr(args, "argv", sys.argv[1:]), nproc)
    if getattr(args, "stream", False):
        from learndrop.train.stream import train_stream

        summary = train_stream(config_from_args(args), log=print)
        summary["epochs"] = None  # one pass: no epochs
    else:
        summary = train(config_from_args(args), log=print)
    keys = ("method", "model", "dataset", "epochs", "train_time_s", "final_test_acc",
            "best_test_acc", "fwd_flops_reduction", "bwd_flops_reduction", "params_initial",
            "params_final", "units_total", "units_dropped")
    if os.environ.get("RANK", "0") == "0":  # under torchrun: once, not once per process
        print(json.dumps({k: summary[k] for k in keys}, indent=2))
    return 0


def add_bench_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``learndrop bench`` (every ``learndrop train`` option, plus the bench's own)."""
    p = subparsers.add_parser(
        "bench", help="compare training methods with full training and its budget frontier",
        description="Train every method of --methods, full training at fractions of the epochs "
                    "(--budgets) and full training again (the A/A control) on the same model, "
                    "data and settings, each seed's runs in lockstep (one epoch of each in "
                    "turn), and report accuracy, FLOPs, wall-clock and CPU time against full "
                    "training and its budget frontier (bench.json, bench.md, plots). "
                    "Resumable: run the same command again to continue. See docs/bench.md.")
    add_train_arguments(p)
    bench = p.add_argument_group("bench")
    bench.add_argument("--methods", default="full,learndrop,freezeout,stochastic-depth,random-drop",
                       help="comma-separated methods (full is always included; default "
                            "%(default)s)")
    bench.add_argument("--seeds", type=int, default=1, metavar="K",
                       help="seeds --seed .. --seed+K-1, one after another (default 1)")
    bench.add_argument("--budgets", default=None, metavar="F,F,...",
                       help="full training at these fractions of --epochs (rounded half up), "
                            "schedule compressed: the budget frontier; 'none' for none (default "
                            "0.25,0.5,0.75, less those that round to the same epochs)")
    bench.add_argument("--no-aa-control", dest="aa_control", action="store_false",
                       help="leave out the A/A control (full training timed twice: the noise "
                            "floor of every time ratio)")
    bench.add_argument("--shallow", default=None, metavar="MODEL",
                       help="also train this shallower model in full: the check that depth "
                            "matters in this regime")
    bench.add_argument("--dry-run", action="store_true",
                       help="check the configuration, data and one training step, print the "
                            "plan, write nothing")
    # Set by the bench per run: given on the command line they would be silently overridden.
    p.set_defaults(func=cmd_bench, method=None, resume=None, reference=None)
    return p


def cmd_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from learndrop.bench import BENCH_MD, run_bench
    from learndrop.train import ConfigError

    for flag in ("method", "resume", "reference"):
        if getattr(args, flag) is not None:
            hint = {"method": "use --methods", "resume": "run the same bench command again",
                    "reference": "each seed's learndrop run is the reference"}[flag]
            raise ConfigError(f"--{flag} is not a bench option: {hint}")
    if args.nproc != 1:
        raise ConfigError("bench runs every run in this one process: leave out --nproc "
                          "(on several GPUs, use `learndrop train --nproc N` per method)")
    args.method = "full"
    config = config_from_args(args)
    out = Path(args.out or f"runs/bench-{config.model}-"
               f"{config.dataset.replace('folder:', '').replace('/', '_').strip('._')}")
    config.out = None
    report = run_bench(config, args.methods, args.seeds, out, budgets=args.budgets,
                       aa_control=args.aa_control, shallow=args.shallow, dry_run=args.dry_run,
                       log=print)
    if not args.dry_run:
        print((out / BENCH_MD).read_text())
    return 0 if report else 1


def cmd_units(args: argparse.Namespace) -> int:
    import torch

    from learndrop.flops import measure_cost, unit_costs
    from learndrop.models import create_model
    from learndrop.units import find_units

    with torch.device("meta"):  # shapes only: even ResNet-152 costs nothing
        model = create_model(args.model, num_classes=args.num_classes,
                             in_channels=args.in_channels)
    x = torch.zeros(2, args.in_channels, args.image_size, args.image_size)
    units = find_units(model, x, args.units.split(",") if args.units else None)
    full = measure_cost(model, x).fwd
    shares = {name: cost.fwd for name, cost in unit_costs(model, x, units).items()}
    total_params = sum(p.numel() for p in model.parameters())
    print(f"{args.model}: {len(units)} droppable units, {total_params:,} parameters, "
          f"{full / 1e6:.1f} forward MFLOPs per {args.image_size}x{args.image_size} sample")
    print(f"{'unit':<24}{'kind':<10}{'params':>12}{'fwd FLOPs':>11}")
    for u in units:
        print(f"{u.name:<24}{u.kind:<10}{u.num_parameters(model):>12,}"
              f"{100 * shares[u.name] / full:>10.2f}%")
    print(f"{'all units':<34}{sum(u.num_parameters(model) for u in units):>12,}"
          f"{100 * sum(shares.values()) / full:>10.2f}%")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from learndrop.models import list_models

    print("\n".join(list_models()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="learndrop",
        description="Train CNNs faster by dropping the layers that have stopped learning.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train one network with one method")
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("units", help="list a model's droppable units")
    p.add_argument("model")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--units", default=None, help="comma-separated module names instead")
    p.set_defaults(func=cmd_units)
    p = sub.add_parser("models", help="list the model names")
    p.set_defaults(func=cmd_models)
    add_bench_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for --nproc's re-run
    if os.environ.get("LEARNDROP_DEBUG"):
        return args.func(args)
    from learndrop.train.trainer import TrainingInterrupted

    try:
        return args.func(args)
    except TrainingInterrupted as err:
        print(err, file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `learndrop units resnet152 | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as err:  # noqa: BLE001 - the one-line contract of the CLI
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"learndrop: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
