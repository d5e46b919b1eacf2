"""The test accuracy just before and right after a drop (``--eval-around-drops``,
``Method.evaluate_now``): read at the step of the drop, outside the training and check time,
without changing what the run trains."""

import copy
import json
import math
import os
import time

import pytest
import torch
from test_fade import EAGER_FIELDS, F16, fading_run, sgd_steps

from learndrop import DropPolicy, LearnDrop
from learndrop.drop_cost import joint_drop_cost
from learndrop.recalibrate import batchnorms_after, recalibrate_batchnorm
from learndrop.train import TrainConfig, train
from learndrop.train.config import ConfigError
from learndrop.train.report import announce_drop_evals
from learndrop.train.steps import evaluate

needs_fashion = pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist") and not os.environ.get("LEARNDROP_DATA"),
    reason="Fashion-MNIST not installed (make test installs it)")


def _rows(run) -> list[dict]:
    return [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]


@needs_fashion
def test_the_trainer_tests_around_each_drop_and_trains_the_same(tmp_path, one_thread,
                                                                monkeypatch):
    """Drops at an epoch's last step: the test just after the drop is the epoch's own test
    (the same network, the same test set), the one before is the network a moment earlier; the
    run's drops, losses and accuracies are those of the same run without the tests, and their
    time (4 s of sleep per test here) is not training time."""
    import learndrop.train.trainer as trainer

    config = TrainConfig(
        model="resnet20", dataset="fashion-mnist", epochs=3, subset=640, test_subset=200,
        batch_size=64, lr=0.05, image_size=16, quiet=True,
        method_options={"change_threshold": 0.9, "max_drops_per_check": 2,
                        "max_drop_cost": math.inf})
    plain = train(TrainConfig(**{**config.to_dict(), "out": str(tmp_path / "plain")}))

    real, calls = trainer._evaluate_all_ranks, []

    def slow(parts, loader, ctx):
        calls.append(parts.model.training)
        time.sleep(4)
        return real(parts, loader, ctx)

    monkeypatch.setattr(trainer, "_evaluate_all_ranks", slow)
    lines = []
    measured = train(TrainConfig(**{**config.to_dict(), "out": str(tmp_path / "measured"),
                                    "eval_around_drops": True}), log=lines.append)

    assert plain["drops"] == measured["drops"] and plain["units_dropped"] > 0
    assert plain["final_test_acc"] == measured["final_test_acc"]
    rows, plain_rows = _rows(tmp_path / "measured"), _rows(tmp_path / "plain")
    for a, b in zip(rows, plain_rows, strict=True):
        assert (a["train_loss"], a["test_acc"], a["test_loss"]) == (
            b["train_loss"], b["test_acc"], b["test_loss"])
    records = measured["drop_evals"]
    drop_steps = sorted({d["step"] for d in measured["drops"]})
    assert [r["step"] for r in records] == drop_steps
    for r in records:
        assert r["step_before"] == r["step"]
        assert sorted(r["units"]) == sorted(d["unit"] for d in measured["drops"]
                                            if d["step"] == r["step"])
        row = next(row for row in rows if row["step"] == r["step"])
        assert row["drop_evals"] == [r]
        assert r["test_acc_after"] == row["test_acc"]
        assert r["test_loss_after"] == pytest.approx(row["test_loss"], rel=1e-6)
        assert 0 < r["test_acc_before"] <= 1
        # Before it, also with BatchNorm recalibrated as the drop's recalibration does.
        assert 0 < r["test_acc_before_recalibrated"] <= 1
        assert any(f"{100 * r['test_acc_before']:.2f}% before ("
                   f"{100 * r['test_acc_before_recalibrated']:.2f}% with BatchNorm "
                   f"recalibrated), {100 * r['test_acc_after']:.2f}% after" in line
                   for line in lines)
    assert all(row["drop_evals"] == [] for row in rows if not row["dropped"])
    # Three tests per decision (before, before recalibrated, after) and one per epoch, each
    # finding the network in training mode (a test restores the mode it found).
    assert len(calls) == 3 * len(records) + len(rows) and all(calls)
    assert measured["eval_time_s"] >= 12 * len(records)

    def epoch_times(rows):
        return [b["time_s"] - a["time_s"] for a, b in zip([{"time_s": 0}, *rows], rows)]

    for row, took, plain_took in zip(rows, epoch_times(rows), epoch_times(plain_rows),
                                     strict=True):
        if row["dropped"]:  # its 12 s of tests are not in the epoch's training time
            assert took < plain_took + 4
    assert "drop_evals" not in plain and "drop_evals" not in plain_rows[0]


def test_a_fade_is_tested_at_its_start_and_at_its_end(trained_resnet20, one_thread):
    """Units that fade out: one reading just before the fades start (the check), one when the
    last of them leaves (after BatchNorm's recalibration), the steps between them recorded; the
    pending reading survives a checkpoint; the tests count in ``eval_time_s``, not in the
    method's check time."""
    trained, batches, test_loader = trained_resnet20
    model, optimizer, ld = fading_run(trained, batches, fade_steps=3)
    read, read_by_hand = [], []

    def evaluate_now():
        read.append((ld.steps, sorted(ld.fading), sorted(ld.removed)))
        if len(read) == 1:  # the network before: recalibrated by hand on a copy
            copied = copy.deepcopy(model)
            recalibrate_batchnorm(copied, [x for x, _ in ld.recent_batches],
                                  batchnorms_after(copied, F16))
            read_by_hand.append(evaluate(copied, test_loader))
        time.sleep(0.5)
        return evaluate(model, test_loader)

    ld.evaluate_now = evaluate_now
    check_step, checked = ld.steps, ld.check_time_s
    started = time.perf_counter()
    assert ld.check() == [] and len(ld.fading) == 2
    wall = time.perf_counter() - started
    fading = sorted(ld.fading)
    assert read == [(check_step, [], [])] * 2  # before the fades began, as is and recalibrated
    assert ld.eval_time_s >= 1.0 and ld.check_time_s - checked <= wall - ld.eval_time_s
    sgd_steps(model, optimizer, ld, batches[:1])
    saved = copy.deepcopy(ld.state_dict())
    checked, tested, started = ld.check_time_s, ld.eval_time_s, time.perf_counter()
    sgd_steps(model, optimizer, ld, batches[1:3])
    wall = time.perf_counter() - started
    assert ld.eval_time_s - tested >= 0.5
    assert ld.check_time_s - checked <= wall - (ld.eval_time_s - tested)
    assert read[2] == (check_step + 3, [], fading)  # after they left
    [record] = ld.drop_evals
    assert (record["step_before"], record["step"]) == (check_step, check_step + 3)
    assert record["test_acc_before_recalibrated"] == read_by_hand[0]["acc"]
    assert record["test_loss_before_recalibrated"] == pytest.approx(read_by_hand[0]["loss"])
    assert sorted(record["units"]) == fading
    assert record["test_acc_after"] == evaluate(model, test_loader)["acc"]
    # A fade ends steps later, on other batches: no decision cost is read across it.
    assert record["batch_loss_before"] is None and record["batch_loss_after"] is None
    assert ld.summary()["drop_evals"] == [record]

    # Resumed mid-fade: the reading before the fades is the saved one.
    resumed = copy.deepcopy(trained)
    ld2 = LearnDrop(resumed, torch.optim.SGD(resumed.parameters(), lr=0.01), F16,
                    policy=ld.policy, total_steps=100)
    ld2.load_state_dict(saved)
    ld2.evaluate_now = lambda: {"acc": 0.5, "loss": 1.0}
    sgd_steps(resumed, ld2.optimizer, ld2, batches[1:3])
    [again] = ld2.drop_evals
    assert again["test_acc_before"] == record["test_acc_before"]
    assert (again["step_before"], again["step"]) == (check_step, check_step + 3)


def test_without_a_reader_nothing_is_tested(trained_resnet20, one_thread):
    trained, batches, _ = trained_resnet20
    model = copy.deepcopy(trained)
    ld = LearnDrop(model, torch.optim.SGD(model.parameters(), lr=0.01), F16,
                   policy=DropPolicy(**EAGER_FIELDS, max_drops_per_check=2, max_drop_cost=10.0))
    sgd_steps(model, ld.optimizer, ld, batches)
    assert ld.check() and ld.drop_evals == [] and ld.eval_time_s == 0
    assert "drop_evals" not in ld.summary()


@pytest.mark.parametrize("method", ["full", "freeze", "stochastic-depth", "freezeout",
                                    "slim-from-scratch"])
def test_a_method_that_drops_nothing_while_training_refuses_the_option(method):
    with pytest.raises(ConfigError, match=f"--method {method} drops no unit while training"):
        TrainConfig(method=method, eval_around_drops=True,
                    method_options={"reference": "x"} if method == "slim-from-scratch"
                    else {}).validate()
    TrainConfig(method="learndrop", eval_around_drops=True).validate()


@pytest.mark.parametrize("units", [1, 2])
def test_the_whole_decisions_cost_is_read_on_the_cost_batches(trained_resnet20, one_thread,
                                                              units):
    """Beside the tests, the loss on the batches the drop costs are measured on, before and
    after the decision: before, it is the check's own loss; for one unit its rise is that
    unit's measured drop cost (a drop bypasses what the cost's probe bypassed); for several it
    is the whole decision's, set beside the sum of their costs measured one at a time."""
    trained, batches, _ = trained_resnet20
    model, _, ld = fading_run(trained, batches, fade_steps=0, max_drops_per_check=units)
    ld.evaluate_now = lambda: {"acc": 0.5, "loss": 1.0}
    before = copy.deepcopy(model)
    events = ld.check()
    assert len(events) == units and all(e.action == "drop" for e in events)
    [record] = ld.drop_evals
    assert record["batch_loss_before"] == ld.check_losses[-1]
    assert record["drop_cost_sum"] == pytest.approx(sum(e.drop_cost for e in events))
    rise = record["batch_loss_after"] - record["batch_loss_before"]
    by_name = {u.name: u for u in ld.units}
    together = joint_drop_cost(before, [by_name[e.unit] for e in events],
                               list(ld.recent_batches)[-ld.policy.cost_batches:])
    assert rise == pytest.approx(together, abs=1e-5)
    if units == 1:
        assert rise == pytest.approx(events[0].drop_cost, abs=1e-5)
    lines = []
    announce_drop_evals([record], lines.append)
    assert f"on the recent training batches {rise:+.3f} nats (the units' drop costs summed " \
           f"{record['drop_cost_sum']:+.3f})" in lines[0]
