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
    assert f"{precision} channels_last" in lines[0]
    assert summary["final_test_acc"] > 0.1  # it trained (10 classes: chance is 0.1)
    assert summary["fwd_flops"] == summary["fwd_flops_full"] > 0  # FLOPs do not depend on it


def test_emulated_bf16_is_said_in_the_log_line(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert str(resolve_precision("bf16", "cpu")).startswith("bf16 channels_last (emulated")
    assert str(resolve_precision("fp32", "cpu")) == "fp32 channels_last"
