"""Lockstep execution: the scheduler's turns, and real short trainings through the trainer
adapter (same results as training alone, resumable after an interruption)."""

import json
import os

import pytest

from learndrop.bench.lockstep import run_lockstep
from learndrop.bench.trainer_run import TrainerRun
from learndrop.train import TrainConfig, TrainingDivergedError, train

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist") and not os.environ.get("LEARNDROP_DATA"),
    reason="Fashion-MNIST not installed (make test installs dataset-fashion-mnist)",
)


class FakeRun:
    def __init__(self, name, epochs, calls, fail_at=None):
        self.name, self.epochs, self.calls, self.fail_at = name, epochs, calls, fail_at
        self.done, self.closed = 0, False

    def next_epoch(self):
        self.calls.append(self.name)
        if self.done == self.fail_at:
            raise RuntimeError(f"{self.name} failed")
        if self.done == self.epochs:
            return None
        self.done += 1
        return {"epoch": self.done}

    def close(self):
        self.closed = True


def test_rounds_rotate_and_finished_runs_leave():
    calls, done = [], []
    runs = [FakeRun("a", 3, calls), FakeRun("b", 1, calls), FakeRun("c", 2, calls)]
    order = run_lockstep(runs, on_done=lambda r: done.append(r.name))
    # Round 1: a b c; round 2 starts one later: b (done) c a; round 3 on [a, c]: a c ...
    assert calls[:3] == ["a", "b", "c"]
    assert calls[3:6] == ["b", "c", "a"]
    assert order == done == ["b", "c", "a"]
    assert [r.done for r in runs] == [3, 1, 2]
    assert not any(r.closed for r in runs)  # finished runs need no closing


def test_an_error_closes_the_other_runs():
    calls = []
    runs = [FakeRun("a", 3, calls), FakeRun("b", 3, calls, fail_at=1), FakeRun("c", 3, calls)]
    with pytest.raises(RuntimeError, match="b failed"):
        run_lockstep(runs)
    assert runs[0].closed and runs[2].closed


# Drops at every check after the first, without measurements (2 steps per check is too few
# for them to pay off).
EAGER = {"change_threshold": 100.0, "max_slope": 100.0, "cost_batches": 0,
         "max_drop_cost": float("inf"), "max_loss_rise": float("inf"), "recalibration_batches": 0}


def tiny(tmp_path, name, **overrides):
    values = dict(model="resnet20", dataset="fashion-mnist", subset=128, test_subset=100,
                  image_size=16, epochs=3, batch_size=64, lr=0.05, quiet=True, plots=False,
                  out=str(tmp_path / name))
    values.update(overrides)
    return TrainConfig(**values)


def test_lockstep_trains_exactly_as_alone(tmp_path, one_thread):
    alone = train(tiny(tmp_path, "alone", method="learndrop",
                       method_options=EAGER), log=lambda s: None)
    turns = []
    runs = [TrainerRun("learndrop", tiny(tmp_path, "ld", method="learndrop",
                                         method_options=EAGER),
                       log=lambda s: None),
            TrainerRun("full", tiny(tmp_path, "full", method="full", epochs=2),
                       log=lambda s: None)]
    run_lockstep(runs, on_epoch=lambda run, row: turns.append((run.name, row["epoch"])))
    assert turns == [("learndrop", 1), ("full", 1), ("full", 2), ("learndrop", 2),
                     ("learndrop", 3)]
    ld = runs[0].summary
    assert ld["units_dropped"] == alone["units_dropped"] > 0  # the drops happened alike
    for key in ("final_test_acc", "fwd_flops", "bwd_flops"):
        assert ld[key] == alone[key]
    # Process CPU time is recorded beside wall-clock, per epoch and in all.
    rows = [json.loads(line) for line in (tmp_path / "ld" / "metrics.jsonl").open()]
    assert all(0 < r["cpu_s"] for r in rows) and rows[-1]["cpu_s"] == pytest.approx(
        ld["train_cpu_s"], abs=1e-3)
    assert 0 < ld["train_cpu_s"] and runs[1].summary["epochs"] == 2


def test_an_interrupted_run_continues_from_its_last_epoch(tmp_path, one_thread):
    first = TrainerRun("full", tiny(tmp_path, "full"), log=lambda s: None)
    assert first.next_epoch()["epoch"] == 1
    first.close()  # as after Ctrl-C: epoch 1 is checkpointed, nothing else is written
    assert not (tmp_path / "full" / "summary.json").exists()
    logs = []
    again = TrainerRun("full", tiny(tmp_path, "full", resume=str(tmp_path / "full")),
                       log=logs.append)
    assert [again.next_epoch()["epoch"], again.next_epoch()["epoch"]] == [2, 3]
    assert again.next_epoch() is None and again.next_epoch() is None
    assert any("resuming" in line and "epoch 2" in line for line in logs)
    alone = train(tiny(tmp_path, "alone"), log=lambda s: None)
    assert again.summary["final_test_acc"] == alone["final_test_acc"]
    assert again.summary["fwd_flops"] == alone["fwd_flops"]


def test_an_error_in_a_run_is_raised_by_next_epoch(tmp_path, one_thread):
    run = TrainerRun("nan", tiny(tmp_path, "nan", lr=1e30), log=lambda s: None)
    with pytest.raises(TrainingDivergedError, match="lower --lr"):
        for _ in range(4):
            run.next_epoch()


def test_ctrl_c_stops_the_run_that_is_training_not_the_last_one_built(tmp_path, one_thread):
    import signal

    import torch

    from learndrop.train import TrainingInterrupted
    from learndrop.train.steps import StopFlag

    before = signal.getsignal(signal.SIGINT)
    stop = StopFlag()
    runs = [TrainerRun(name, tiny(tmp_path, name), log=lambda s: None, stop=stop)
            for name in ("a", "b")]
    turns = []

    def ctrl_c_after_a(run, row):
        turns.append((run.name, row["epoch"]))
        if run.name == "a":  # a real SIGINT, delivered between a's epoch and b's
            os.kill(os.getpid(), signal.SIGINT)

    with stop, pytest.raises(TrainingInterrupted, match="checkpoint saved"):
        run_lockstep(runs, on_epoch=ctrl_c_after_a)
    # b built its training after a, yet the one flag made b stop after its first step, its
    # checkpoint saved mid-epoch; a kept its finished epoch. Nothing half-written.
    assert turns == [("a", 1)]
    b = torch.load(tmp_path / "b" / "last.ckpt", weights_only=True)
    assert (b["epoch"], b["batch"]) == (0, 1)
    a = torch.load(tmp_path / "a" / "last.ckpt", weights_only=True)
    assert (a["epoch"], a["batch"]) == (1, 0)
    assert not (tmp_path / "a" / "summary.json").exists()
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
