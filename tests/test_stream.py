"""Online training on streams: each batch once, checks on schedule, bounded memory."""

import gc
import itertools
import json
import math
import os
import time
import tracemalloc

import pytest
import torch
from torch import nn

from learndrop.cli import main
from learndrop.data import ImageDataset
from learndrop.scores import HISTORY_KEEP, ScoreTracker
from learndrop.train import TrainConfig, TrainingDivergedError
from learndrop.train.stream import ClassIncrementalStream, DatasetStream, train_stream
from learndrop.units import find_units


class _Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                                  nn.ReLU(), nn.Conv2d(c, c, 3, padding=1, bias=False))

    def forward(self, x):
        return x + self.body(x)


def tiny_stream_net(num_classes: int = 4, in_channels: int = 1) -> nn.Module:
    """Two droppable residual blocks of 4 channels: thousands of steps in seconds."""
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), _Block(4), _Block(4),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))


@pytest.fixture(autouse=True)
def registered_tiny_net(monkeypatch):
    """Registers the tiny model for this file's tests only (the registry is global)."""
    from learndrop.models import registry

    monkeypatch.setitem(registry._MODELS, "tiny_stream_net", tiny_stream_net)


def indexed_dataset(n: int, classes: int) -> ImageDataset:
    """Images whose first pixel is their index (no augmentation, identity normalisation)."""
    x = torch.zeros(n, 1, 8, 8, dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    y = torch.arange(n) % classes
    return ImageDataset("indexed", x, y, x[:8], y[:8], [str(c) for c in range(classes)],
                        mean=(0.0,), std=(1.0,), natural=False)


def indices(x: torch.Tensor) -> list[int]:
    return (x[:, 0, 0, 0] * 255).round().long().tolist()


def test_dataset_stream_uses_each_sample_once():
    data = indexed_dataset(200, 4)
    seen = [i for x, _ in DatasetStream(data, 16, seed=3) for i in indices(x)]
    assert len(seen) == 200 == len(set(seen))  # 12 full batches and one of 8: each sample once
    assert seen != sorted(seen)  # shuffled
    assert len(list(DatasetStream(data, 16, length=5))) == 5


def test_class_incremental_stream_brings_classes_in_stages():
    data = indexed_dataset(240, 6)
    stream = ClassIncrementalStream(data, 10, seed=0, classes_per_stage=2)
    batches = list(stream)
    assert stream.stages == [[0, 1], [2, 3], [4, 5]]
    assert stream.stage_starts == [0, 8, 16] and len(batches) == len(stream) == 24
    for s, start in enumerate(stream.stage_starts):
        labels = torch.cat([y for _, y in batches[start:start + 8]])
        assert set(labels.tolist()) == set(stream.stages[s])
    seen = [i for x, _ in batches for i in indices(x)]
    assert len(seen) == len(set(seen)) == 240
    even = ClassIncrementalStream(data, 10, classes_per_stage=2, length=7)
    assert even.batches_per_stage == [3, 2, 2] and len(list(even)) == 7


def test_a_stream_trains_on_every_sample_once(tmp_path):
    """203 samples in batches of 8: 25 full batches and a last one of 3, all trained on."""
    data = indexed_dataset(203, 4)
    stream = DatasetStream(data, 8, seed=1)
    assert len(stream) == 26
    summary = train_stream(stream_config(tmp_path, method="full", method_options={}), stream,
                           test_batches=list(synthetic_batches(1)), num_classes=4,
                           log=lambda s: None)
    assert summary["steps"] == 26 and summary["samples_seen"] == 203
    rows = [json.loads(line) for line in
            (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["samples"] == 203  # the ledger's count (summary: method.summary())
    assert summary["fwd_flops"] == pytest.approx(203 * rows[-1]["fwd_flops_per_sample_full"])
    incremental = ClassIncrementalStream(data, 8, classes_per_stage=2)
    assert sum(len(y) for _, y in incremental) == 203


def synthetic_batches(count: int | None, batch: int = 8, classes: int = 4, seed: int = 0):
    """A generator (no len) of learnable batches: the class sets the mean brightness."""
    g = torch.Generator().manual_seed(seed)
    for _ in (range(count) if count is not None else itertools.count()):
        y = torch.randint(0, classes, (batch,), generator=g)
        x = torch.randn(batch, 1, 8, 8, generator=g) * 0.5 + y.view(-1, 1, 1, 1).float()
        yield x, y


def stream_config(tmp_path, name="run", **overrides) -> TrainConfig:
    values = dict(model="tiny_stream_net", method="learndrop", batch_size=8, lr=0.05,
                  steps_per_check=5, eval_every=10, out=str(tmp_path / name), quiet=True,
                  plots=False, device="cpu",
                  method_options={"change_threshold": 1.0, "max_drops_per_check": 1,
                                  "max_drop_cost": math.inf})
    values.update(overrides)
    return TrainConfig(**values)


def test_user_iterator_each_batch_once_and_checks_on_schedule(tmp_path):
    yielded = []

    def source():
        for x, y in synthetic_batches(37):
            yielded.append(len(y))
            yield x, y

    test = list(synthetic_batches(2, seed=1))
    summary = train_stream(stream_config(tmp_path), source(), test_batches=test, num_classes=4,
                           log=lambda s: None)
    assert len(yielded) == 37 and summary["steps"] == 37 and summary["samples_seen"] == 37 * 8
    assert summary["checks"] == 7 and summary["stream_end"] == "exhausted"
    assert summary["stream_order"] == "user"
    rows = [json.loads(line) for line in
            (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30, 37]  # every 10 steps, then the end
    assert [r["checks"] for r in rows] == [2, 4, 6, 7]
    assert all(d["step"] % 5 == 0 for d in summary["drops"])
    assert summary["units_dropped"] >= 1
    assert (tmp_path / "run" / "summary.json").is_file()
    assert (tmp_path / "run" / "model.pt").is_file()


def test_a_stream_shorter_than_announced_settles_its_fades(tmp_path):
    """A stream announced at 1,000 batches ends after 40 (an evaluation step), with a unit 30
    steps into a 100-step fade: the run settles it (it stays, its output unblended) and
    evaluates the settled network again: the last row and the summary report it."""
    config = stream_config(tmp_path, stream_length=1000, method_options={
        **stream_config(tmp_path).method_options, "fade_steps": 100})
    summary = train_stream(config, synthetic_batches(40),
                           test_batches=list(synthetic_batches(2, seed=1)), num_classes=4,
                           log=lambda s: None)
    rows = [json.loads(line) for line in
            (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["steps"] == 40 and summary["stream_batches_expected"] == 1000
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 40]
    assert rows[-2]["fading"] and rows[-1]["fading"] == []  # before and after settling
    assert summary["final_test_acc"] == rows[-1]["test_acc"]
    assert summary["units_dropped"] == 0 and rows[-1]["units_live"] == 2


def test_stream_length_caps_an_endless_stream(tmp_path):
    pulled = 0

    def endless():
        nonlocal pulled
        for batch in synthetic_batches(None):
            pulled += 1
            yield batch

    summary = train_stream(stream_config(tmp_path, stream_length=12, method="full",
                                         method_options={}, plots=True),
                           endless(), test_batches=list(synthetic_batches(1)), num_classes=4,
                           log=lambda s: None)
    assert summary["steps"] == 12 and pulled == 12
    assert (tmp_path / "run" / "accuracy_loss.png").is_file()


@pytest.mark.parametrize("length", [12, 20])  # ends between evaluations / at one
def test_a_stream_that_diverges_between_loss_checks_writes_no_summary(tmp_path, length):
    """The loss is checked every 25 steps and before every evaluation: a stream shorter than
    25 steps whose loss turns NaN after its last evaluation still stops with the one-line
    error, and leaves no summary or model behind."""
    def turns_nan():
        for i, (x, y) in enumerate(synthetic_batches(length)):
            yield (x * math.nan if i >= 11 else x), y

    with pytest.raises(TrainingDivergedError, match="loss became nan by stream step"):
        train_stream(stream_config(tmp_path, method="full", method_options={}), turns_nan(),
                     test_batches=list(synthetic_batches(1)), num_classes=4,
                     log=lambda s: None)
    assert not (tmp_path / "run" / "summary.json").exists()
    assert not (tmp_path / "run" / "model.pt").exists()


def test_long_stream_memory_stays_flat(tmp_path):
    """1,200 steps, 600 checks (far more than the score history keeps): Python memory and
    the number of live tensors stay flat."""
    samples = []

    def probe(line: str) -> None:
        if "test acc" in line:  # one line per evaluation
            gc.collect()
            tensors = sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))
            samples.append((tracemalloc.get_traced_memory()[0], tensors))

    config = stream_config(tmp_path, stream_length=1200, eval_every=200, batch_size=4,
                           steps_per_check=2,
                           method_options={"change_threshold": 0.05})  # keep both units live
    tracemalloc.start()
    try:
        summary = train_stream(config, synthetic_batches(None, batch=4),
                               test_batches=list(synthetic_batches(1)), num_classes=4, log=probe)
    finally:
        tracemalloc.stop()
    assert summary["steps"] == 1200 and summary["checks"] == 600
    assert len(samples) == 6
    (mem_early, tensors_early), (mem_late, tensors_late) = samples[1], samples[-1]
    assert mem_late - mem_early < 64 * 1024, samples  # 800 steps later: < 64 KiB more
    assert tensors_late <= tensors_early, samples


def test_score_history_is_capped_without_changing_the_scores(monkeypatch):
    def run(keep: int):
        monkeypatch.setattr("learndrop.scores.HISTORY_KEEP", keep)
        torch.manual_seed(0)
        model = tiny_stream_net()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        units = find_units(model, torch.zeros(2, 1, 8, 8))
        tracker = ScoreTracker(model, units, opt, trend_window=3, warmup_checks=2)
        out = []
        for x, y in synthetic_batches(40):
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            tracker.accumulate_lr()
            out.append(tracker.check())
        return tracker, out

    capped, scores_capped = run(5)
    full, scores_full = run(HISTORY_KEEP)
    assert all(len(h) == 5 for h in capped.history.values())
    assert all(len(h) == 40 for h in full.history.values())
    assert scores_capped == scores_full


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist")
                    and not os.environ.get("LEARNDROP_DATA"), reason="Fashion-MNIST missing")
def test_cli_class_incremental_stream(tmp_path, capsys):
    code = main(["train", "--stream", "--stream-order", "class-incremental",
                 "--classes-per-stage", "5", "--stream-length", "8", "--steps-per-check", "2",
                 "--eval-every", "4", "--subset", "640", "--test-subset", "200",
                 "--image-size", "16", "--batch-size", "16", "--out", str(tmp_path / "r"),
                 "--quiet", "--no-plots"])
    assert code == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["stream_order"] == "class-incremental"
    rows = [json.loads(line)
            for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["classes_seen"] for r in rows] == [5, 10]  # the second stage starts at step 4

    code = main(["train", "--stream", "--steps-per-check", "0", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "--steps-per-check must be >= 1" in err and len(err.splitlines()) == 1


def test_a_stream_tests_around_its_drops_and_trains_the_same(tmp_path):
    """``eval_around_drops`` on a stream: one pair of tests per step with drops, each in the
    row that follows it; a drop at an evaluation step is tested after it on the network that
    row evaluates; the drops and accuracies are those of the same stream without the tests."""
    test = list(synthetic_batches(2, seed=1))
    plain = train_stream(stream_config(tmp_path / "plain"), synthetic_batches(37),
                         test_batches=test, num_classes=4, log=lambda s: None)
    lines = []
    config = stream_config(tmp_path / "measured")
    config.eval_around_drops = True
    summary = train_stream(config, synthetic_batches(37), test_batches=test, num_classes=4,
                           log=lines.append)
    assert summary["drops"] == plain["drops"] and summary["units_dropped"] >= 1
    assert summary["final_test_acc"] == plain["final_test_acc"]
    records = summary["drop_evals"]
    assert [r["step"] for r in records] == sorted({d["step"] for d in summary["drops"]})
    assert all(r["step_before"] == r["step"] for r in records)
    rows = [json.loads(line) for line in
            (tmp_path / "measured" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r for row in rows for r in row["drop_evals"]] == records
    for r in records:
        row = next(row for row in rows if row["step"] >= r["step"])
        assert r in row["drop_evals"]
        if row["step"] == r["step"]:
            assert r["test_acc_after"] == row["test_acc"]
    assert sum("test acc around the drop of" in line for line in lines) == len(records)


def test_a_streams_tests_around_drops_are_not_stream_time(tmp_path, monkeypatch, one_thread):
    """A second of sleep in every evaluation: the stream's training time leaves out the tests
    around its drops (3 s of sleep per drop) as it leaves out its own evaluations, so it stays
    within a second of the same stream's without them."""
    import learndrop.train.stream as stream

    test = list(synthetic_batches(2, seed=1))
    plain = train_stream(stream_config(tmp_path / "plain"), synthetic_batches(37),
                         test_batches=test, num_classes=4, log=lambda s: None)
    real = stream.evaluate

    def slow(*args, **kwargs):
        time.sleep(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(stream, "evaluate", slow)
    summary = train_stream(stream_config(tmp_path / "measured", eval_around_drops=True),
                           synthetic_batches(37), test_batches=test, num_classes=4,
                           log=lambda s: None)
    assert len(summary["drop_evals"]) >= 1
    assert summary["eval_time_s"] >= 3 * len(summary["drop_evals"])
    assert summary["train_time_s"] < plain["train_time_s"] + 1.0


def test_a_fade_settled_at_the_end_of_a_stream_is_tested_in_the_last_row(tmp_path):
    """A stream that ends (at an evaluation step) with a unit past the middle of its fade drops
    it when it settles: that drop's tests, whose step is the last row's, go into the row of
    the settled network, and every test around a drop is in exactly one row."""
    config = stream_config(tmp_path, stream_length=1000, eval_around_drops=True,
                           method_options={**stream_config(tmp_path).method_options,
                                           "fade_steps": 50})
    summary = train_stream(config, synthetic_batches(40),
                           test_batches=list(synthetic_batches(2, seed=1)), num_classes=4,
                           log=lambda s: None)
    rows = [json.loads(line) for line in
            (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows][-2:] == [40, 40]
    settled = [r for r in summary["drop_evals"] if r["step"] == 40]
    assert settled and settled[0]["step_before"] < 40  # read from the fade's start
    assert rows[-1]["drop_evals"] == settled and rows[-1]["units_live"] < rows[-2]["units_live"]
    assert [r for row in rows for r in row["drop_evals"]] == summary["drop_evals"]
