"""benchmarks/finetune.py: pretraining on CIFAR-10 classes 0-4, then a fine-tuning bench (with
its budget frontier and seeds) on classes 5-9, on a few images of the offline tarball."""

import json
from pathlib import Path

import pytest

TARBALL = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg.tar.gz"
pytestmark = pytest.mark.skipif(not TARBALL.is_file(),
                                reason=f"the offline CIFAR-10 tarball is not at {TARBALL}")

TINY = ["--pretrain-subset", "100", "--finetune-subset", "100", "--test-per-class", "20",
        "--pretrain-epochs", "2", "--epochs", "4", "--seeds", "2", "--methods", "full,learndrop",
        "--budgets", "0.5", "--no-scratch"]


def test_fine_tuning_bench_sets_learndrop_against_the_fine_tuning_frontier(
        tmp_path, one_thread, capsys, benchmark_script):
    finetune = benchmark_script("finetune")
    out, work = tmp_path / "ft", tmp_path / "work"
    argv = [*TINY, "--out", str(out), "--work", str(work)]
    assert finetune.main(argv) == 0
    bench = json.loads((out / "bench" / "bench.json").read_text())
    assert set(bench["rows"]) == {"full", "learndrop", "full-b0.5", "full-aa"}
    assert bench["seeds"] == [0, 1] and bench["frontier"]
    full = json.loads((out / "bench" / "full-s1" / "config.json").read_text())
    assert full["weights"] == str(out / "pretrain" / "model.pt") and full["replace_head"] == 5
    assert full["precision"] == "fp32" and full["seed"] == 1
    from learndrop.train.builder import file_sha256

    assert full["weights_sha256"] == file_sha256(out / "pretrain" / "model.pt")
    tuned = json.loads((out / "bench" / "full-s0" / "summary.json").read_text())
    assert tuned["final_test_acc"] > 0 and tuned["epochs"] == 4
    assert "[bench/bench.md](bench/bench.md)" in (out / "results.md").read_text()
    # Run again: everything is kept, the dry run included.
    capsys.readouterr()
    assert finetune.main(argv) == 0
    assert "pretrain: done, kept" in capsys.readouterr().out
    assert finetune.main([*argv, "--dry-run"]) == 0
    # Without the pretrained weights the runs that started from them cannot be kept, and
    # the pretraining is not trained again (on another CPU it would round differently):
    # refused in one line, nothing touched; the file restored, all is kept again.
    saved = (out / "pretrain" / "model.pt").read_bytes()
    (out / "pretrain" / "model.pt").unlink()
    capsys.readouterr()
    assert finetune.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.pt is missing" in err and "restore it" in err
    (out / "pretrain" / "model.pt").write_bytes(saved)
    assert finetune.main(argv) == 0
    assert "full-s0: done, kept" in capsys.readouterr().out
    # Other pretraining settings: the finished pretraining is not taken for them.
    assert finetune.main([*argv, "--pretrain-lr", "0.02"]) == 1
    assert "lr=0.05, this bench asks for 0.02" in capsys.readouterr().err


def test_fine_tuning_dry_run_before_the_pretraining(tmp_path, capsys, benchmark_script):
    finetune = benchmark_script("finetune")
    out = tmp_path / "ft"
    assert finetune.main([*TINY, "--out", str(out), "--work", str(tmp_path / "w"),
                          "--dry-run"]) == 0
    assert "the fine-tuning plan is checked without it" in capsys.readouterr().out
    assert not out.exists()


def test_fine_tuning_bench_refuses_a_bad_variant_in_one_line(tmp_path, capsys, benchmark_script):
    finetune = benchmark_script("finetune")
    code = finetune.main([*TINY, "--out", str(tmp_path / "ft"), "--work", str(tmp_path / "w"),
                          "--variant", "x=learndrop:no_such_option=1"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "no_such_option" in err
    assert not (tmp_path / "ft").exists()
