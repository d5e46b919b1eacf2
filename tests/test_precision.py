"""Precision and memory format: what ``auto`` picks, and that a run records what ran."""

import os

import pytest
import torch

from learndrop.models import create_model
from learndrop.precision import PrecisionError, native_bf16, resolve_precision
from learndrop.train import TrainConfig, train
from learndrop.train.config import ConfigError


def test_auto_follows_native_bf16(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu).name == ("bf16" if native_bf16(cpu) else "fp32")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert native_bf16(cpu)
    assert resolve_precision("auto", cpu).name == "bf16"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert not native_bf16(cpu)
    chosen = resolve_precision("auto", cpu)
    assert (chosen.name, chosen.channels_last, chosen.native) == ("fp32", True, False)
    # An explicit choice is honoured even where bf16 is only emulated.
    assert resolve_precision("bf16", cpu).name == "bf16"
    assert resolve_precision("fp32", cpu).name == "fp32"


def test_unknown_precision_is_one_line_error():
    with pytest.raises(PrecisionError, match="must be one of auto, fp32, bf16"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ConfigError, match="--precision must be one of"):
        TrainConfig(precision="half").validate()


def test_bf16_autocast_runs_convolutions_in_bf16():
    model = create_model("resnet20", num_classes=10, in_channels=1)
    x = torch.randn(2, 1, 16, 16)
    with resolve_precision("bf16", "cpu").autocast():
        assert model(x).dtype == torch.bfloat16
    with resolve_precision("fp32", "cpu").autocast():
        assert model(x).dtype == torch.float32


@pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist") and not os.environ.get("LEARNDROP_DATA"),
    reason="Fashion-MNIST not installed (make test installs dataset-fashion-mnist)",
)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_summary_says_what_ran(tmp_path, precision, one_thread):
    lines = []
    config = TrainConfig(model="resnet20", dataset="fashion-mnist", method="full", epochs=1,
                         subset=256, test_subset=200, batch_size=64, image_size=16,
                         precision=precision, out=str(tmp_path / "run"), quiet=True,
                         plots=False)
    summary = train(config, log=lines.append)
    assert summary["precision"] == precision
    assert summary["memory_format"] == "channels_last"
    from learndrop.machine import cpu_model, machine_name

    assert summary["machine"] == machine_name("cpu") and summary["machine"].startswith(cpu_model())
    assert f"{precision} channels_last" in lines[0]
    assert summary["final_test_acc"] > 0.1  # it trained (10 classes: chance is 0.1)
    assert summary["fwd_flops"] == summary["fwd_flops_full"] > 0  # FLOPs do not depend on it


def test_emulated_bf16_is_said_in_the_log_line(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert str(resolve_precision("bf16", "cpu")).startswith("bf16 channels_last (emulated")
    assert str(resolve_precision("fp32", "cpu")) == "fp32 channels_last"


@pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist") and not os.environ.get("LEARNDROP_DATA"),
    reason="Fashion-MNIST not installed (make test installs dataset-fashion-mnist)",
)
def test_auto_is_recorded_as_what_ran_and_a_resumed_run_keeps_it(tmp_path, monkeypatch,
                                                                  one_thread):
    """``auto`` resolves per machine; the run's record holds the precision it trained with, so
    that a run started on a CPU without native bf16 goes on in fp32 when resumed on one with it
    (and the other way round), unless ``--precision`` is given."""
    import json
    import signal

    from learndrop.train import TrainingInterrupted

    def stop_after_epoch_1(line: str) -> None:
        if line.startswith("epoch 1/2:"):
            os.kill(os.getpid(), signal.SIGINT)

    def machine(bf16: bool) -> None:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)

    run = tmp_path / "run"
    config = TrainConfig(model="resnet20", dataset="fashion-mnist", method="full", epochs=2,
                         subset=128, test_subset=100, batch_size=64, image_size=16,
                         out=str(run), quiet=True, plots=False)
    assert config.precision == "auto"
    machine(bf16=False)
    with pytest.raises(TrainingInterrupted):
        train(config, log=stop_after_epoch_1)
    assert json.loads((run / "config.json").read_text())["precision"] == "fp32"
    assert torch.load(run / "last.ckpt", weights_only=True)["config"]["precision"] == "fp32"
    machine(bf16=True)  # resumed on a machine where auto means bf16
    lines = []
    summary = train(TrainConfig(resume=str(run), quiet=True, plots=False), log=lines.append)
    assert summary["precision"] == "fp32" and "fp32 channels_last" in lines[1]
    # A new run on that machine records bf16.
    config.out = str(tmp_path / "new")
    config.precision = "auto"
    config.epochs = 1
    assert train(config, log=lambda s: None)["precision"] == "bf16"
    assert json.loads((tmp_path / "new" / "config.json").read_text())["precision"] == "bf16"


def test_the_bench_does_not_mix_precisions(tmp_path, monkeypatch):
    """A bench compares existing runs by the precision they trained with, not by what was
    asked: ``auto`` on a CPU with native bf16 is not the same experiment as the fp32 runs a CPU
    without it made, and an explicit ``fp32`` is the same as ``auto`` that ran in fp32."""
    import json

    from learndrop.bench.plan import check_same_experiment

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    config = TrainConfig(model="resnet20", method="full", device="cpu")
    run = tmp_path / "full-s0"
    run.mkdir()
    # A finished run from before the record: config.json says auto, its summary says fp32.
    (run / "config.json").write_text(json.dumps({**config.record(), "precision": "auto"}))
    (run / "summary.json").write_text(json.dumps({"precision": "fp32"}))
    with pytest.raises(ConfigError, match=r"trained in fp32, this bench asks for bf16 "
                                          r"\(--precision auto on this machine\); pass "
                                          r"--precision fp32 to go on with that run"):
        check_same_experiment(config, run)
    config.precision = "fp32"
    check_same_experiment(config, run)
    # A run that recorded what ran.
    (run / "config.json").write_text(json.dumps({**config.record(), "precision": "bf16"}))
    with pytest.raises(ConfigError, match="trained in bf16, this bench asks for fp32; pass "
                                          "--precision bf16"):
        check_same_experiment(config, run)
    # A CPU run from before --precision existed trained in fp32.
    legacy = {k: v for k, v in config.record().items() if k != "precision"}
    (run / "config.json").write_text(json.dumps(legacy))
    (run / "summary.json").write_text(json.dumps({"device": "cpu"}))
    config.precision = "auto"
    with pytest.raises(ConfigError, match="trained in fp32, this bench asks for bf16"):
        check_same_experiment(config, run)
    # An unfinished run recorded with auto does not say: it is taken (and continues as asked).
    (run / "summary.json").unlink()
    (run / "config.json").write_text(json.dumps({**config.record(), "precision": "auto"}))
    check_same_experiment(config, run)
