"""``--tensorboard``: the metrics of metrics.jsonl as TensorBoard scalars."""

import json
import os
import sys

import pytest
import torch

from learndrop.train import ConfigError, TrainConfig, train
from learndrop.train.tensorboard import TensorBoardLog, scalars


def test_scalars_of_a_metrics_row():
    row = {"epoch": 2, "step": 20, "test_acc": 0.5, "units_live": 6, "dropped": ["layer1.0"],
           "scores": {"layer1.1": {"change": 0.2, "ratio": float("nan")}}}
    assert scalars(row) == {"test_acc": 0.5, "units_live": 6.0, "scores/layer1.1/change": 0.2}


def test_missing_tensorboard_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(ConfigError, match=r"pip install 'learndrop\[tensorboard\]'"):
        TensorBoardLog(tmp_path)


@pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist") and not os.environ.get("LEARNDROP_DATA"),
    reason="Fashion-MNIST not installed (make test installs dataset-fashion-mnist)",
)
def test_run_writes_its_metrics_as_scalars(tmp_path, one_thread):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(TrainConfig(model="resnet20", epochs=2, subset=128, test_subset=100,
                      batch_size=32, image_size=16, out=str(tmp_path / "run"), quiet=True,
                      plots=False, tensorboard=True), log=lambda s: None)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
            .splitlines()]
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train_loss", "test_acc", "lr", "fwd_flops", "units_live"} <= tags
    points = events.Scalars("test_acc")
    assert [p.step for p in points] == [r["step"] for r in rows] == [4, 8]
    assert [p.value for p in points] == pytest.approx([r["test_acc"] for r in rows])


def test_a_stream_writes_its_metrics_as_scalars(tmp_path, one_thread):
    """``--stream --tensorboard``: the stream loop reports through the same metrics log."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from learndrop.train.stream import train_stream

    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 1, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g))
               for _ in range(6)]
    train_stream(TrainConfig(model="resnet20", method="full", batch_size=8, eval_every=3,
                             steps_per_check=3, out=str(tmp_path / "run"), quiet=True, plots=False,
                             device="cpu", tensorboard=True),
                 batches, test_batches=batches[:1], num_classes=10, log=lambda s: None)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert [p.step for p in events.Scalars("test_acc")] == [3, 6]
