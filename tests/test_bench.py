"""`learndrop bench` end to end on a tiny Fashion-MNIST bench (one bench, shared by the tests)."""

import json
import os
import time

import pytest

from learndrop.bench import parse_methods, plan_runs, run_bench, write_report
from learndrop.cli import main
from learndrop.methods import METHODS
from learndrop.train import ConfigError, TrainConfig

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist") and not os.environ.get("LEARNDROP_DATA"),
    reason="Fashion-MNIST not installed (make test installs dataset-fashion-mnist)",
)

METHOD_NAMES = [m for m in ("full", "learndrop", "random-drop", "slim-from-scratch", "freezeout",
                            "stochastic-depth") if m in METHODS]
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
                  method_options={"change_threshold": 1.0, "max_slope": 100.0,
                                  "max_drops_per_check": 2, "cost_batches": 0,
                                  "max_drop_cost": float("inf"), "max_loss_rise": float("inf"),
                                  "recalibration_batches": 0})
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    report = run_bench(tiny(), METHOD_NAMES, 1, out, log=lambda s: None)
    return out, report


def test_plan_interleaves_seeds_and_puts_the_reference_first():
    methods = ["full", "learndrop", "random-drop", "freezeout", "stochastic-depth"]
    order = plan_runs(methods, [0, 1, 2])
    assert order[:5] == [("full", 0), ("learndrop", 0), ("random-drop", 0), ("freezeout", 0),
                         ("stochastic-depth", 0)]
    assert [m for m, s in order if s == 1] == ["learndrop", "full", "freezeout",
                                               "stochastic-depth", "random-drop"]
    assert [m for m, s in order if s == 2][2:] == ["stochastic-depth", "random-drop", "freezeout"]
    for seed in (0, 1, 2):  # the reference precedes its copies in every seed
        runs = [m for m, s in order if s == seed]
        assert runs.index("learndrop") < runs.index("random-drop")
    # full (every ratio's reference) and learndrop (random-drop's) are added when missing
    assert parse_methods("random-drop") == ["full", "learndrop", "random-drop"]
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        parse_methods("full,nope")


def test_bench_report(bench):
    out, report = bench
    assert set(report) >= {"config", "methods", "seeds", "machine", "aggregate", "runs"}
    assert report["methods"] == METHOD_NAMES and report["seeds"] == [0]
    assert json.loads((out / "bench.json").read_text()) == json.loads(json.dumps(report))
    agg = report["aggregate"]
    assert list(agg) == METHOD_NAMES
    for m, a in agg.items():
        assert set(a) >= {"time_ratio", "acc_delta", "fwd_flops_ratio", "bwd_flops_ratio",
                          "final_test_acc", "train_time_s", "units_dropped", "per_seed"}
        run = report["runs"][f"{m}-s0"]
        assert a["time_ratio"] == pytest.approx(run["train_time_s"]
                                                / report["runs"]["full-s0"]["train_time_s"])
        assert a["fwd_flops_ratio"] == pytest.approx(1 - run["fwd_flops_reduction"])
    assert agg["full"]["time_ratio"] == 1 and agg["full"]["acc_delta"] == 0
    assert agg["full"]["fwd_flops_ratio"] == agg["full"]["bwd_flops_ratio"] == 1
    assert agg["learndrop"]["units_dropped"] > 0  # else the copies below test nothing
    assert agg["learndrop"]["fwd_flops_ratio"] < 1
    md = (out / "bench.md").read_text()
    for m in METHOD_NAMES:
        assert f"\n| {m} | 1 |" in md and f"\n| {m}-s0 |" in md
    for png in ("accuracy_vs_time.png", "tradeoff.png"):
        assert (out / png).stat().st_size > 1000
    assert not list(out.glob(".*tmp"))


def test_copies_of_the_learndrop_run(bench):
    _, report = bench
    ld = report["runs"]["learndrop-s0"]
    if "random-drop" in METHOD_NAMES:
        rd = report["runs"]["random-drop-s0"]
        assert sorted(d["step"] for d in rd["drops"]) == sorted(d["step"] for d in ld["drops"])
        assert rd["units_dropped"] == ld["units_dropped"]
        assert rd["fwd_flops_full"] == ld["fwd_flops_full"]
    if "slim-from-scratch" in METHOD_NAMES:
        slim = report["runs"]["slim-from-scratch-s0"]
        assert slim["params_final"] == ld["params_final"]
        assert {d["unit"] for d in slim["drops"]} == {d["unit"] for d in ld["drops"]}


def test_bench_resumes_run_by_run(bench):
    out, report = bench
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*/summary.json")}
    # A run stopped after its last checkpoint but before its summary is finished, not redone.
    last = out / f"{METHOD_NAMES[-1]}-s0"
    (last / "summary.json").unlink()
    logs: list[str] = []
    started = time.perf_counter()
    again = run_bench(tiny(), METHOD_NAMES, 1, out, log=logs.append)
    assert time.perf_counter() - started < 60
    assert sum("done, kept" in line for line in logs) == len(METHOD_NAMES) - 1
    assert any(line.startswith(f"resuming {last}") for line in logs)
    for path, mtime in mtimes.items():
        if path.parent != last:
            assert path.stat().st_mtime_ns == mtime
    assert again["aggregate"]["full"] == report["aggregate"]["full"]
    # The report can be redone from the run directories alone.
    assert write_report(out)["aggregate"].keys() == again["aggregate"].keys()
    # Another experiment into the same directory is refused, not mixed in.
    with pytest.raises(ConfigError, match="epochs=3"):
        run_bench(tiny(epochs=4), METHOD_NAMES, 1, out, log=logs.append)


def test_dry_run_writes_nothing(tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["bench", *TINY, "--methods", "full,learndrop,random-drop", "--seeds", "2",
                 "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "dry run OK" in printed and "random-drop-s1" in printed
    assert not out.exists()


def test_bad_bench_config_is_one_line(tmp_path, capsys):
    out = tmp_path / "b"
    for argv, message in (
        (["--methods", "full,nope"], "unknown method 'nope'"),
        (["--method", "full"], "--method is not a bench option"),
        (["--seeds", "0"], "--seeds must be >= 1"),
        (["--lr", "-1"], "--lr must be > 0"),
        (["--stream"], "--stream is not available in bench"),
        (["--nproc", "2"], "leave out --nproc"),
    ):
        assert main(["bench", *TINY, "--out", str(out), "--dry-run", *argv]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err
    assert not out.exists()
