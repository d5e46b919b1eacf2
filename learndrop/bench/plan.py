"""The bench's plan: which runs, with which configuration, in which lockstep group.

A bench of methods M, seeds S and budgets B has, per seed:

- one run per method (``<method>-s<seed>``; ``full`` is always among them);
- one full-training run per budget fraction f (``full-b<f>-s<seed>``): ``budget_epochs(f, E)``
  epochs, warm-up scaled by the same factor, the cosine decay (the last ``lr_decay_fraction``
  of the run) to zero at its own end;
- the A/A control (``full-aa-s<seed>``): full training a second time, same everything;
- optionally full-training runs of shallower models (``full-<model>-s<seed>``): the depth check
  (the shallowest) and the depth frontier;
- one run per *variant* (``<label>-s<seed>``): a method under a label of its own with options of
  its own, e.g. Learn&Drop with the paper's rule beside Learn&Drop with its defaults
  (:class:`Variant`, ``learndrop bench --variant``).

Runs of a seed are trained in lockstep (:mod:`learndrop.bench.lockstep`): group 1 holds every
run that needs nothing else; group 2 the runs that copy a Learn&Drop run of that seed
(random-drop, slim-from-scratch, and their variants, which name the ``learndrop`` variant they
copy: they need it finished) together with the A/A control, whose full run is then timed under
the same conditions as they are (their time ratios are taken against it). Without such runs the
A/A control joins group 1.
"""

from __future__ import annotations

import dataclasses
import json
import math
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from learndrop.methods import METHODS
from learndrop.precision import resolve_precision
from learndrop.train.builder import file_sha256, pick_device
from learndrop.train.config import (
    RESOLVED_OPTIONS,
    ConfigError,
    TrainConfig,
    recorded_defaults,
    same_value,
)

__all__ = ["NEEDS_REFERENCE", "REFERENCE_METHOD", "RunSpec", "Variant", "budget_epochs",
           "check_same_experiment", "copy_is_full_training", "default_budgets", "parse_budgets",
           "parse_label", "parse_methods", "parse_seeds", "parse_variant", "plan_bench",
           "run_config", "run_state", "shallow_models"]

REFERENCE_METHOD = "learndrop"
# Methods that copy the drops of the Learn&Drop run of the same seed (their ``reference``).
NEEDS_REFERENCE = tuple(name for name, cls in METHODS.items() if cls.needs_reference)
AA_LABEL = "full-aa"
_BUDGET_LABEL = re.compile(r"^full-b(?P<budget>\d*\.?\d+)$")
_VARIANT_LABEL = re.compile(r"^[a-z0-9][a-z0-9-]*$")
RUN_DIR = re.compile(r"^(?P<label>.+)-s(?P<seed>\d+)$")
# Config fields that may differ between an existing run directory and the bench's plan without
# making its result a different experiment (where and how it reports, where it ran). The
# precision is compared by what it resolved to (:func:`_precision_ran`), not by what was asked.
# The starting weights likewise: by their digest where the run recorded one, else by path.
_IGNORED_FIELDS = {"out", "resume", "overwrite", "quiet", "plots", "device", "tensorboard",
                   "eval_batch_size", "eval_around_drops", "reference", "precision", "weights",
                   "weights_sha256"}


@dataclass(frozen=True)
class RunSpec:
    """One run of the bench.

    ``role`` is ``"method"``, ``"budget"``, ``"aa"`` (the A/A control) or ``"shallow"`` (the
    depth check); ``budget`` the fraction of the bench's epochs it was planned at (1.0 unless a
    budget run); ``model`` overrides the bench's model (the shallow run); ``group`` its lockstep
    group within the seed (1 or 2).
    """

    label: str
    seed: int
    method: str
    role: str
    budget: float = 1.0
    epochs: int | None = None
    model: str | None = None
    group: int = 1
    options: tuple[tuple[str, object], ...] = ()  # a variant's own method options

    @property
    def reference(self) -> str | None:
        """The label of the run this one copies (``learndrop``, or a variant's ``reference``
        option), for the methods that copy one; else ``None``."""
        if self.method not in NEEDS_REFERENCE:
            return None
        return str(dict(self.options).get("reference", REFERENCE_METHOD))

    @property
    def name(self) -> str:
        """The run directory's name, ``<label>-s<seed>``."""
        return f"{self.label}-s{self.seed}"


@dataclass(frozen=True)
class Variant:
    """A method run under a label of its own with method options of its own, which take
    precedence over the bench's (``Variant("learndrop-paper", "learndrop",
    {"normalization": "per-unit", "change_threshold": 0.5})``).

    ``model``: another network than the bench's, for full training only
    (``Variant("r20-b", "full", model="resnet20")``): a shallower network trained in full
    under a label of its own, a point of the depth frontier like ``--shallow``'s runs. Its use:
    the same network trained again on another machine, where ``full-<model>`` of that seed is
    taken by the first machine's run.

    Raises :class:`ConfigError` for a label that is a method's name, could be read as another
    role's (``full-...``) or is not lower-case letters, digits and dashes; for an unknown method,
    a method that copies another run (random-drop, slim-from-scratch) without
    ``reference=LABEL``, the label of the Learn&Drop run or variant it copies (e.g.
    ``rd-cap05=random-drop:reference=cap05``: chance against that variant's scores), and for
    options that are not the method's or are invalid. :func:`plan_bench` checks that the
    reference is a run of the bench.
    """

    label: str
    method: str
    options: dict = dataclasses.field(default_factory=dict)
    model: str | None = None

    def __post_init__(self) -> None:
        label, method = self.label, self.method
        if not _VARIANT_LABEL.match(label):
            raise ConfigError(f"--variant label {label!r}: use lower-case letters, digits and "
                              "dashes, e.g. learndrop-paper")
        if label in METHODS or label.startswith("full"):  # full-aa, full-b..., full-<model>
            raise ConfigError(f"--variant label {label!r} is taken (a method's name or a role "
                              "of the bench's own runs); choose another, e.g. learndrop-paper")
        if method not in METHODS:
            raise ConfigError(f"--variant {label}: unknown method {method!r}; choose from "
                              f"{', '.join(sorted(METHODS))}")
        if self.model is not None:
            from learndrop.models import list_models

            if method != "full":
                raise ConfigError(f"--variant {label}: model= trains another network in full (a "
                                  f"point of the depth frontier), not with {method}; write "
                                  f"{label}=full:model={self.model}")
            if self.model not in list_models():
                raise ConfigError(f"--variant {label}: unknown model {self.model!r}; see "
                                  "`learndrop models`")
        if method in NEEDS_REFERENCE:
            reference = self.options.get("reference")
            if not isinstance(reference, str) or not _VARIANT_LABEL.match(reference):
                raise ConfigError(f"--variant {label}: {method} copies another run of the same "
                                  "seed: name its label, e.g. "
                                  f"{label}={method}:reference=learndrop (or a variant's label)")
            if reference == label:
                raise ConfigError(f"--variant {label}: reference={reference} names the variant "
                                  "itself; name the Learn&Drop run it copies")
        option_type = METHODS[method].options_type
        fields = {f.name for f in dataclasses.fields(option_type)} if option_type else set()
        unknown = sorted(set(self.options) - fields)
        if unknown:
            raise ConfigError(f"--variant {label}: {unknown[0]!r} is not an option of {method} "
                              f"({', '.join(sorted(fields)) or 'it has none'})")
        if option_type:
            switches = {f.name for f in dataclasses.fields(option_type)
                        if isinstance(f.default, bool)}
            for key in sorted(switches & set(self.options)):
                if not isinstance(self.options[key], bool):  # bool("false") would be True
                    raise ConfigError(f"--variant {label}: {key} takes true or false, got "
                                      f"{self.options[key]!r}")
            try:
                option_type(**self.options)  # validated now, not after hours of other runs
            except (ValueError, TypeError) as err:
                raise ConfigError(f"--variant {label}: {err}") from err


def _option_value(text: str) -> object:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return text


def parse_variant(text: str) -> Variant:
    """A :class:`Variant` from ``LABEL=METHOD[:KEY=VALUE,KEY=VALUE...]``, e.g.
    ``learndrop-paper=learndrop:normalization=per-unit,change_threshold=0.5,cost_batches=0``
    (option names as in :class:`~learndrop.policy.DropPolicy` etc.; values are read as
    ``true``/``false``, else an integer, else a number, ``inf`` included, else text; an option
    that is a switch takes only ``true`` or ``false``). ``model=NAME`` is not a method option
    but the variant's network (:class:`Variant`'s ``model``: ``r20-b=full:model=resnet20``).
    Raises :class:`ConfigError`."""
    label, eq, rest = text.partition("=")
    method, _, options_text = rest.partition(":")
    if not eq or not label.strip() or not method.strip():
        raise ConfigError(f"--variant {text!r}: write LABEL=METHOD[:KEY=VALUE,...], e.g. "
                          "learndrop-paper=learndrop:normalization=per-unit")
    options = {}
    for item in filter(None, (i.strip() for i in options_text.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise ConfigError(f"--variant {label}: option {item!r} is not KEY=VALUE")
        if key in options:
            raise ConfigError(f"--variant {label}: option {key!r} is given twice")
        # A reference is a run's label, a model a network's name, whatever they look like
        # ("2" is a label, not a number).
        options[key] = (value.strip() if key in ("reference", "model")
                        else _option_value(value.strip()))
    model = options.pop("model", None)
    return Variant(label.strip(), method.strip(), options, model)


def parse_label(label: str) -> tuple[str, float | None]:
    """``(role, budget)`` of a run directory's label (``budget`` only for budget runs)."""
    if label == AA_LABEL:
        return "aa", None
    if match := _BUDGET_LABEL.match(label):
        return "budget", float(match["budget"])
    if label.startswith("full-") and label not in METHODS:  # full-rewound is a method
        return "shallow", None
    return "method", None


def parse_methods(text: str | Sequence[str]) -> list[str]:
    """Method names from ``"full,learndrop,..."``; ``full`` (the reference of every ratio) and,
    when random-drop or slim-from-scratch is asked for, ``learndrop`` are added when missing.

    Raises :class:`ConfigError` for an unknown or repeated name.
    """
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


def parse_seeds(seeds: int | str | Sequence[int], first: int = 0) -> list[int]:
    """Seeds from a count (``3``: ``first``, ``first + 1``, ``first + 2``), a comma-separated
    list (``"0,1,2"``) or a sequence of integers.

    Raises :class:`ConfigError` for a count below 1, a non-integer, a negative or a repeated
    seed, or an empty list.
    """
    if isinstance(seeds, bool):
        raise ConfigError(f"--seeds must be a count or distinct integers >= 0, got {seeds!r}")
    if isinstance(seeds, int):
        if seeds < 1:
            raise ConfigError(f"--seeds must be >= 1, got {seeds}")
        return [first + i for i in range(seeds)]
    try:
        items = seeds.split(",") if isinstance(seeds, str) else list(seeds)
        if any(isinstance(s, bool) for s in items):
            raise TypeError("a bool is not a seed")
        seed_list = [int(s) if isinstance(s, str) else operator.index(s)
                     for s in items if not isinstance(s, str) or s.strip()]
    except (TypeError, ValueError):
        seed_list = []
    if not seed_list or len(set(seed_list)) < len(seed_list) or min(seed_list) < 0:
        raise ConfigError(f"--seeds must be distinct integers >= 0 like 0,1,2, got {seeds!r}")
    return seed_list


def parse_budgets(text: str | Sequence[float] | None) -> list[float]:
    """Budget fractions from ``"0.25,0.5,0.75"`` (``"none"`` or empty: no budget runs), sorted.

    Raises :class:`ConfigError` for a value outside (0, 1), a repeated one or a non-number.
    """
    if text is None:
        return []
    if isinstance(text, str):
        if text.strip().lower() in ("", "none"):
            return []
        try:
            values = [float(v) for v in text.split(",") if v.strip()]
        except ValueError as err:
            raise ConfigError(f"--budgets must be fractions like 0.25,0.5,0.75 (or none), "
                              f"got {text!r}") from err
    else:
        values = [float(v) for v in text]
    for v in values:
        if not (math.isfinite(v) and 0 < v < 1):
            raise ConfigError(f"--budgets: {v:g} is not a fraction of the epochs in (0, 1); "
                              "full training (1.0) is always run")
    if len(set(values)) < len(values):
        raise ConfigError("--budgets names a fraction twice")
    return sorted(values)


def budget_epochs(fraction: float, epochs: int) -> int:
    """Epochs of a budget run: ``fraction * epochs`` rounded half up (0.25 of 10 epochs: 3;
    0.75 of 10: 8)."""
    return math.floor(fraction * epochs + 0.5)


def default_budgets(epochs: int, fractions: Sequence[float] = (0.25, 0.5, 0.75)
                    ) -> tuple[list[float], list[str]]:
    """The default budgets that make distinct runs at ``epochs``, and a note for each left out
    (one that rounds to no epoch, to full training, or to the epochs of a smaller one)."""
    kept, notes, seen = [], [], {}
    for f in fractions:
        e = budget_epochs(f, epochs)
        if 1 <= e < epochs and e not in seen:
            kept.append(f)
            seen[e] = f
        else:
            why = (f"the same {e} epochs as budget {seen[e]:g}" if e in seen
                   else f"{e} epochs, {'none' if e < 1 else 'full training'}")
            notes.append(f"budget {f:g} of {epochs} epochs left out: it rounds to {why}")
    return kept, notes


def _check_budgets(budgets: Sequence[float], epochs: int) -> None:
    seen: dict[int, float] = {}
    for f in budgets:
        e = budget_epochs(f, epochs)
        if e < 1 or e >= epochs:
            raise ConfigError(f"--budgets {f:g} of {epochs} epochs rounds to {e} epochs, "
                              f"{'none' if e < 1 else 'full training'}; use more --epochs or "
                              "another fraction")
        if e in seen:
            raise ConfigError(f"--budgets {seen[e]:g} and {f:g} both round to {e} of {epochs} "
                              "epochs; use more --epochs or fewer budgets")
        seen[e] = f


def shallow_models(shallow: str | Sequence[str] | None) -> tuple[str, ...]:
    """The shallower networks of a bench: ``None`` or ``""`` none, a name, a comma-separated
    list (``"resnet20,resnet32"``) or a sequence of names; in order, each once."""
    if shallow is None:
        return ()
    names = shallow.split(",") if isinstance(shallow, str) else list(shallow)
    return tuple(dict.fromkeys(n.strip() for n in names if n.strip()))


def plan_bench(methods: Sequence[str], seeds: Sequence[int], epochs: int,
               budgets: Sequence[float] = (), aa_control: bool = True,
               shallow: str | Sequence[str] | None = None, variants: Sequence[Variant] = ()
               ) -> list[list[RunSpec]]:
    """The lockstep groups of the bench, in the order they run: seed by seed (so that a stopped
    bench has complete seeds), group 1 then group 2 (see the module docstring).

    Within a group the runs' order is rotated by one per seed, so that with several seeds no run
    always takes the first turn of a lockstep round. Raises :class:`ConfigError` for budgets that
    round to no epoch, to full training, or to the same number of epochs. ``shallow``: the
    shallower networks (one name or several) whose full training joins group 1 (the depth
    check and the depth frontier).
    """
    _check_budgets(budgets, epochs)
    shallow = shallow_models(shallow)
    labels = [v.label for v in variants]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ConfigError(f"--variant label {twice[0]!r} is given twice")
    # A copy needs its reference trained in group 1 of the same seed: learndrop, or a variant
    # of it.
    by_label = {v.label: v for v in variants}
    references = {v.label for v in variants if v.method == REFERENCE_METHOD}
    references |= {REFERENCE_METHOD} & set(methods)
    for v in variants:
        reference = v.options.get("reference")
        if v.method not in NEEDS_REFERENCE or reference in references:
            continue
        if reference in by_label:
            why = (f"a {by_label[reference].method} variant; a copy takes the drops and "
                   "freezes of a Learn&Drop run")
        elif reference == REFERENCE_METHOD:
            why = "not in --methods; add learndrop to --methods"
        else:
            why = "not a run of this bench; give that variant too (a finished run is kept)"
        raise ConfigError(f"--variant {v.label}: reference={reference} is {why}; it can name "
                          f"{' or '.join(sorted(references)) or 'a learndrop variant'}")
    def variant_spec(v: Variant, seed: int, group: int) -> RunSpec:
        return RunSpec(v.label, seed, v.method, "shallow" if v.model else "method",
                       epochs=epochs, model=v.model, group=group,
                       options=tuple(sorted(v.options.items())))

    groups = []
    for i, seed in enumerate(seeds):
        first = [RunSpec(m, seed, m, "method", epochs=epochs)
                 for m in methods if m not in NEEDS_REFERENCE]
        first += [variant_spec(v, seed, 1) for v in variants if v.method not in NEEDS_REFERENCE]
        first += [RunSpec(f"full-b{f:g}", seed, "full", "budget", f, budget_epochs(f, epochs))
                  for f in budgets]
        first += [RunSpec(f"full-{model}", seed, "full", "shallow", epochs=epochs, model=model)
                  for model in shallow]
        second = [RunSpec(m, seed, m, "method", epochs=epochs, group=2)
                  for m in methods if m in NEEDS_REFERENCE]
        second += [variant_spec(v, seed, 2) for v in variants if v.method in NEEDS_REFERENCE]
        if aa_control:
            aa = RunSpec(AA_LABEL, seed, "full", "aa", epochs=epochs, group=2 if second else 1)
            (second if second else first).append(aa)
        for group in (first, second):
            if group:
                k = i % len(group)
                groups.append(group[k:] + group[:k])
    return groups


def copy_is_full_training(method: str, seed: int, out: Path,
                          reference: str | None = None) -> bool:
    """Whether a run of ``method`` and ``seed`` is a copy of a Learn&Drop run of that seed
    (random-drop, slim-from-scratch; ``reference``: the copied run's label, default
    ``learndrop``) that would be full training, step for step: the reference run under ``out``
    finished without dropping or freezing any unit, so there is nothing to copy (same model,
    same seed, same steps; training is deterministic on the CPU). The bench then does not train
    them and the report says so (on VGG each would cost a full run to repeat full training's
    numbers)."""
    if method not in NEEDS_REFERENCE:
        return False
    path = Path(out) / f"{reference or REFERENCE_METHOD}-s{seed}" / "summary.json"
    try:
        return json.loads(path.read_text()).get("drops") == []
    except (OSError, ValueError, AttributeError):
        return False


def run_config(base: TrainConfig, spec: RunSpec, out: Path) -> TrainConfig:
    """The training configuration of one run of the bench: the base's options that belong to
    the run's method (each method owns its options), and the reference for those that copy
    Learn&Drop's run of the same seed."""
    scale = (spec.epochs or base.epochs) / base.epochs  # compress the whole schedule alike
    option_type = METHODS[spec.method].options_type
    names = {f.name for f in dataclasses.fields(option_type)} if option_type else set()
    options = {k: v for k, v in base.method_options.items() if k in names}
    options.update(spec.options)  # a variant's own options win
    if spec.method in NEEDS_REFERENCE:
        options["reference"] = str(out / f"{spec.reference}-s{spec.seed}")
    return dataclasses.replace(
        base, method=spec.method, seed=spec.seed, out=str(out / spec.name),
        model=spec.model or base.model, epochs=spec.epochs or base.epochs,
        warmup_epochs=base.warmup_epochs * scale, resume=None, method_options=options,
        units=None if spec.model else (list(base.units) if base.units else None),
        # Asked of the bench: the runs whose method drops while training measure it.
        eval_around_drops=base.eval_around_drops and METHODS[spec.method].drops_in_training,
    )


def run_state(run: Path) -> str:
    """``done`` (has a summary), ``resume`` (has a checkpoint), ``restart`` (started, nothing to
    keep) or ``new``."""
    if (run / "summary.json").is_file():
        return "done"
    if (run / "last.ckpt").is_file():
        return "resume"
    if any((run / m).exists() for m in ("config.json", "metrics.jsonl")):
        return "restart"
    return "new"


def check_same_experiment(config: TrainConfig, run: Path) -> None:
    """Refuse to mix an existing run made with other settings into this bench."""
    path = run / "config.json"
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    new = config.to_dict()
    # A field the run's record lacks (added since) is read as its default: what the run did.
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)
                if f.default is not dataclasses.MISSING}
    filled = {**{k: v for k, v in defaults.items() if k in new}, **old}
    for key in sorted(set(filled) & set(new) - _IGNORED_FIELDS - {"method_options"}):
        if filled[key] != new[key]:  # the method among them: the options below are the same one's
            _refuse(run, key, filled[key], new[key])
    _check_weights(config, old, run)
    was, now = _precision_ran(old, run), _precision_asked(config)
    if was is not None and was != now:
        raise ConfigError(
            f"{run} trained in {was}, this bench asks for {now}"
            + (" (--precision auto on this machine)" if config.precision == "auto" else "")
            + f"; pass --precision {was} to go on with that run, or choose another --out")
    # The options by the values they had, defaults included; an option missing from the record
    # (added since) and a run recorded before the record existed are read with the defaults of
    # the run's time (recorded_defaults: today's, less those changed since).
    try:
        was = old.get(RESOLVED_OPTIONS)
        if was is None:  # the options given only (validated); the others at their time's
            given = TrainConfig.from_dict(old)
            was = {k: v for k, v in given.resolved_method_options().items()
                   if k in given.method_options}
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{run}: this version cannot read the run's method options ({err}); "
                          "delete that run to train it again, or choose another --out") from err
    was = {**recorded_defaults(config.method), **was}
    for key, now in sorted(config.resolved_method_options().items()):
        if not same_value(was.get(key), now):
            _refuse(run, key, was.get(key), now,
                    "" if key in config.method_options else " (today's default)")


def _check_weights(config: TrainConfig, old: dict, run: Path) -> None:
    """The same starting weights: the same bytes where the run recorded their digest (the
    path may differ: another checkout), else the same path."""
    digest = old.get("weights_sha256")
    if not (digest and config.weights):
        if old.get("weights") != config.weights:
            _refuse(run, "weights", old.get("weights"), config.weights)
        return
    if not Path(config.weights).is_file():
        raise ConfigError(f"{run} started from --weights with SHA-256 {digest[:12]}..., and "
                          f"{config.weights} does not exist: restore that file, or choose "
                          "another --out")
    now = file_sha256(config.weights)
    if now != digest:
        raise ConfigError(f"{run} started from --weights with SHA-256 {digest[:12]}..., "
                          f"{config.weights} now has {now[:12]}...: restore that file, or "
                          "choose another --out")


def _precision_asked(config: TrainConfig) -> str:
    """What ``config.precision`` resolves to on this machine's device for the run."""
    return resolve_precision(config.precision, pick_device(config.device)).name


def _precision_ran(old: dict, run: Path) -> str | None:
    """The precision an existing run trained with: its ``config.json`` records it since runs
    write what ``auto`` resolved to; before that, a finished run's ``summary.json`` says it;
    a run from before ``--precision`` trained in fp32 on a CPU; None where nothing tells (an
    unfinished run recorded with ``auto``, or an old CUDA run)."""
    if old.get("precision", "auto") != "auto":
        return old["precision"]
    summary = run / "summary.json"
    if not summary.is_file():
        return None
    done = json.loads(summary.read_text())
    if "precision" in done:
        return done["precision"]
    return "fp32" if "precision" not in old and done.get("device") == "cpu" else None


def _refuse(run: Path, key: str, was: object, now: object, note: str = "") -> None:
    raise ConfigError(
        f"{run} was run with {key}={was!r}, this bench asks for {now!r}{note}; "
        "choose another --out (or --variant label), delete that run to train it again, "
        "or pass `learndrop bench` --overwrite to redo every run")
