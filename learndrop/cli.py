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
from argparse import SUPPRESS

from learndrop.precision import PRECISIONS
from learndrop.train.config import TrainConfig

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _number(text: str) -> int | float:
    """An int, or a float when the text has a decimal point or an exponent."""
    return float(text) if any(c in text for c in ".eE") else int(text)


_PARSERS = {"int": int, "float": float, "str": str, "str | None": str, "int | float": _number,
            "float | None": float, "int | None": int}


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per field of every registered method's options dataclass (help from the
    field's metadata or docstring); a field that several methods share is one flag."""
    from learndrop.methods import METHODS, field_help, option_flag

    flags: dict[str, tuple[dataclasses.Field, list[str], type]] = {}
    for name, cls in METHODS.items():
        for f in dataclasses.fields(cls.options_type) if cls.options_type else ():
            flags.setdefault(option_flag(f), (f, [], cls.options_type))[1].append(name)
    group = parser.add_argument_group(
        "method options (each applies to the methods named in its help; docs/method-card.md)")
    for flag, (f, owners, options) in flags.items():
        # argparse expands %-formats in help: a docstring's "3.5%" must reach it as "3.5%%".
        text = f"{field_help(options, f)} [{', '.join(owners)}; default {f.default}]".replace(
            "%", "%%")
        # The annotation as written (a string under ``from __future__ import annotations``).
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if kind == "bool":
            group.add_argument(flag, dest=f.name, action="store_true", default=SUPPRESS,
                               help=text)
        else:
            group.add_argument(flag, dest=f.name, type=_PARSERS.get(kind, str), default=SUPPRESS,
                               help=text)


def _option_names() -> set[str]:
    from learndrop.methods import METHODS

    return {f.name for cls in METHODS.values()
            for f in (dataclasses.fields(cls.options_type) if cls.options_type else ())}


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Every option of ``learndrop train``. Options left out stay out of the namespace
    (``argparse.SUPPRESS``): :class:`TrainConfig` holds the defaults, and the CLI knows which
    options were given (``--resume`` refuses those that would change the experiment)."""
    from learndrop.methods import METHODS

    d = TrainConfig()

    def arg(group, flag: str, help: str = "", **kwargs) -> None:
        dest = kwargs.pop("dest", flag.lstrip("-").replace("-", "_"))
        default = getattr(d, dest, None)
        shown = "" if default is None or isinstance(default, bool) else f" (default {default})"
        group.add_argument(flag, dest=dest, default=SUPPRESS, help=help + shown, **kwargs)

    what = parser.add_argument_group("what to train")
    arg(what, "--model", "a name from `learndrop models`")
    arg(what, "--dataset", "mnist, fashion-mnist, cifar10, imagenette or folder:PATH "
                           "(a directory or .tar/.tar.gz of train|test/<class>/ images)")
    arg(what, "--epochs", type=int)
    what.add_argument("--out", default=None, help="run directory (default runs/MODEL-DATA-METHOD)")
    data = parser.add_argument_group("data")
    arg(data, "--subset", "class-balanced, seeded training subset of at most this many images "
        "(a smaller training set is used whole; the run's first line says how many); 0 = the "
        "whole training set", type=int)
    arg(data, "--test-subset", "class-balanced, seeded test subset of at most this many images; "
        "0 = the whole test set", type=int)
    arg(data, "--image-size", type=int)
    arg(data, "--data-dir")
    arg(data, "--no-augment", dest="augment", action="store_false")
    opt = parser.add_argument_group("optimisation")
    arg(opt, "--batch-size", type=int)
    arg(opt, "--lr", type=float)
    arg(opt, "--momentum", type=float)
    arg(opt, "--weight-decay", type=float)
    arg(opt, "--warmup-epochs", "learning-rate warm-up", type=float)
    arg(opt, "--lr-decay-fraction", "share of the run in the final cosine decay; below 1 the "
                                    "rate holds at its peak from the warm-up's end until the "
                                    "decay (warmup-stable-decay)", type=float)
    arg(opt, "--seed", type=int)
    arg(opt, "--device", "auto, cpu or cuda")
    arg(opt, "--precision", "auto: bf16 autocast where the hardware has native bf16 (CUDA with "
                            "bf16, CPUs with AVX512_BF16 or AMX), fp32 elsewhere; channels_last "
                            "always", choices=PRECISIONS)
    start = parser.add_argument_group("starting point")
    arg(start, "--weights", "a local state dict to start from")
    arg(start, "--pretrained", "torchvision's ImageNet weights (needs the internet)",
        action="store_true")
    arg(start, "--replace-head", "a new classifier head for N classes", type=int, metavar="N")
    method = parser.add_argument_group("method")
    arg(method, "--method", ", ".join(METHODS))
    arg(method, "--units", "comma-separated module names to use as units (default: found)")
    add_method_arguments(parser)
    run = parser.add_argument_group("run control")
    arg(run, "--resume", "a run directory or its last.ckpt; continues with its configuration "
                         "(--epochs N extends it while its learning rate is not yet zero)",
        metavar="CKPT")
    arg(run, "--overwrite", action="store_true")
    arg(run, "--quiet", "log lines instead of progress bars", action="store_true")
    arg(run, "--compile", "torch.compile the model (rebuilt once after each drop)",
        action="store_true")
    arg(run, "--tensorboard", "also write the metrics as TensorBoard scalars to "
                              "RUN_DIR/tensorboard (needs learndrop[tensorboard])",
        action="store_true")
    arg(run, "--no-plots", dest="plots", action="store_false")
    arg(run, "--eval-batch-size", "images per test-set batch: memory only, the accuracy does "
                                  "not depend on it", type=int, metavar="N")
    arg(run, "--eval-around-drops", "also test just before and right after every drop (a "
                                    "fade: its start and its end), outside the training time; "
                                    "the run trains the same", action="store_true")
    par = parser.add_argument_group("data parallel (docs/scaling.md)")
    par.add_argument("--nproc", type=int, default=1, metavar="N",
                     help="train in N processes with DistributedDataParallel (re-runs this "
                          "command under torchrun; --batch-size is the global batch)")
    arg(par, "--dist-timeout", "how long a process waits for the others before failing",
        type=float, metavar="SECONDS")
    add_stream_arguments(parser, arg)


def add_stream_arguments(parser: argparse.ArgumentParser, arg) -> None:
    """``--stream`` and its options (docs/streaming-and-finetuning.md)."""
    group = parser.add_argument_group("streaming (online training: each batch used once)")
    arg(group, "--stream", "train on one pass of a stream of batches instead of epochs",
        action="store_true")
    arg(group, "--stream-order", choices=("dataset", "class-incremental"))
    arg(group, "--stream-length", "stop after this many batches (default: one pass of the data)",
        type=int, metavar="BATCHES")
    arg(group, "--classes-per-stage", "class-incremental: classes that arrive together",
        type=int)
    arg(group, "--steps-per-check", "steps between score checks and drop decisions", type=int,
        metavar="N")
    arg(group, "--eval-every", "steps between test-set evaluations", type=int, metavar="M")
    arg(group, "--warmup-steps", "linear LR warm-up steps (default: --steps-per-check)", type=int)
    arg(group, "--stream-schedule", "LR after warm-up; cosine needs a known length",
        choices=("constant", "cosine"))


def given_fields(args: argparse.Namespace) -> set[str]:
    """The :class:`TrainConfig` fields whose options were given on the command line."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k for k in vars(args) if k in names}
    if any(getattr(args, k, None) is not None for k in _option_names()):
        given.add("method_options")
    return given


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of the given options (the others keep its defaults)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
              if hasattr(args, f.name)}
    if "units" in values:
        values["units"] = values["units"].split(",") if values["units"] else None
    values["method_options"] = {k: getattr(args, k) for k in sorted(_option_names())
                                if getattr(args, k, None) is not None}
    return TrainConfig(**values)


def cmd_train(args: argparse.Namespace) -> int:
    from learndrop.distributed import env_world_size, launch
    from learndrop.train import ConfigError, train

    nproc = getattr(args, "nproc", 1)
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    if getattr(args, "stream", False) and (nproc > 1 or env_world_size() > 1):
        raise ConfigError("--stream runs in one process; leave out --nproc and torchrun")
    config, given = config_from_args(args), given_fields(args)
    config.check_options_apply(given)  # typed, even at a default's value
    if nproc > 1 and "LOCAL_RANK" not in os.environ:  # not yet under torchrun: start it
        # Checked once here: each process would say it again, and torchrun after them.
        config.validate()
        return launch(getattr(args, "argv", sys.argv[1:]), nproc)
    if getattr(args, "stream", False):
        from learndrop.train.stream import train_stream

        summary = train_stream(config, log=print)
        summary["epochs"] = None  # one pass: no epochs
    else:
        summary = train(config, log=print, given=given)
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
    bench.add_argument("--shallow", default=None, metavar="MODEL[,MODEL...]",
                       help="also train these shallower models in full: the check that depth "
                            "matters in this regime (the shallowest) and the depth frontier, "
                            "what training a smaller network costs and reaches")
    bench.add_argument("--variant", action="append", default=[], metavar="LABEL=METHOD[:K=V,...]",
                       help="also run METHOD under the label LABEL with these options of its own "
                            "(repeatable), e.g. learndrop-paper=learndrop:normalization=per-unit,"
                            "change_threshold=0.5; a copy names the learndrop run or variant it "
                            "copies: rd-x=random-drop:reference=x; model= trains another network "
                            "in full, a point of the depth frontier: r20-b=full:model=resnet20")
    bench.add_argument("--dry-run", action="store_true",
                       help="check the configuration, data and one training step, print the "
                            "plan, write nothing")
    # Set by the bench per run: given on the command line they would be silently overridden.
    p.set_defaults(func=cmd_bench, method=None, resume=None, reference=None)
    return p


def cmd_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from learndrop.bench import BENCH_MD, parse_variant, run_bench
    from learndrop.train import ConfigError

    for flag in ("method", "resume", "reference"):
        if getattr(args, flag) is not None:
            hint = {"method": "use --methods", "resume": "run the same bench command again",
                    "reference": "each seed's learndrop run is the reference (a variant "
                                  "names its own: --variant rd-x=random-drop:reference=x)"}[flag]
            raise ConfigError(f"--{flag} is not a bench option: {hint}")
    if args.nproc != 1:
        raise ConfigError("bench runs every run in this one process: leave out --nproc "
                          "(on several GPUs, use `learndrop train --nproc N` per method)")
    variants = [parse_variant(text) for text in args.variant]  # fail before anything runs
    args.method = "full"
    config = config_from_args(args)
    if not config.stream:  # which bench refuses first, and says why
        config.check_options_apply(given_fields(args))
    out = Path(args.out or f"runs/bench-{config.model}-"
               f"{config.dataset.replace('folder:', '').replace('/', '_').strip('._')}")
    config.out = None
    report = run_bench(config, args.methods, args.seeds, out, budgets=args.budgets,
                       aa_control=args.aa_control, shallow=args.shallow, variants=variants,
                       dry_run=args.dry_run, log=print)
    if not args.dry_run:
        print((out / BENCH_MD).read_text())
    return 0 if report else 1


def cmd_units(args: argparse.Namespace) -> int:
    import torch

    from learndrop.flops import measure_cost, unit_costs
    from learndrop.models import create_model
    from learndrop.train import ConfigError
    from learndrop.units import discover

    for flag, value, least in (("--image-size", args.image_size, 8),
                               ("--in-channels", args.in_channels, 1),
                               ("--num-classes", args.num_classes, 2)):
        if value < least:
            raise ConfigError(f"{flag} must be >= {least}, got {value}")
    with torch.device("meta"):  # shapes only: even ResNet-152 costs nothing
        model = create_model(args.model, num_classes=args.num_classes,
                             in_channels=args.in_channels)
    x = torch.zeros(2, args.in_channels, args.image_size, args.image_size)
    found = discover(model, x, args.units.split(",") if args.units else None)
    units = found.units
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
    for name, why in found.rejected.items():
        print(f"not droppable: {name} {why}")
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
