"""benchmarks/proof.py's smoke profile: the whole protocol (the GPU profile's path, epochs
fitted to a time budget) on a few Fashion-MNIST images, on the CPU."""

import json
import os

import pytest

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist") and not os.environ.get("LEARNDROP_DATA"),
    reason="Fashion-MNIST not installed (make test installs dataset-fashion-mnist)",
)

def test_smoke_profile_runs_the_protocol_and_resumes(tmp_path, one_thread, capsys,
                                                     benchmark_script):
    proof = benchmark_script("proof")
    out = tmp_path / "proof"
    # A first look (full, Learn&Drop and the frontier alone), then the whole bench, which keeps
    # those five runs.
    assert proof.main(["--profile", "smoke", "--out", str(out), "--methods",
                       "learndrop,budgets"]) == 0
    first = json.loads((out / "resnet32" / "bench.json").read_text())
    assert set(first["rows"]) == {"full", "learndrop", "full-b0.25", "full-b0.5", "full-b0.75"}
    assert first["rows"]["learndrop"]["frontier"]["flops"]["positions"]  # set against it
    capsys.readouterr()
    assert proof.main(["--profile", "smoke", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "full-s0: done, kept" in printed and "learndrop-s0: done, kept" in printed
    assert "full-b0.5-s0: done, kept" in printed
    assert printed.count("done, kept") == 5
    plan = json.loads((out / "proof-plan.json").read_text())
    assert plan["source"] == "fitted" and 4 <= plan["epochs"] <= 5
    assert set(plan["step_s"]) == {"resnet32", "resnet20"}
    report = json.loads((out / "resnet32" / "bench.json").read_text())
    assert set(report["rows"]) == {*proof.METHODS, "full-b0.25", "full-b0.5", "full-b0.75",
                                   "full-aa", "full-resnet20", "learndrop-paper", "costly-freeze"}
    # The "before" picture: Learn&Drop with the paper's rule, its own options in its config.
    paper = json.loads((out / "resnet32" / "learndrop-paper-s0" / "config.json").read_text())
    assert paper["method"] == "learndrop"
    assert paper["method_options"]["normalization"] == "per-unit"
    assert paper["method_options"]["recalibration_batches"] == 0
    # ... and with the defaults until session 16 (costly units frozen).
    freeze = json.loads((out / "resnet32" / "costly-freeze-s0" / "config.json").read_text())
    assert freeze["method_options_resolved"]["costly_units"] == "freeze"
    # Both "before" pictures without the late-drop guard, today's Learn&Drop with it.
    assert freeze["method_options_resolved"]["min_lr_fraction"] == 0.0
    assert paper["method_options"]["min_lr_fraction"] == 0.0
    ld = json.loads((out / "resnet32" / "learndrop-s0" / "config.json").read_text())
    assert ld["method_options_resolved"]["min_lr_fraction"] == 0.5
    assert [p["budget"] for p in report["frontier"]["flops"]] == [0.25, 0.5, 0.75, 1.0]
    assert report["depth"]["model"] == "resnet20" and report["noise_floor"] is not None
    # Finished runs keep their summaries and metrics, not their checkpoints.
    assert not list(out.glob("*/*/last.ckpt")) and not list(out.glob("*/*/model.pt"))
    readme = (out / "README.md").read_text()
    for check in ("(a) cost", "(b) converged", "(c) depth matters", "Against the budget frontier"):
        assert check in readme
    # The same command again: the fitted plan is kept and nothing is redone.
    capsys.readouterr()
    assert proof.main(["--profile", "smoke", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fitted epochs" not in printed and printed.count("done, kept") == 13
    assert json.loads((out / "proof-plan.json").read_text())["epochs"] == plan["epochs"]
    # A tuning run: a variant trained alone beside the finished bench, in the same report.
    finished = {p: p.stat().st_mtime_ns for p in out.glob("resnet32/*/summary.json")}
    rows_before = set(report["rows"])
    # Another model's finished bench beside it (trained elsewhere, earlier): an invocation
    # that trains resnet32 lists it in the README but leaves its report as it is.
    import shutil

    shutil.copytree(out / "resnet32", out / "resnet44")
    other = out / "resnet44" / "bench.md"
    other.write_text(other.read_text().replace("# Bench:", "# Bench (written elsewhere):", 1))
    capsys.readouterr()
    assert proof.main(["--profile", "smoke", "--out", str(out), "--methods", "full",
                       "--variant", "cap-half=learndrop:max_dropped_fraction=0.5"]) == 0
    assert other.read_text().startswith("# Bench (written elsewhere):")
    assert "## resnet44" in (out / "README.md").read_text()
    # ... unless its report is unreadable: then it is written again, not a crash after training.
    (out / "resnet44" / "bench.json").write_text("{")
    assert proof.main(["--profile", "smoke", "--out", str(out), "--methods", "full",
                       "--variant", "cap-half=learndrop:max_dropped_fraction=0.5"]) == 0
    assert "rows" in json.loads((out / "resnet44" / "bench.json").read_text())
    assert other.read_text().startswith("# Bench: resnet32")
    printed = capsys.readouterr().out
    assert "full-s0: done, kept" in printed
    assert printed.count(": training (") == 1 and "cap-half-s0: training (" in printed
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # nothing else redone
    tuned = json.loads((out / "resnet32" / "cap-half-s0" / "config.json").read_text())
    assert tuned["method"] == "learndrop"
    assert tuned["method_options"]["max_dropped_fraction"] == 0.5
    report = json.loads((out / "resnet32" / "bench.json").read_text())
    assert set(report["rows"]) == rows_before | {"cap-half"}
    assert report["rows"]["cap-half"]["frontier"]["flops"]["positions"]  # set against it
    with pytest.raises(proof.ConfigError, match="the proof bench's own run"):
        proof.main(["--profile", "smoke", "--out", str(out), "--methods", "full",
                    "--variant", "learndrop-paper=learndrop:patience=2"])
    with pytest.raises(proof.ConfigError, match="names 'budgets' twice"):
        proof.main(["--profile", "smoke", "--out", str(out), "--methods", "budgets,budgets"])
    other.write_text("# Bench (written elsewhere):\n")
    assert proof.main(["--profile", "smoke", "--out", str(out), "--report-only"]) == 0
    assert other.read_text().startswith("# Bench: resnet32")  # --report-only rewrites every one
    with pytest.raises(proof.ConfigError, match="leave out --variant"):
        proof.main(["--profile", "smoke", "--out", str(out), "--report-only",
                    "--variant", "x=learndrop"])


def test_a_decay_fraction_is_the_whole_regime_and_refuses_to_mix(tmp_path, one_thread, capsys,
                                                                   benchmark_script):
    proof = benchmark_script("proof")
    out = tmp_path / "wsd"
    args = ["--profile", "smoke", "--out", str(out), "--epochs", "4", "--methods", "full"]
    assert proof.main([*args, "--lr-decay-fraction", "0.5"]) == 0
    config = json.loads((out / "resnet32" / "full-s0" / "config.json").read_text())
    assert config["lr_decay_fraction"] == 0.5
    # The decay takes the last half of the run: the rate holds at its peak through epoch 2 (under
    # the profile's cosine it would start falling after the warm-up, epoch 1), then reaches 0.
    lrs = [json.loads(line)["lr"] for line in
           (out / "resnet32" / "full-s0" / "metrics.jsonl").read_text().splitlines()]
    assert lrs[:2] == [pytest.approx(0.05)] * 2 and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    # The depth check alone, later: the shallow model's full run joins the finished bench.
    capsys.readouterr()
    assert proof.main([*args[:-1], "depth-check", "--lr-decay-fraction", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "full-s0: done, kept" in printed and printed.count(": training (") == 1
    report = json.loads((out / "resnet32" / "bench.json").read_text())
    assert set(report["rows"]) == {"full", "full-resnet20"}
    assert report["depth"]["model"] == "resnet20"
    with pytest.raises(proof.ConfigError, match="names no shallow model for resnet20"):
        proof.main([*args[:-1], "depth-check", "--models", "resnet20"])
    # More networks trained in full, named with --shallow (here one costlier than the bench's
    # own, the cheapest that is not resnet20): the depth frontier; the depth check stays the
    # shallowest's.
    capsys.readouterr()
    assert proof.main([*args, "--shallow", "resnet20,resnet44", "--lr-decay-fraction",
                       "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "full-resnet20-s0: done, kept" in printed and printed.count(": training (") == 1
    report = json.loads((out / "resnet32" / "bench.json").read_text())
    assert report["depth"]["model"] == "resnet20" and report["plan"]["shallow"] == [
        "resnet20", "resnet44"]
    assert [round(p["budget"], 1) for p in report["depth_frontier"]] == [0.6, 1.0, 1.4]
    with pytest.raises(proof.ConfigError, match="--shallow resnet32 is one of --models"):
        proof.main([*args, "--models", "resnet20,resnet32", "--shallow", "resnet32"])
    with pytest.raises(proof.ConfigError, match="leave out --shallow"):
        proof.main(["--profile", "smoke", "--out", str(out), "--report-only",
                    "--shallow", "resnet20"])
    with pytest.raises(proof.ConfigError, match="names 'depth-check' twice"):
        proof.main([*args[:-1], "depth-check,depth-check", "--lr-decay-fraction", "0.5"])
    # A copy of Learn&Drop without the A/A control beside it: timed against full training.
    assert proof.main([*args[:-1], "random-drop", "--no-aa-control",
                       "--lr-decay-fraction", "0.5"]) == 0
    rows = json.loads((out / "resnet32" / "bench.json").read_text())["rows"]
    assert {"random-drop", "learndrop"} <= set(rows) and "full-aa" not in rows
    assert rows["random-drop"]["time_reference"] == "full"
    with pytest.raises(proof.ConfigError, match="none is asked for; leave it out"):
        proof.main([*args, "--no-aa-control", "--lr-decay-fraction", "0.5"])
    with pytest.raises(proof.ConfigError, match="always trains the A/A control"):
        proof.main(["--profile", "smoke", "--out", str(out), "--no-aa-control"])
    plan = (out / "proof-plan.json").read_text()
    assert json.loads(plan)["settings"]["lr_decay_fraction"] == 0.5
    readme = (out / "README.md").read_text()
    assert "the peak rate until the last 50% of each run's steps, then cosine to zero " \
        "(`--lr-decay-fraction`)" in readme
    # The decay fills the last epochs: their gain says nothing about convergence.
    assert "not a convergence check here: the learning rate decays over the last 50%" in readme
    # The same --out under the profile's schedule: refused before anything is written.
    with pytest.raises(proof.ConfigError, match="lr_decay_fraction=0.5, this bench asks for 1.0"):
        proof.main(args)
    assert (out / "proof-plan.json").read_text() == plan
    with pytest.raises(proof.ConfigError, match=r"--lr-decay-fraction must be in \(0, 1\]"):
        proof.main([*args, "--lr-decay-fraction", "0"])
    with pytest.raises(proof.ConfigError, match="leave out --lr-decay-fraction"):
        proof.main(["--profile", "smoke", "--out", str(out), "--report-only",
                    "--lr-decay-fraction", "0.5"])


def test_a_profile_pins_the_options_its_runs_were_made_with(benchmark_script):
    """cpu-depth's committed Learn&Drop runs predate the late-drop guard's default: its runs
    keep the guard off, and only methods that have the option receive it (a bench of
    random-drop alone would otherwise refuse an option none of its methods has)."""
    import argparse

    proof = benchmark_script("proof")
    args = argparse.Namespace(dataset="fashion-mnist", device="cpu", lr_decay_fraction=None)
    profile = proof.PROFILES["cpu-depth"]
    base = proof.base_config(profile, "resnet56", 20, args, ("full", "learndrop"))
    assert base.method_options == {"min_lr_fraction": 0.0}
    assert proof.base_config(profile, "resnet56", 20, args, ("full", "random-drop")
                             ).method_options == {}
    assert proof.base_config(proof.PROFILES["gpu"], "resnet56", 20, args, ("learndrop",)
                             ).method_options == {}
