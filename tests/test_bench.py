"""`learndrop bench` end to end on a tiny Fashion-MNIST bench (one bench, shared by the tests)."""

import dataclasses
import json
import math
import os
import time

import pytest
import torch

from learndrop.bench import (
    Variant,
    budget_epochs,
    parse_budgets,
    parse_methods,
    parse_seeds,
    parse_variant,
    plan_bench,
    run_bench,
)
from learndrop.bench.plan import (
    copy_is_full_training,
    default_budgets,
    parse_label,
    run_config,
)
from learndrop.bench.report import write_report
from learndrop.cli import main
from learndrop.methods import METHODS
from learndrop.train import ConfigError, TrainConfig

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist") and not os.environ.get("LEARNDROP_DATA"),
    reason="Fashion-MNIST not installed (make test installs dataset-fashion-mnist)",
)

METHOD_NAMES = [m for m in ("full", "learndrop", "random-drop", "slim-from-scratch", "freezeout",
                            "stochastic-depth") if m in METHODS]
BUDGETS = "0.25,0.5"  # 1 and 2 of 3 epochs
TINY = ["--model", "resnet20", "--dataset", "fashion-mnist", "--subset", "192",
        "--test-subset", "100", "--image-size", "16", "--epochs", "3", "--batch-size", "64",
        "--lr", "0.05", "--change-threshold", "1", "--max-slope", "100",
        "--max-drops-per-check", "2", "--cost-batches", "0", "--max-drop-cost", "inf",
        "--max-loss-rise", "inf", "--recalibration-batches", "0", "--quiet", "--no-plots"]


def tiny(**overrides) -> TrainConfig:
    """The TrainConfig of TINY: ResNet-20, 192 images at 16x16, 3 epochs of 3 steps, a policy
    that drops at every check after the first (so that the copies of its drops are tested),
    without cost measurement or recalibration (with 3 steps per check, their forward passes
    would outweigh what the drops save)."""
    values = dict(model="resnet20", dataset="fashion-mnist", subset=192, test_subset=100,
                  image_size=16, epochs=3, batch_size=64, lr=0.05, quiet=True, plots=False,
                  method_options={"change_threshold": 100.0, "max_slope": 100.0,
                                  "max_drops_per_check": 2, "cost_batches": 0,
                                  "max_drop_cost": float("inf"), "max_loss_rise": float("inf"),
                                  "recalibration_batches": 0})
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("bench")
    logs = []
    # The depth check's mechanism, with another small network in the role of the shallow one.
    report = run_bench(tiny(), METHOD_NAMES, 1, out, budgets=BUDGETS, shallow="resnet32",
                       log=logs.append)
    torch.set_num_threads(threads)
    return out, report, logs


def test_plan_groups_budgets_and_the_aa_control():
    assert [budget_epochs(f, 10) for f in (0.25, 0.5, 0.75)] == [3, 5, 8]  # half up
    assert parse_budgets("0.75,0.25") == [0.25, 0.75] and parse_budgets("none") == []
    # The defaults keep what makes distinct runs, and say what they leave out.
    assert default_budgets(8) == ([0.25, 0.5, 0.75], [])
    kept, notes = default_budgets(3)
    assert kept == [0.25, 0.5] and notes == [
        "budget 0.75 of 3 epochs left out: it rounds to the same 2 epochs as budget 0.5"]
    groups = plan_bench(["full", "learndrop", "random-drop", "freezeout"], [0, 1], 8,
                        [0.25, 0.5], shallow="resnet20")
    names = [[s.name for s in g] for g in groups]
    assert names[0] == ["full-s0", "learndrop-s0", "freezeout-s0", "full-b0.25-s0",
                        "full-b0.5-s0", "full-resnet20-s0"]
    # Several shallower networks (the depth frontier): each trained in full, once.
    several = plan_bench(["full"], [0], 8, shallow=" resnet20,resnet32,resnet20")
    assert [(s.name, s.model, s.role) for s in several[0]] == [
        ("full-s0", None, "method"), ("full-resnet20-s0", "resnet20", "shallow"),
        ("full-resnet32-s0", "resnet32", "shallow"), ("full-aa-s0", None, "aa")]
    assert plan_bench(["full"], [0], 8, shallow=["resnet20"]) == plan_bench(
        ["full"], [0], 8, shallow="resnet20")
    # A method whose name starts like a shallow run's label is a method.
    assert parse_label("full-rewound") == ("method", None)
    assert parse_label("full-resnet20") == ("shallow", None)
    # random-drop needs that seed's finished learndrop run: the second group, with the A/A
    # control that its times are compared with.
    assert names[1] == ["random-drop-s0", "full-aa-s0"]
    assert names[2][0] == "learndrop-s1" and len(names) == 4  # rotated by one per seed
    budget = groups[0][3]
    assert (budget.method, budget.epochs, budget.budget) == ("full", 2, 0.25)
    no_copies = plan_bench(["full", "learndrop"], [0], 8, [])
    assert [s.name for s in no_copies[0]] == ["full-s0", "learndrop-s0", "full-aa-s0"]
    # full (every ratio's reference) and learndrop (random-drop's) are added when missing
    assert parse_methods("random-drop") == ["full", "learndrop", "random-drop"]
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        parse_methods("full,nope")
    with pytest.raises(ConfigError, match="both round to 2 of 3 epochs"):
        plan_bench(["full"], [0], 3, [0.5, 0.75])
    with pytest.raises(ConfigError, match="rounds to 0 epochs"):
        plan_bench(["full"], [0], 3, [0.1])
    for bad in ("1.0", "0,0.5", "half", "0.5,0.5"):
        with pytest.raises(ConfigError, match="--budgets"):
            parse_budgets(bad)
    # Seeds: a count from the first seed, or a list (what proof.py and streaming.py pass).
    assert parse_seeds(3, first=2) == [2, 3, 4] and parse_seeds("0, 2") == [0, 2]
    for bad in (0, "", "1,1", "-1", "one", [1.5], True):
        with pytest.raises(ConfigError, match="seeds"):
            parse_seeds(bad)


def test_variants_run_a_method_under_their_own_label_and_options(tmp_path):
    paper = parse_variant("learndrop-paper=learndrop:normalization=per-unit,"
                          "change-threshold=0.5,cost_batches=0,max_drop_cost=inf,"
                          "max_loss_rise=inf,recalibration_batches=0")
    assert paper == Variant("learndrop-paper", "learndrop", {
        "normalization": "per-unit", "change_threshold": 0.5, "cost_batches": 0,
        "max_drop_cost": math.inf, "max_loss_rise": math.inf, "recalibration_batches": 0})
    groups = plan_bench(["full", "learndrop", "random-drop"], [0], 8, [], variants=[paper])
    first = {s.name: s for s in groups[0]}
    assert list(first) == ["full-s0", "learndrop-s0", "learndrop-paper-s0"]
    spec = first["learndrop-paper-s0"]
    assert (spec.method, spec.role, spec.group) == ("learndrop", "method", 1)
    # The variant's own options win over the bench's; the bench's others still apply.
    base = tiny(method_options={"change_threshold": 0.9, "patience": 2})
    config = run_config(base, spec, tmp_path)
    assert config.method == "learndrop" and config.out == str(tmp_path / "learndrop-paper-s0")
    assert config.method_options["change_threshold"] == 0.5
    assert config.method_options["patience"] == 2
    assert config.method_options["normalization"] == "per-unit"
    plain = run_config(base, first["learndrop-s0"], tmp_path)
    assert plain.method_options == {"change_threshold": 0.9, "patience": 2}


def test_a_copy_variant_copies_the_run_it_names(tmp_path):
    """random-drop as a variant copies the drops of the Learn&Drop variant it names (chance
    against that variant's scores), trains after it (group 2) and is skipped, like the plain
    copies, when that variant decided nothing."""
    cap = parse_variant("cap=learndrop:max_dropped_fraction=0.5")
    chance = parse_variant("rd-cap=random-drop:reference=cap")
    groups = plan_bench(["full", "learndrop", "random-drop"], [0], 8, [], variants=[cap, chance])
    assert [s.name for s in groups[0]] == ["full-s0", "learndrop-s0", "cap-s0"]
    second = {s.name: s for s in groups[1]}
    assert list(second) == ["random-drop-s0", "rd-cap-s0", "full-aa-s0"]
    assert (second["rd-cap-s0"].reference, second["random-drop-s0"].reference) == (
        "cap", "learndrop")
    assert groups[0][0].reference is None  # full copies nothing
    config = run_config(tiny(), second["rd-cap-s0"], tmp_path)
    assert (config.method, config.method_options["reference"]) == (
        "random-drop", str(tmp_path / "cap-s0"))
    assert run_config(tiny(), second["random-drop-s0"], tmp_path).method_options[
        "reference"] == str(tmp_path / "learndrop-s0")
    # Whether it would be full training is read from the run it names, not from learndrop's.
    for label, drops in (("learndrop", [{"action": "drop"}]), ("cap", [])):
        (tmp_path / f"{label}-s0").mkdir()
        (tmp_path / f"{label}-s0" / "summary.json").write_text(json.dumps({"drops": drops}))
    assert copy_is_full_training("random-drop", 0, tmp_path, "cap")
    assert not copy_is_full_training("random-drop", 0, tmp_path)
    # A reference that is itself a copy, or not in the bench, is refused before any training.
    for variant, message in (
            ("rd2=random-drop:reference=rd-cap", "reference=rd-cap is a random-drop variant"),
            ("x=slim-from-scratch:reference=nope", "reference=nope is not a run of this bench"),
            ("x=random-drop:reference=learndrop", "add learndrop to --methods"),
            ("x=random-drop:reference=sd", "reference=sd is a stochastic-depth variant")):
        with pytest.raises(ConfigError, match=message):
            plan_bench(["full"], [0], 8, [], variants=[
                cap, chance, parse_variant("sd=stochastic-depth"), parse_variant(variant)])
    # A label that reads as a number is still a label.
    assert parse_variant("x=random-drop:reference=2").options == {"reference": "2"}
    # A switch reads true and false as such, and nothing else (bool("false") is True).
    assert parse_variant("fo=freezeout:scale_lr=False").options == {"scale_lr": False}
    assert parse_variant("fo=freezeout:scale_lr=true").options == {"scale_lr": True}
    for text in ("fo=freezeout:scale_lr=no", "fo=freezeout:scale_lr=1"):
        with pytest.raises(ConfigError, match="scale_lr takes true or false"):
            parse_variant(text)


def test_a_full_variant_of_another_network_is_a_point_of_the_depth_frontier(tmp_path):
    """``--variant LABEL=full:model=NAME`` trains a shallower network in full under a label of
    its own (e.g. on another machine, where ``full-<model>`` of the seed is taken by the first
    machine's run): planned and recorded with its network, reported as a shallower network."""
    r32 = parse_variant("r32-b=full:model=resnet32")
    assert r32 == Variant("r32-b", "full", {}, "resnet32")
    spec = plan_bench(["full"], [0], 3, [], aa_control=False, variants=[r32])[0][1]
    assert (spec.name, spec.role, spec.model, spec.options) == (
        "r32-b-s0", "shallow", "resnet32", ())
    out = tmp_path / "b"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = run_bench(tiny(method_options={}), ["full"], 1, out, budgets="none",
                           aa_control=False, variants=[r32], log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    config = json.loads((out / "r32-b-s0" / "config.json").read_text())
    assert (config["method"], config["model"]) == ("full", "resnet32")
    assert report["plan"]["variants"] == {
        "r32-b": {"method": "full", "options": {}, "model": "resnet32"}}
    row = report["rows"]["r32-b"]
    assert (row["role"], row["model"], row["depth_frontier"]) == ("shallow", "resnet32", None)
    assert [p["model"] for p in report["depth_frontier"]] == ["resnet20", "resnet32"]
    assert report["depth"]["model"] == "resnet32"  # the only shallower network, here deeper
    # Timed against full training of the bench's network, like --shallow's runs.
    assert row["per_seed"][0]["time_reference"] == "full"


def test_bench_report(bench):
    out, report, logs = bench
    assert set(report) >= {"config", "plan", "seeds", "machine", "frontier", "noise_floor",
                           "rows", "convergence"}
    rows = report["rows"]
    runs = [*METHOD_NAMES, "full-b0.5", "full-b0.25", "full-aa"]
    assert set(rows) >= set(runs)
    assert json.loads((out / "bench.json").read_text()) == json.loads(json.dumps(report))
    for label in runs:
        summary = json.loads((out / f"{label}-s0" / "summary.json").read_text())
        r = rows[label]
        assert r["time_ratio"] > 0 and r["cpu_ratio"] > 0 and summary["train_cpu_s"] > 0
        assert r["flops"] == summary["fwd_flops"] + summary["bwd_flops"]
    assert rows["full-b0.25"]["epochs"] == 1 and rows["full-b0.5"]["epochs"] == 2
    assert rows["full-b0.5"]["flops_ratio"] == pytest.approx(2 / 3)
    # The frontier goes through full training and its budgets, cheapest first.
    assert [p["budget"] for p in report["frontier"]["flops"]] == [0.25, 0.5, 1.0]
    # On the time axes full training is its own reference (a tiny budget run under load may
    # take longer than it: the order by time is not asserted).
    assert [p["cost"] for p in report["frontier"]["time"] if p["budget"] == 1.0] == [1.0]
    ld = rows["learndrop"]
    assert ld["units_dropped"] > 0 and ld["flops_ratio"] < 1
    flops = ld["frontier"]["flops"]
    assert flops["margin"] == pytest.approx(ld["final_test_acc"] - flops["frontier_acc"])
    assert flops["verdict"].startswith(("above", "below", "on"))
    # The A/A control: full training twice, in lockstep with the methods copying learndrop.
    assert rows["full-aa"]["final_test_acc"] == rows["full"]["final_test_acc"]
    assert rows["random-drop"]["time_reference"] == "full-aa"
    assert report["noise_floor"]["time_ratio"] == rows["full-aa"]["time_ratio"]
    assert rows["full"]["time_to_target"]["reached"] == 1
    # The pace check: the runs that did full training's work, not the ones that dropped.
    paced = {p["run"] for p in report["pace"]["per_run"]}
    assert paced == {"full-aa-s0", "full-b0.5-s0", "full-b0.25-s0"}
    assert "**Pace**" in (out / "bench.md").read_text()
    assert report["depth"]["gap"] == pytest.approx(
        rows["full"]["final_test_acc"] - rows["full-resnet32"]["final_test_acc"])
    assert rows["full-resnet32"]["model"] == "resnet32"
    assert any("lockstep group 1/2" in line for line in logs)
    md = (out / "bench.md").read_text()
    for label in runs:
        assert f"\n| {label} | 1 |" in md and f"\n| {label}-s0 |" in md
    assert "## Against the budget frontier" in md and "Noise floor" in md
    # What the runs trained in: what --precision resolved to on this machine, not what was asked.
    from learndrop.precision import resolve_precision

    ran = resolve_precision(report["config"]["precision"], "cpu").name
    assert report["precision"] == {ran: report["finished"]} and f"finished, all in {ran}." in md
    for png in ("accuracy_vs_flops.png", "accuracy_vs_time.png"):
        assert (out / png).stat().st_size > 1000
    assert not list(out.glob(".*tmp"))


def test_copies_of_the_learndrop_run(bench):
    out, _, _ = bench
    def summary(label):
        return json.loads((out / f"{label}-s0" / "summary.json").read_text())
    ld = summary("learndrop")
    if "random-drop" in METHOD_NAMES:
        rd = summary("random-drop")
        assert sorted(d["step"] for d in rd["drops"]) == sorted(d["step"] for d in ld["drops"])
        assert rd["units_dropped"] == ld["units_dropped"]
        assert rd["fwd_flops_full"] == ld["fwd_flops_full"]
    if "slim-from-scratch" in METHOD_NAMES:
        slim = summary("slim-from-scratch")
        assert slim["params_final"] == ld["params_final"]
        assert {d["unit"] for d in slim["drops"]} == {d["unit"] for d in ld["drops"]}


def test_bench_resumes_run_by_run(bench, one_thread):
    out, report, _ = bench
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*/summary.json")}
    # A run stopped after its last checkpoint but before its summary is finished, not redone.
    last = out / "full-aa-s0"
    (last / "summary.json").unlink()
    logs: list[str] = []
    started = time.perf_counter()
    again = run_bench(tiny(), METHOD_NAMES, 1, out, budgets=BUDGETS,
                      shallow=report["plan"]["shallow"], log=logs.append)
    assert time.perf_counter() - started < 60
    assert sum("done, kept" in line for line in logs) == len(mtimes) - 1
    assert any("resuming" in line and "full-aa-s0" in line for line in logs)
    for path, mtime in mtimes.items():
        if path.parent != last:
            assert path.stat().st_mtime_ns == mtime
    assert again["rows"]["full"] == report["rows"]["full"]
    # The report can be redone from the run directories alone.
    redone = write_report(out)
    assert redone["rows"].keys() == again["rows"].keys()
    assert redone["plan"] == again["plan"] and redone["plan"]["budgets"] == [0.25, 0.5]
    # Another experiment into the same directory is refused, not mixed in.
    with pytest.raises(ConfigError, match="epochs=3"):
        run_bench(tiny(epochs=4), METHOD_NAMES, 1, out, budgets=BUDGETS, log=logs.append)


def test_ctrl_c_stops_the_bench_at_the_next_step_and_the_same_command_continues(
        tmp_path, one_thread):
    import signal

    from learndrop.train import TrainingInterrupted

    out, logs, config = tmp_path / "b", [], tiny(method_options={})

    def ctrl_c_after_first_epoch(line: str) -> None:
        logs.append(line)
        if "full-s0: epoch 1/3" in line:  # a real SIGINT, between full's epoch and the A/A's
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted, match="run the same command again"):
        run_bench(config, ["full"], 1, out, budgets="none", log=ctrl_c_after_first_epoch)
    # The first Ctrl-C stopped the run that trained next after one step, not at its epoch's end.
    assert not any("full-aa-s0: epoch 1/3" in line for line in logs)
    assert torch.load(out / "full-aa-s0" / "last.ckpt", weights_only=True)["batch"] == 1
    report = run_bench(config, ["full"], 1, out, budgets="none", log=logs.append)
    # Both runs continued (mid-epoch for the A/A) to the same network as one uninterrupted run.
    assert report["rows"]["full-aa"]["final_test_acc"] == report["rows"]["full"]["final_test_acc"]


def test_dry_run_writes_nothing(tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["bench", *TINY, "--methods", "full,learndrop,random-drop", "--seeds", "2",
                 "--budgets", "0.5", "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "dry run OK" in printed and "random-drop-s1" in printed
    assert "full-b0.5-s1" in printed and "full-aa-s0" in printed
    assert not out.exists()
    assert main(["bench", *TINY, "--budgets", "none", "--no-aa-control", "--out", str(out),
                 "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "full-aa" not in printed and "full-b" not in printed


def test_bad_bench_config_is_one_line(tmp_path, capsys):
    out = tmp_path / "b"
    for argv, message in (
        (["--methods", "full,nope"], "unknown method 'nope'"),
        (["--method", "full"], "--method is not a bench option"),
        (["--seeds", "0"], "--seeds must be >= 1"),
        (["--lr", "-1"], "--lr must be > 0"),
        (["--stream"], "--stream is not available in bench"),
        (["--nproc", "2"], "leave out --nproc"),
        (["--steps-per-check", "50"], "--steps-per-check is an option of --stream"),
        (["--budgets", "1.5"], "not a fraction of the epochs"),
        (["--budgets", "0.5,0.6"], "both round to 2 of 3 epochs"),
        (["--shallow", "resnet9000"], "--shallow: unknown model"),
        (["--shallow", "resnet20"], "is the bench's own --model"),
        (["--variant", "learndrop"], "write LABEL=METHOD"),
        (["--variant", "learndrop=learndrop"], "label 'learndrop' is taken"),
        (["--variant", "x=nope"], "unknown method 'nope'"),
        (["--variant", "x=random-drop"], "copies another run of the same seed"),
        (["--variant", "x=random-drop:reference=x"], "names the variant itself"),
        (["--variant", "x=random-drop:reference=cap"], "reference=cap is not a run of this"),
        (["--variant", "x=learndrop:patience=2,patience=3"], "'patience' is given twice"),
        (["--variant", "x=learndrop:drop_rate=0.1"], "'drop_rate' is not an option of learndrop"),
        (["--variant", "x=learndrop:patience=0"], "patience=0 is invalid"),
        (["--variant", "x=full", "--variant", "x=full"], "label 'x' is given twice"),
        (["--variant", "x=learndrop:model=resnet32"], "write x=full:model=resnet32"),
        (["--variant", "x=full:model=resnet9000"], "unknown model 'resnet9000'"),
        (["--variant", "x=full:model=resnet20"], "leave model out for another full run"),
    ):
        assert main(["bench", *TINY, "--out", str(out), "--dry-run", *argv]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err
    assert not out.exists()


def test_the_bench_library_does_not_import_the_cli():
    import subprocess
    import sys

    code = "import sys, learndrop.bench; assert 'learndrop.cli' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_finished_run_made_with_other_defaults_is_not_taken_for_this_benchs(tmp_path):
    """The bench compares a finished run with the run it would train by the value of every
    method option, defaults included: a run recorded when a default differed is refused, one
    that gave today's default explicitly is accepted."""
    from learndrop.bench.plan import check_same_experiment
    from learndrop.train.config import RESOLVED_OPTIONS

    config = tiny(method="learndrop", method_options={})
    run = tmp_path / "learndrop-s0"
    run.mkdir()
    record = config.record()
    today = record[RESOLVED_OPTIONS]["costly_units"]
    other = {"freeze": "keep", "keep": "freeze"}[today]
    (run / "config.json").write_text(json.dumps(record))
    check_same_experiment(config, run)  # the same run
    (run / "config.json").write_text(json.dumps(
        {**record, "method_options": {"costly_units": today}}))
    check_same_experiment(config, run)  # today's default, given explicitly
    record[RESOLVED_OPTIONS]["costly_units"] = other  # the default of another version
    (run / "config.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=f"costly_units='{other}', this bench asks for "
                                          f"'{today}' \\(today's default\\)"):
        check_same_experiment(config, run)
    # An option missing from the record (added since) is read at today's default ...
    del record[RESOLVED_OPTIONS]["costly_units"]
    (run / "config.json").write_text(json.dumps(record))
    check_same_experiment(config, run)
    # ... unless its default changed since: the late-drop guard was off (or did not exist)
    # when a record did not list it, so such a run is not today's Learn&Drop.
    guard_off = dataclasses.replace(config, method_options={"min_lr_fraction": 0.0})
    del record[RESOLVED_OPTIONS]["min_lr_fraction"]
    (run / "config.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="min_lr_fraction=0.0, this bench asks for 0.5 "
                                          "\\(today's default\\)"):
        check_same_experiment(config, run)
    check_same_experiment(guard_off, run)
    assert TrainConfig.from_dict(record).resolved_method_options()["min_lr_fraction"] == 0.0
    # A run recorded before the record existed is read with the defaults of its time.
    del record[RESOLVED_OPTIONS]
    (run / "config.json").write_text(json.dumps(
        {**record, "method_options": {"costly_units": today}}))
    check_same_experiment(guard_off, run)
    with pytest.raises(ConfigError, match="min_lr_fraction=0.0"):
        check_same_experiment(config, run)
    (run / "config.json").write_text(json.dumps({**record, "method_options": {"patience": 2}}))
    with pytest.raises(ConfigError, match="patience=2, this bench asks for 1"):
        check_same_experiment(guard_off, run)
    # A training option missing from the record (added since) is what the run did: its default.
    older = {k: v for k, v in config.record().items() if k != "lr_decay_fraction"}
    (run / "config.json").write_text(json.dumps(older))
    check_same_experiment(config, run)
    with pytest.raises(ConfigError, match="lr_decay_fraction"):
        check_same_experiment(dataclasses.replace(config, lr_decay_fraction=0.3), run)


def test_copies_of_a_run_that_decided_nothing_are_not_trained(tmp_path, one_thread):
    """Where Learn&Drop made no decision, random-drop and slim-from-scratch would be full
    training step for step (checked here by training them): the bench does not train them and
    the report says so."""
    from learndrop.bench.plan import RunSpec
    from learndrop.train import train

    never = tiny(method_options={**tiny().method_options, "change_threshold": 1e-9})
    out, logs = tmp_path / "b", []
    # A copy variant is skipped likewise when the variant it copies decided nothing.
    variants = [parse_variant("cap=learndrop:max_dropped_fraction=0.5"),
                parse_variant("rd-cap=random-drop:reference=cap")]
    report = run_bench(never, ["full", "learndrop", "random-drop", "slim-from-scratch"], 1, out,
                       budgets="none", aa_control=False, log=logs.append, variants=variants)
    for reference in ("learndrop", "cap"):
        assert json.loads((out / f"{reference}-s0" / "summary.json").read_text())["drops"] == []
    for copy in ("random-drop", "slim-from-scratch", "rd-cap"):
        assert any(f"{copy}-s0: not trained" in line for line in logs), logs
        assert not (out / f"{copy}-s0").exists() and copy not in report["rows"]
    assert report["not_trained"] == {
        "random-drop": {"reference": "learndrop", "seeds": [0]},
        "slim-from-scratch": {"reference": "learndrop", "seeds": [0]},
        "rd-cap": {"reference": "cap", "seeds": [0]}}
    text = (out / "bench.md").read_text()
    assert "random-drop: not trained for seed(s) 0: learndrop dropped and froze nothing" in text
    assert "rd-cap: not trained for seed(s) 0: cap dropped and froze nothing" in text
    # --overwrite redoes every run: an old copy's results do not stay as this bench's.
    old = out / "random-drop-s0"
    old.mkdir()
    (old / "summary.json").write_text((out / "full-s0" / "summary.json").read_text())
    again = run_bench(dataclasses.replace(never, overwrite=True), ["full", "learndrop",
                      "random-drop"], 1, out, budgets="none", aa_control=False, log=logs.append)
    assert not (old / "summary.json").exists() and "random-drop" not in again["rows"]
    full = json.loads((out / "full-s0" / "summary.json").read_text())
    for copy in ("random-drop", "slim-from-scratch"):
        config = run_config(never, RunSpec(copy, 0, copy, "method"), out)
        trained = train(dataclasses.replace(config, out=str(tmp_path / copy)), log=lambda s: None)
        for key in ("final_test_acc", "fwd_flops", "bwd_flops", "samples_seen"):
            assert trained[key] == full[key], (copy, key)


def test_a_run_started_from_other_weights_is_not_taken_for_this_benchs(tmp_path):
    """A run records the SHA-256 of its --weights file; a bench refuses a finished run whose
    file has changed since (the same path, other bytes: e.g. a pretraining trained again)."""
    import torch

    from learndrop.bench.plan import check_same_experiment
    from learndrop.models import create_model
    from learndrop.train.builder import file_sha256

    weights = tmp_path / "pretrained.pt"
    torch.manual_seed(0)
    torch.save(create_model("resnet20", num_classes=10, in_channels=1).state_dict(), weights)
    config = tiny(method="full", method_options={}, weights=str(weights))
    run = tmp_path / "full-s0"
    run.mkdir()
    record = {**config.record(), "weights_sha256": file_sha256(weights)}
    (run / "config.json").write_text(json.dumps(record))
    check_same_experiment(config, run)
    torch.manual_seed(1)
    torch.save(create_model("resnet20", num_classes=10, in_channels=1).state_dict(), weights)
    with pytest.raises(ConfigError, match=r"full-s0 started from --weights with SHA-256 \w{12}"
                                          r"\.\.\., .*pretrained.pt now has \w{12}\.\.\.: "
                                          "restore that file, or choose another --out"):
        check_same_experiment(config, run)
    # The same bytes elsewhere (another checkout) are the same weights.
    moved = tmp_path / "elsewhere.pt"
    moved.write_bytes(weights.read_bytes())
    record["weights_sha256"] = file_sha256(weights)
    (run / "config.json").write_text(json.dumps(record))
    check_same_experiment(dataclasses.replace(config, weights=str(moved)), run)
    weights.unlink()
    with pytest.raises(ConfigError, match="pretrained.pt does not exist: restore that file"):
        check_same_experiment(config, run)
    # A run recorded before the digest existed is compared by the path.
    (run / "config.json").write_text(json.dumps({**record, "weights_sha256": None}))
    check_same_experiment(config, run)
    with pytest.raises(ConfigError, match="was run with weights="):
        check_same_experiment(dataclasses.replace(config, weights=str(moved)), run)


def test_the_report_says_which_run_trained_on_which_machine():
    """A bench trained across sessions may have run on several machines: bench.md says which
    runs ran where (their time ratios compare machines), and the one machine where it was one."""
    from learndrop.bench.report import _machines_line, trained_on

    runs = {("full", 0): {"summary": {"machine": "Intel Xeon, 2 threads"}},
            ("learndrop", 0): {"summary": {"machine": "Intel Xeon, 2 threads"}},
            ("random-drop", 0): {"summary": {"machine": "AMD EPYC (AVX512_BF16), 2 threads"}},
            ("full-aa", 0): {"summary": {}}}
    where = trained_on(runs)
    assert where == {"Intel Xeon, 2 threads": ["full-s0", "learndrop-s0"],
                     "AMD EPYC (AVX512_BF16), 2 threads": ["random-drop-s0"],
                     "not recorded": ["full-aa-s0"]}
    line = _machines_line(where)[0]
    assert line.startswith("**Trained on several machines**: Intel Xeon, 2 threads: 2 run(s) "
                           "(full-s0, learndrop-s0); ")
    assert "not recorded: 1 run(s) (full-aa-s0)" in line
    one = {k: v for k, v in runs.items() if k[0] in ("full", "learndrop")}
    assert _machines_line(trained_on(one)) == ["Trained on: Intel Xeon, 2 threads (all 2 runs).",
                                                ""]
    assert _machines_line({}) == []
    assert _machines_line({"AMD EPYC, 2 threads": ["full-s0"]})[0] == (
        "Trained on: AMD EPYC, 2 threads (1 run).")
    assert _machines_line({"not recorded": ["full-s0", "full-s1"]})[0] == (
        "Trained on: machine not recorded (all 2 runs).")


def test_the_pace_check_flags_identical_work_timed_apart():
    """Budgets and the A/A control do full training's work step for step: timed more than 10%
    slower or faster per image than full training, they ran under other conditions (another
    session, another load), and the report says to read the FLOPs axis against them."""
    from learndrop.bench.report import _pace

    def run(time_s, samples, dropped=False, machine="Intel Xeon, 2 threads"):
        flops = 1e12
        return {"summary": {"train_time_s": time_s, "samples_seen": samples, "model": "resnet56",
                            "machine": machine, "fwd_flops": flops / 2 if dropped else flops,
                            "fwd_flops_full": flops, "bwd_flops": flops, "bwd_flops_full": flops,
                            "extra_fwd_flops": 0.0}}

    runs = {("full", 0): run(100.0, 1000), ("full-b0.5", 0): run(64.0, 500),   # 28% slower
            ("full-aa", 0): run(103.0, 1000), ("learndrop", 0): run(10.0, 1000, dropped=True),
            ("full-b0.25", 0): run(25.0, 250, machine="AMD EPYC, 2 threads"),  # another machine
            ("full-b0.75", 1): run(75.0, 750)}                                 # no full-s1
    pace = _pace(runs)
    assert [(p["run"], round(p["ratio"], 3)) for p in pace["per_run"]] == [
        ("full-aa-s0", 1.03), ("full-b0.5-s0", 1.28)]
    assert pace["off"] == ["full-b0.5-s0"]
    assert _pace({("full", 0): run(100.0, 1000)}) is None
