"""The trainer and `learndrop train` end to end, on real (small) Fashion-MNIST runs."""

import json
import os
import signal
import tarfile

import pytest
import torch

from learndrop import load_slim
from learndrop.cli import main
from learndrop.train import TrainConfig, TrainingInterrupted, train
from learndrop.train.config import ConfigError
from learndrop.train.rundir import RunDirExistsError

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist") and not os.environ.get("LEARNDROP_DATA"),
    reason="Fashion-MNIST not installed (make test installs dataset-fashion-mnist)",
)

SUMMARY_KEYS = {
    "method", "model", "dataset", "epochs", "samples_seen", "train_time_s", "final_test_acc",
    "best_test_acc", "fwd_flops", "fwd_flops_full", "fwd_flops_reduction", "bwd_flops",
    "bwd_flops_full", "bwd_flops_reduction", "params_initial", "params_final", "units_total",
    "units_dropped", "drops",
}


def small(tmp_path, name="run", **overrides) -> TrainConfig:
    """ResNet-20 on 640 Fashion-MNIST images, 4 epochs, a policy eager enough to drop (costs are
    measured and recorded, but no unit is too costly to drop)."""
    values = dict(
        model="resnet20", dataset="fashion-mnist", epochs=4, subset=640, test_subset=500,
        batch_size=64, lr=0.05, image_size=16, out=str(tmp_path / name), quiet=True,
        plots=False, method_options={"change_threshold": 0.9, "max_drops_per_check": 2,
                                      "max_drop_cost": float("inf")},
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_run_directory_contents(tmp_path):
    config = small(tmp_path, plots=True)
    summary = train(config, log=lambda s: None)
    run = tmp_path / "run"
    assert SUMMARY_KEYS <= set(summary)
    assert json.loads((run / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert json.loads((run / "config.json").read_text())["model"] == "resnet20"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    for key in ("step", "time_s", "lr", "train_loss", "test_acc", "units_live", "scores",
                "fwd_flops", "fwd_flops_full", "bwd_flops", "bwd_flops_full"):
        assert key in rows[-1]
    assert rows[-1]["step"] == 4 * 10 and summary["samples_seen"] == 4 * 640
    # Each unit's measured drop cost (where measured) and action, in the rows that scored it.
    scored = [s for r in rows for s in r["scores"].values()]
    assert scored and all({"drop_cost", "action"} <= set(s) for s in scored)
    assert {d["unit"]: d["action"] for d in summary["drops"]} == {
        u: s["action"] for r in rows for u, s in r["scores"].items() if s["action"]}
    assert all(d["drop_cost"] is not None for d in summary["drops"])
    assert 0 < summary["extra_fwd_flops"] < summary["fwd_flops"]
    assert summary["units_dropped"] + summary["units_frozen"] == len(summary["drops"])
    assert summary["units_dropped"] > 0
    assert all(d["step"] < 4 * 10 for d in summary["drops"])  # never at the last check
    assert set(summary["drops"][0]) >= {"unit", "epoch", "step", "change_score",
                                        "continuation_score"}
    assert summary["params_final"] < summary["params_initial"]
    assert summary["final_test_acc"] > 0.3  # it learned something in 4 short epochs
    # model.pt is the slim network, rebuilt without unpickling code.
    assert torch.load(run / "model.pt", weights_only=True)["format"] == "learndrop.slim/1"
    model = load_slim(run / "model.pt")
    assert sum(p.numel() for p in model.parameters()) == summary["params_final"]
    assert model.eval()(torch.zeros(2, 1, 16, 16)).shape == (2, 10)
    for png in ("accuracy_loss.png", "flops_per_step.png", "unit_scores.png"):
        assert (run / png).stat().st_size > 1000
    assert (run / "last.ckpt").is_file()
    assert not list(run.glob(".*tmp"))  # atomic writes leave nothing behind

    with pytest.raises(RunDirExistsError, match="--resume"):
        train(small(tmp_path), log=lambda s: None)


def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(tmp_path):
    reference = train(small(tmp_path, "straight"), log=lambda s: None)

    def interrupt_after_epoch_2(line: str) -> None:
        if line.startswith("epoch 2/4:"):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, caught by the trainer

    with pytest.raises(TrainingInterrupted, match="--resume"):
        train(small(tmp_path, "resumed"), log=interrupt_after_epoch_2)
    ckpt = torch.load(tmp_path / "resumed" / "last.ckpt", weights_only=True)
    assert (ckpt["epoch"], ckpt["batch"]) == (2, 1)  # stopped one step into epoch 3
    assert not (tmp_path / "resumed" / "summary.json").exists()

    resumed = train(TrainConfig(resume=str(tmp_path / "resumed"), quiet=True, plots=False),
                    log=lambda s: None)
    strip = [{k: d[k] for k in ("unit", "step")} for d in reference["drops"]]
    assert [{k: d[k] for k in ("unit", "step")} for d in resumed["drops"]] == strip
    assert resumed["final_test_acc"] == reference["final_test_acc"]
    assert resumed["fwd_flops"] == reference["fwd_flops"]
    rows = [json.loads(r) for r in (tmp_path / "resumed" / "metrics.jsonl").read_text()
            .splitlines()]
    straight = [json.loads(r) for r in (tmp_path / "straight" / "metrics.jsonl").read_text()
                .splitlines()]
    # Epoch 3 was resumed after its first step: its row still covers the whole epoch.
    for key in ("train_loss", "train_acc", "test_acc", "dropped"):
        assert [r[key] for r in rows] == [r[key] for r in straight], key


def test_full_and_freeze_methods(tmp_path):
    full = train(small(tmp_path, "full", method="full", epochs=2, method_options={}),
                 log=lambda s: None)
    assert full["fwd_flops_reduction"] == 0 and full["units_dropped"] == 0
    frozen = train(small(tmp_path, "freeze", method="freeze", epochs=4), log=lambda s: None)
    assert frozen["units_frozen"] > 0 and frozen["units_dropped"] == 0
    # Freezing keeps every forward pass; only the check losses and drop costs are extra.
    assert frozen["fwd_flops"] == pytest.approx(frozen["fwd_flops_full"]
                                                + frozen["extra_fwd_flops"])
    assert frozen["bwd_flops_reduction"] > 0
    assert frozen["params_final"] == frozen["params_initial"]


def test_folder_dataset_from_a_tar_gz(tmp_path):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for split, n in (("train", 12), ("test", 4)):
            for cls in ("cats", "dogs"):
                for i in range(n):
                    path = tmp_path / f"{split}-{cls}-{i}.png"
                    pixels = torch.randint(0, 256, (16, 16, 3), generator=g, dtype=torch.uint8)
                    Image.fromarray(pixels.numpy()).save(path)
                    tar.add(path, f"{split}/{cls}/{i}.png")
    summary = train(TrainConfig(model="resnet20", dataset=f"folder:{archive}", epochs=1,
                                subset=None, batch_size=8, out=str(tmp_path / "run"),
                                quiet=True, plots=False), log=lambda s: None)
    assert summary["samples_seen"] == 24 and summary["dataset"].startswith("folder:")


def run_cli(*argv, capsys):
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "resnet57"], "unknown model 'resnet57'"),
        (["--dataset", "svhn"], "unknown dataset"),
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--lr", "-1"], "--lr must be > 0"),
        (["--eval-batch-size", "0"], "--eval-batch-size must be >= 1"),
        (["--change-threshold", "-0.5"], "change_threshold=-0.5 is invalid"),
        (["--max-dropped-fraction", "1.5"], "max_dropped_fraction=1.5 is invalid"),
        (["--dataset", "cifar10", "--data-dir", "/nonexistent"], "cifar10"),
        (["--weights", "/nonexistent.pt"], "--weights /nonexistent.pt: no such file"),
        (["--method", "random-drop"], "needs --reference"),
        (["--lr-decay-fraction", "0"], "--lr-decay-fraction must be in (0, 1]"),
        (["--stream", "--lr-decay-fraction", "0.5"], "a constant-rate stream has none"),
        # options that would do nothing in this setting are refused, not ignored
        (["--steps-per-check", "5"], "--steps-per-check is an option of --stream"),
        (["--stream-length", "3"], "--stream-length is an option of --stream"),
        (["--stream", "--epochs", "50"], "--epochs 50: a stream is one pass"),
        (["--stream", "--epochs", "8"], "--epochs 8: a stream is one pass"),  # the default
        (["--eval-every", "100"], "--eval-every is an option of --stream"),  # the default
        (["--stream", "--warmup-epochs", "3"], "pass --warmup-steps N instead"),
        (["--stream", "--classes-per-stage", "3"], "add --stream-order class-incremental"),
        (["--stream", "--min-lr-fraction", "0.5"], "constant-rate stream never decays"),
        (["--method", "freeze", "--recalibration-batches", "8"], "nothing to recalibrate"),
        (["--pretrained", "--weights", "w.pt"], "pass one of them"),
        (["--model", "resnet20", "--pretrained"], "no pretrained weights for resnet20"),
        (["--dataset", "folder:/tmp", "--data-dir", "/data"], "leave --data-dir out"),
        (["--nproc", "2", "--epochs", "0"], "--epochs must be >= 1"),  # before torchrun
    ],
)
def test_bad_input_is_one_line_and_non_zero(tmp_path, capsys, argv, message):
    code, err = run_cli("train", "--out", str(tmp_path / "r"), "--quiet", *argv, capsys=capsys)
    assert code != 0
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r" / "summary.json").exists()


def test_a_damaged_reference_summary_is_one_line(tmp_path, capsys):
    reference = tmp_path / "ref"
    reference.mkdir()
    (reference / "summary.json").write_text('{"drops": [')  # cut off mid-write
    code, err = run_cli("train", "--method", "random-drop", "--reference", str(reference),
                        "--out", str(tmp_path / "r"), "--quiet", capsys=capsys)
    assert code != 0 and len(err.splitlines()) == 1
    assert "cannot read" in err and "summary.json" in err and "train the reference" in err


def test_a_run_extended_in_its_stable_phase_takes_the_longer_runs_own_schedule(tmp_path,
                                                                               capsys):
    """``--lr-decay-fraction 0.5``: stopped after epoch 1 of 4 (still at the peak rate) and
    resumed with ``--epochs 8``, the run follows the 8-epoch schedule itself: the peak until
    epoch 4, the decay over the last 4 epochs."""
    from learndrop.train.builder import warmup_cosine

    def stop_after_epoch_1(line: str) -> None:
        if line.startswith("epoch 1/4:"):
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted):
        train(small(tmp_path, "wsd", epochs=4, subset=128, test_subset=100, method="full",
                    method_options={}, lr_decay_fraction=0.5), log=stop_after_epoch_1)
    code = main(["train", "--resume", str(tmp_path / "wsd"), "--epochs", "8", "--quiet",
                 "--no-plots"])
    assert code == 0 and "before its learning-rate decay" in capsys.readouterr().out
    rates = [json.loads(r)["lr"] for r in
             (tmp_path / "wsd" / "metrics.jsonl").read_text().splitlines()]
    factor = warmup_cosine(16, 2, 0.5)  # 2 steps an epoch, 1 epoch of warm-up
    assert rates == pytest.approx([0.05 * factor(2 * e) for e in range(1, 9)], abs=1e-9)
    assert rates[:4] == pytest.approx([0.05] * 4) and rates[-1] == pytest.approx(0, abs=1e-9)


def test_warmup_stable_decay_holds_the_peak_until_the_decay(tmp_path):
    """``--lr-decay-fraction 0.5`` on 4 epochs of 10 steps (1 of warm-up): the rate is at its
    peak at the ends of epochs 1 and 2, half way down the cosine at epoch 3, zero at the end;
    the factor itself is the plain warm-up-cosine at 1.0 and moves with a fractional position
    (learning-rate rewinding asks for one)."""
    from learndrop.train.builder import warmup_cosine

    plain, wsd = warmup_cosine(40, 10), warmup_cosine(40, 10, 0.5)
    assert [wsd(t) for t in (0, 9, 10, 20)] == [0.1, 1.0, 1.0, 1.0]
    assert wsd(30) == pytest.approx(0.5) and wsd(40) == pytest.approx(0.0)
    assert plain(25) == pytest.approx(0.5) and plain(10) == 1.0
    assert warmup_cosine(40, 10, 1.0)(17.5) == pytest.approx(plain(17.5))
    assert wsd(20) > wsd(20.5) > wsd(21)
    with pytest.raises(ConfigError, match="leaves the decay 1 of the run's 40 steps"):
        warmup_cosine(40, 10, 0.02)  # a run that would end at its peak rate
    train(small(tmp_path, method="full", method_options={}, lr_decay_fraction=0.5),
          log=lambda s: None)
    rates = [json.loads(r)["lr"] for r in (tmp_path / "run" / "metrics.jsonl").read_text()
             .splitlines()]
    assert rates == pytest.approx([0.05, 0.05, 0.025, 0.0], abs=1e-9)


def test_corrupt_archive(tmp_path, capsys):
    archive = tmp_path / "broken.tar.gz"
    archive.write_bytes(b"\x1f\x8b\x08\x00 definitely not a tarball")
    code, err = run_cli("train", "--dataset", f"folder:{archive}", "--out",
                        str(tmp_path / "r"), "--quiet", capsys=capsys)
    assert code != 0 and "broken.tar.gz" in err and len(err.splitlines()) == 1


def test_nan_loss_stops_with_a_clear_error(tmp_path, capsys):
    code, err = run_cli("train", "--subset", "640", "--epochs", "2", "--lr", "1e30",
                        "--out", str(tmp_path / "r"), "--quiet", "--no-plots", capsys=capsys)
    assert code != 0 and "loss became" in err and "--lr" in err
    assert not (tmp_path / "r" / "summary.json").exists()


def test_existing_run_is_not_overwritten_silently(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    code, err = run_cli("train", "--out", str(out), "--quiet", capsys=capsys)
    assert code != 0 and "--overwrite" in err
    assert (out / "summary.json").read_text() == "{}"


def test_resume_refuses_what_would_change_the_experiment_and_extends_epochs(tmp_path, capsys):
    """--resume keeps the experiment: options that change it are refused in one line, a longer
    --epochs is applied (and said) while the learning rate is above zero."""
    tiny = dict(epochs=2, subset=128, test_subset=100, batch_size=64)

    def stop_after_epoch_1(line: str) -> None:
        if line.startswith("epoch 1/2:"):
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted):
        train(small(tmp_path, "cut", **tiny), log=stop_after_epoch_1)
    run = tmp_path / "cut"
    config_before = (run / "config.json").read_text()
    for argv, message in ((["--lr", "0.01"], "--lr 0.01"), (["--model", "resnet32"], "--model"),
                          (["--change-threshold", "0.5"], "--change-threshold 0.5"),
                          (["--epochs", "1"], "can only get longer"),
                          (["--overwrite"], "contradict")):
        code, err = run_cli("train", "--resume", str(run), *argv, capsys=capsys)
        assert code != 0 and message in err and len(err.splitlines()) == 1, err
    assert (run / "config.json").read_text() == config_before

    # Where and how it reports may change (--eval-batch-size: memory only).
    code = main(["train", "--resume", str(run), "--epochs", "3", "--quiet", "--no-plots",
                 "--eval-batch-size", "30"])
    out = capsys.readouterr().out
    assert code == 0 and "extending" in out and "from 2 to 3 epochs" in out
    summary = json.loads((run / "summary.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert summary["epochs"] == 3 and [r["epoch"] for r in rows] == [1, 2, 3]
    assert summary["samples_seen"] == 3 * 128
    assert rows[1]["lr"] > 0 and rows[-1]["lr"] == pytest.approx(0, abs=1e-12)  # decays to zero

    code, err = run_cli("train", "--resume", str(run), capsys=capsys)
    assert code != 0 and "already finished" in err
    code, err = run_cli("train", "--resume", str(run), "--epochs", "5", capsys=capsys)
    assert code != 0 and "decayed to zero" in err and len(err.splitlines()) == 1


def test_a_resumed_run_keeps_the_options_it_started_with_after_a_default_changed(
        tmp_path, capsys):
    """A run records every method option with its value, defaults included; resumed by a
    version whose default differs, it goes on with the value it started with, and refuses the
    new one if given."""
    from learndrop.train.config import RESOLVED_OPTIONS

    def stop_after_epoch_1(line: str) -> None:
        if line.startswith("epoch 1/2:"):
            os.kill(os.getpid(), signal.SIGINT)

    config = small(tmp_path, "cut", epochs=2, subset=128, test_subset=100, method_options={})
    with pytest.raises(TrainingInterrupted):
        train(config, log=stop_after_epoch_1)
    run = tmp_path / "cut"
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["method_options"] == {}
    assert recorded[RESOLVED_OPTIONS] == config.resolved_method_options()
    assert recorded[RESOLVED_OPTIONS]["patience"] == 1  # today's default, written down
    # As if started by a version whose default patience was 3:
    ckpt = torch.load(run / "last.ckpt", weights_only=True)
    ckpt["config"][RESOLVED_OPTIONS]["patience"] = 3
    torch.save(ckpt, run / "last.ckpt")
    code, err = run_cli("train", "--resume", str(run), "--patience", "1", capsys=capsys)
    assert code != 0 and "--patience 1 (the run has 3)" in err and len(err.splitlines()) == 1
    assert main(["train", "--resume", str(run), "--quiet", "--no-plots"]) == 0
    resumed = json.loads((run / "config.json").read_text())
    assert resumed["method_options"] == {"patience": 3}
    assert resumed[RESOLVED_OPTIONS] == {**recorded[RESOLVED_OPTIONS], "patience": 3}
    assert torch.load(run / "last.ckpt", weights_only=True)["method"]["policy"]["patience"] == 3
    # Giving the value the run used is no change, whether it was given or a default then.
    from learndrop.train.trainer import resume_config

    for value in (1, 3):
        saved = {**ckpt["config"], RESOLVED_OPTIONS: {**ckpt["config"][RESOLVED_OPTIONS],
                                                      "patience": value}}
        asked = TrainConfig(resume=str(run), method_options={"patience": value})
        resumed = resume_config(asked, saved, {"method_options", "resume"}, run / "last.ckpt")
        assert resumed.resolved_method_options()["patience"] == value


def test_trainings_in_lockstep_match_separate_runs(tmp_path):
    """Training(config).epochs() lets another loop run several trainings one epoch at a time in
    one process (as the bench's lockstep runs do): each ends as it would alone."""
    from learndrop.train import Training
    from learndrop.train.steps import StopFlag

    tiny = dict(epochs=2, subset=128, test_subset=100, batch_size=64)
    with StopFlag() as stop:  # one Ctrl-C flag for both
        a = Training(small(tmp_path, "a", **tiny), log=lambda s: None, stop=stop)
        b = Training(small(tmp_path, "b", method="full", method_options={}, **tiny),
                     log=lambda s: None, stop=stop)
        order = []
        for row_a, row_b in zip(a.epochs(), b.epochs(), strict=True):
            order += [("a", row_a["epoch"]), ("b", row_b["epoch"])]
        together = a.finish()
        b.finish()
    assert order == [("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    alone = train(small(tmp_path, "alone", **tiny), log=lambda s: None)
    for key in ("final_test_acc", "fwd_flops", "drops", "samples_seen"):
        assert together[key] == alone[key], key


def test_zero_means_the_whole_set_for_both_subsets():
    from learndrop.cli import build_parser, config_from_args

    args = build_parser().parse_args(["train", "--subset", "0", "--test-subset", "0"])
    config = config_from_args(args)
    assert (config.subset, config.test_subset) == (None, None)
    config.validate()
    assert TrainConfig(subset=0, test_subset=0).test_subset is None
    with pytest.raises(ValueError, match=r"--test-subset must be >= 1 \(or 0 for the whole"):
        TrainConfig(test_subset=-1).validate()


# ---- found by trying to break the run directory and --resume (review of issues 11 and 14) ----

TINY_CLI = ["--model", "resnet20", "--dataset", "fashion-mnist", "--subset", "100",
            "--test-subset", "50", "--image-size", "16", "--batch-size", "32", "--quiet",
            "--no-plots"]


def test_resume_keeps_the_precision_the_run_started_with(tmp_path):
    run = tmp_path / "run"
    assert main(["train", *TINY_CLI, "--epochs", "1", "--precision", "bf16", "--method", "full",
                 "--out", str(run)]) == 0
    ckpt = torch.load(run / "last.ckpt", weights_only=True)
    ckpt["config"]["epochs"] = 2  # as if interrupted after epoch 1 of 2
    torch.save(ckpt, run / "last.ckpt")
    assert main(["train", "--resume", str(run), "--quiet", "--no-plots"]) == 0
    assert json.loads((run / "summary.json").read_text())["precision"] == "bf16"


def test_resume_of_a_weights_file_says_what_is_wrong(tmp_path, capsys):
    from learndrop.models import create_model

    path = tmp_path / "plain.pt"
    torch.save(create_model("resnet20", in_channels=1).state_dict(), path)
    assert main(["train", "--resume", str(path), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a learndrop checkpoint" in err and "--weights" in err


def test_overwrite_keeps_the_old_run_when_the_new_one_cannot_start(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text("{}")
    (run / "model.pt").write_bytes(b"old")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert main(["train", *TINY_CLI, "--epochs", "1", "--weights", str(empty),
                 "--out", str(run), "--overwrite"]) == 1
    assert (run / "summary.json").read_text() == "{}" and (run / "model.pt").exists()
    fresh = tmp_path / "fresh"
    assert main(["train", *TINY_CLI, "--epochs", "1", "--weights", str(empty),
                 "--out", str(fresh)]) == 1
    assert not fresh.exists()  # a run that cannot start leaves no directory behind
