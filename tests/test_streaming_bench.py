"""benchmarks/streaming.py: Learn&Drop on a one-pass stream against the stream frontier (full
training on the first part of the same stream), seeds and all, on a few Fashion-MNIST images."""

import json
import os

import pytest

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist") and not os.environ.get("LEARNDROP_DATA"),
    reason="Fashion-MNIST not installed (make test installs dataset-fashion-mnist)",
)

ARGS = ["--subset", "256", "--test-subset", "100", "--image-size", "8", "--batch-size", "32",
        "--steps-per-check", "2", "--eval-every", "4", "--orders", "dataset",
        "--budgets", "0.25,0.5", "--seeds", "0,1",
        "--policy", '{"warmup_checks": 0, "max_drop_cost": Infinity, "max_loss_rise": Infinity}']


def test_stream_frontier_and_seeds(tmp_path, one_thread, capsys, benchmark_script):
    streaming = benchmark_script("streaming")
    out = tmp_path / "s"
    streaming.main([*ARGS, "--out", str(out)])
    names = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert names == sorted(f"dataset-{label}-s{seed}" for seed in (0, 1)
                           for label in ("full", "learndrop", "full-b0.25", "full-b0.5"))
    budget = json.loads((out / "dataset-full-b0.25-s0" / "summary.json").read_text())
    assert budget["steps"] == 2  # a quarter of the 8 batches of the stream
    report = json.loads((out / "results.json").read_text())["orders"]["dataset"]
    assert [p["budget"] for p in report["points"]] == [0.25, 0.5, 1.0]
    assert all(p["seeds"] == 2 for p in report["points"])
    ld = report["rows"]["learndrop"]
    assert ld["seeds"] == [0, 1] and ld["acc_std"] is not None
    # (With checks every 2 steps the cost measurements outweigh what the drops save: here
    # Learn&Drop executes more FLOPs than full training, and the report must say so.)
    assert max(ld["units_dropped"]) >= 1 and ld["flops_ratio_vs_full"] > 0
    assert ld["verdict"] and report["rows"]["full"]["flops_ratio_vs_full"] == 1.0
    text = (out / "results.md").read_text()
    assert "stream frontier at its FLOPs" in text and "| learndrop | 2 |" in text
    # Run again: every run is kept, nothing retrained.
    streaming.main([*ARGS, "--out", str(out)])
    assert capsys.readouterr().out.count("done already, kept") == 8
    # The runs trained in fp32 (the default): a bf16 run of the same bench is another
    # experiment, refused in one line before anything trains.
    assert budget["precision"] == "fp32"
    with pytest.raises(SystemExit, match="trained in fp32, this run asks for bf16; pass "
                                         "--precision fp32"):
        streaming.main([*ARGS, "--out", str(out), "--precision", "bf16"])
    with pytest.raises(SystemExit, match="--seeds must be"):
        streaming.main([*ARGS[:-4], "--seeds", "0,0", "--out", str(out)])
    # Those runs took a constant rate: a cosine bench in the same place is another experiment.
    with pytest.raises(SystemExit, match="trained with a constant learning rate, this run asks "
                                         "for cosine; pass --stream-schedule constant"):
        streaming.main([*ARGS, "--out", str(out), "--stream-schedule", "cosine"])


def last_lr(run) -> float:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]["lr"]


def test_cosine_stream_compresses_each_budget_to_its_own_prefix(tmp_path, one_thread,
                                                                benchmark_script):
    streaming = benchmark_script("streaming")
    out = tmp_path / "c"
    args = [*ARGS[:-6], "--methods", "full", "--seeds", "0", "--budgets", "0.5"]
    streaming.main([*args, "--out", str(out), "--stream-schedule", "cosine"])
    whole, half = out / "dataset-full-s0", out / "dataset-full-b0.5-s0"
    for run in (whole, half):  # each run's rate decays to zero at the end of its own stream
        assert json.loads((run / "config.json").read_text())["stream_schedule"] == "cosine"
        assert last_lr(run) < 0.01 * 0.05
    assert json.loads((half / "summary.json").read_text())["steps"] == 4
    assert "in a cosine decay to zero" in (out / "results.md").read_text()
    constant = tmp_path / "k"
    streaming.main([*args, "--out", str(constant)])
    assert last_lr(constant / "dataset-full-b0.5-s0") == pytest.approx(0.05)
