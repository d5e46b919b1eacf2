"""Learning-rate rewinding after drops (``lr_rewind_steps``): the position map, the method's
rewinds, resume, the drivers that attach their schedule, and the guards."""

import copy
import json
import math
import os

import pytest
import torch
from torch import nn

from learndrop import DropPolicy, LearnDrop, PolicyError
from learndrop.methods import MethodOptionError, build_method, create_method
from learndrop.rewind import ScheduleRewind
from learndrop.train import TrainConfig, train
from learndrop.train.builder import warmup_cosine
from learndrop.train.config import ConfigError

EAGER_FIELDS = {"warmup_checks": 0, "change_threshold": 100.0, "max_slope": 1e9,
                "max_loss_rise": math.inf, "max_drops_per_check": 2, "max_drop_cost": 10.0}
F16 = torch.zeros(64, 1, 16, 16)


def test_a_rewind_goes_back_to_the_highest_rate_and_ends_where_the_schedule_did():
    """Warm-up 10 steps, cosine to 0 at 100. A rewind at step 40 by up to 50 steps lands on the
    peak (step 10, not into the warm-up); the position then runs linearly back to 100 at the
    end, and no later step runs at a lower rate than without the rewind."""
    factor = warmup_cosine(100, 10)
    rewind = ScheduleRewind(total_steps=100, rewind_steps=50)
    assert [rewind.position(t) for t in (0, 39, 40)] == [0.0, 39.0, 40.0]
    assert rewind.rewind(40, factor) == {"step": 40, "from": 40.0, "to": 10.0, "moved": True}
    assert not rewind.rewind(40, factor)["moved"]  # once per step
    assert rewind.position(39) == 39.0  # before the rewind: as it was
    assert rewind.position(40) == 10.0 and rewind.position(100) == 100.0
    assert rewind.position(70) == pytest.approx(10 + 30 * 90 / 60)
    assert all(factor(rewind.position(t)) >= factor(t) - 1e-12 for t in range(40, 101))
    # A second rewind starts from where the first left the position: 55 at step 70.
    assert rewind.rewind(70, factor) == {"step": 70, "from": 55.0, "to": 10.0, "moved": True}
    assert [r["step"] for r in rewind.rewinds] == [40, 70]
    assert rewind.position(85) == pytest.approx(10 + 15 * 90 / 30)
    # Back by less than the window where the window reaches into the warm-up ...
    short = ScheduleRewind(total_steps=100, rewind_steps=5)
    assert short.rewind(12, factor)["to"] == 10.0
    # ... and not at all on a constant schedule (ties keep the smaller move) or past the end.
    flat = ScheduleRewind(total_steps=100, rewind_steps=50)
    assert flat.rewind(40, lambda p: 1.0)["moved"] is False
    assert flat.rewind(100, factor) == {"step": 100, "from": 100.0, "to": 100.0, "moved": False}
    assert flat.rewinds == [] and flat.position(60) == 60
    with pytest.raises(ValueError, match="rewind_steps must be an integer >= 1"):
        ScheduleRewind(100, 0)


def test_a_rewound_state_resumes_only_at_its_own_length():
    factor = warmup_cosine(100, 10)
    rewind = ScheduleRewind(100, 30)
    rewind.rewind(50, factor)
    again = ScheduleRewind(100, 30)
    again.load_state_dict(copy.deepcopy(rewind.state_dict()))
    assert [again.position(t) for t in range(101)] == [rewind.position(t) for t in range(101)]
    rewind.rewind(80, factor)
    replay = ScheduleRewind.replaying(100, rewind.rewinds)  # every piece, not just the last
    assert [replay.position(t) for t in range(101)] == [rewind.position(t) for t in range(101)]
    assert replay.position(60) == pytest.approx(rewind.rewinds[0]["to"] + 10 * (100 - 20) / 50)
    with pytest.raises(ValueError, match="replays another run's rewinds and makes none"):
        replay.rewind(90, factor)
    with pytest.raises(ValueError, match="not a rewind of a 60-step run"):
        ScheduleRewind.replaying(60, rewind.rewinds)
    for state in (rewind.state_dict(), ScheduleRewind(100, 30).state_dict()):  # none yet too
        with pytest.raises(ValueError, match="for 100 steps and cannot be made 150 steps long"):
            ScheduleRewind(150, 30).load_state_dict(state)


def sgd_steps(model, optimizer, scheduler, method, batches):
    rates = []
    for x, y in batches:
        nn.functional.cross_entropy(model(x), y).backward()
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        optimizer.zero_grad()
        method.step(len(x), batch=(x, y))
        scheduler.step()
    return rates


def rewinding_run(trained, total_steps=40, warmup=2, **fields):
    model = copy.deepcopy(trained)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    policy = DropPolicy(**{**EAGER_FIELDS, **fields})
    ld = LearnDrop(model, optimizer, F16, policy=policy, total_steps=total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, warmup))
    ld.attach_schedule(scheduler)
    return model, optimizer, scheduler, ld


def test_a_drop_rewinds_the_schedule_of_the_steps_after_it(trained_resnet20, one_thread):
    """ResNet-20 on Fashion-MNIST: 4 steps per check, 40 in all, 2 checks of warm-up. The
    drops at the check after step 12 rewind the schedule by up to 4 steps (to step 8), so the
    next step runs at step 8's rate and every later one at a rate at least the plain
    schedule's; the rewinds are in the summary and the state, one per check that dropped."""
    trained, batches, _ = trained_resnet20
    model, optimizer, scheduler, ld = rewinding_run(trained, lr_rewind_steps=4, warmup_checks=2)
    ld.steps_per_check = 4
    rates = sgd_steps(model, optimizer, scheduler, ld, batches * 10)
    plain = [0.05 * warmup_cosine(40, 2)(t) for t in range(40)]
    drop_steps = sorted({e.step for e in ld.events if e.action == "drop"})
    assert drop_steps and drop_steps[0] == 12  # checks 1 and 2 are the warm-up
    assert ld.summary()["schedule_rewinds"][0] == {"step": 12, "from": 12.0, "to": 8.0}
    assert rates[:12] == pytest.approx(plain[:12])
    assert rates[12] == pytest.approx(plain[8])  # the step after the drop: 4 steps back
    assert all(r >= p - 1e-9 for r, p in zip(rates[12:], plain[12:], strict=True))
    assert sum(rates[12:]) > sum(plain[12:]) * 1.05
    assert ld.state_dict()["schedule_rewind"]["rewinds"] == ld.summary()["schedule_rewinds"]
    assert len(ld.summary()["schedule_rewinds"]) == len(drop_steps)


def test_resuming_a_rewound_run_continues_its_schedule_exactly(trained_resnet20, one_thread):
    trained, batches, _ = trained_resnet20
    model, optimizer, scheduler, ld = rewinding_run(trained, lr_rewind_steps=4, warmup_checks=1)
    ld.steps_per_check = 4
    sgd_steps(model, optimizer, scheduler, ld, batches * 3)  # drops after step 8, then 12
    assert ld.summary()["schedule_rewinds"]
    saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()),
             copy.deepcopy(scheduler.state_dict()), copy.deepcopy(ld.state_dict()))
    rates = sgd_steps(model, optimizer, scheduler, ld, batches * 2)

    resumed = copy.deepcopy(trained)
    opt2 = torch.optim.SGD(resumed.parameters(), lr=0.05, momentum=0.9)
    ld2 = LearnDrop(resumed, opt2, F16, policy=ld.policy, total_steps=40)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, warmup_cosine(40, 2))
    ld2.attach_schedule(sched2)  # as the trainer does: build, then restore each part
    ld2.load_state_dict(saved[3])
    resumed.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    sched2.load_state_dict(saved[2])
    ld2.steps_per_check = 4
    assert sgd_steps(resumed, opt2, sched2, ld2, batches * 2) == pytest.approx(rates)
    assert ld2.summary()["schedule_rewinds"] == ld.summary()["schedule_rewinds"]
    # A method that does not rewind refuses the rewound state.
    with pytest.raises(ValueError, match="resume with the lr_rewind_steps it was saved with"):
        LearnDrop(copy.deepcopy(trained), opt2, F16, policy=DropPolicy(),
                  total_steps=40).load_state_dict(saved[3])


def test_rewind_guards(trained_resnet20, one_thread):
    trained, batches, _ = trained_resnet20
    model = copy.deepcopy(trained)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with pytest.raises(MethodOptionError, match="lr_rewind_steps=5 needs the run's length"):
        LearnDrop(model, optimizer, F16, policy=DropPolicy(lr_rewind_steps=5))
    with pytest.raises(PolicyError, match="lr_rewind_steps=-1 is invalid"):
        DropPolicy(lr_rewind_steps=-1)
    with pytest.raises(PolicyError, match="--method freeze drops nothing"):
        create_method("freeze", model, optimizer, F16, policy=DropPolicy(lr_rewind_steps=5))
    ld = LearnDrop(model, optimizer, F16, policy=DropPolicy(lr_rewind_steps=5), total_steps=40)
    with pytest.raises(MethodOptionError, match="needs a LambdaLR stepped once"):
        ld.attach_schedule(torch.optim.lr_scheduler.StepLR(optimizer, 10))
    # A loop that never attached its schedule is told at its first step, before any work.
    with pytest.raises(MethodOptionError, match=r"call method.attach_schedule\(scheduler\)"):
        ld.step(64, batch=batches[0])
    assert ld.steps == 0
    # Methods that do not move the schedule accept any scheduler and leave it alone.
    plain = LearnDrop(model, optimizer, F16)
    step_lr = torch.optim.lr_scheduler.StepLR(optimizer, 10)
    plain.attach_schedule(step_lr)
    assert not plain.moves_schedule and "schedule_rewinds" not in plain.summary()


def test_a_replay_needs_the_reference_runs_length_and_nothing_rewinds_a_constant_rate(
        tmp_path):
    """The controls replay a reference's rewinds only on a run of its length; a constant-rate
    stream has no schedule to rewind."""
    from learndrop.methods.base import RunInfo
    from learndrop.methods.random_drop import ReferenceOptions, reference_rewinds
    from learndrop.train.config import ConfigError

    (tmp_path / "summary.json").write_text(json.dumps({
        "drops": [{"unit": "layer1.0", "action": "drop", "step": 8}],
        "schedule_rewinds": [{"step": 8, "from": 8.0, "to": 4.0}]}))
    options = ReferenceOptions(reference=str(tmp_path))
    assert reference_rewinds(options, "full-rewound", RunInfo()) == [
        {"step": 8, "from": 8.0, "to": 4.0}]
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for run in (RunInfo(), RunInfo(total_steps=8)):
        with pytest.raises(MethodOptionError, match="full-rewound: .*(length|not a rewind)"):
            build_method("full-rewound", model, optimizer, F16[:1],
                         {"reference": str(tmp_path)}, run)
    replay = build_method("full-rewound", model, optimizer, F16[:1], {"reference": str(tmp_path)},
                          RunInfo(total_steps=40))
    assert replay.moves_schedule and replay.schedule_position(8) == 4.0
    assert replay.schedule_position(7) == 7 and replay.schedule_position(40) == 40
    with pytest.raises(ConfigError, match="a constant-rate stream has none"):
        TrainConfig(model="resnet20", dataset="fashion-mnist", stream=True,
                    method_options={"lr_rewind_steps": 10}).validate()


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist")
                    and not os.environ.get("LEARNDROP_DATA"),
                    reason="Fashion-MNIST not installed (make test installs it)")
def test_the_trainer_rewinds_and_the_controls_replay_it(tmp_path, one_thread):
    """``--lr-rewind-steps 10`` (one epoch of 10 steps): after the drops at the end of an
    epoch, the next epoch's learning rate is higher than the same run's without rewinding, and
    the run keeps its length. The controls that copy it replay its rewinds: the full network
    (``full-rewound``) and random units (``random-drop``) train at its learning rate, epoch by
    epoch, the first dropping nothing, the second as many units at the same steps."""
    def run(name, method="learndrop", **options):
        return train(TrainConfig(
            model="resnet20", dataset="fashion-mnist", epochs=4, subset=640, test_subset=200,
            batch_size=64, lr=0.05, image_size=16, out=str(tmp_path / name), quiet=True,
            method=method, method_options=options), log=lambda line: None)

    def rates(name):
        return [json.loads(r)["lr"] for r in
                (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    eager = {"change_threshold": 0.9, "max_drops_per_check": 2, "max_drop_cost": math.inf}
    plain, rewound = run("plain", **eager), run("rewound", lr_rewind_steps=10, **eager)
    assert "schedule_rewinds" not in plain
    first = rewound["schedule_rewinds"][0]
    assert first["to"] < first["from"] == first["step"] == rewound["drops"][0]["step"]
    assert rewound["samples_seen"] == plain["samples_seen"] == 4 * 640  # the same length
    after = next(i for i, d in enumerate(json.loads(r)["dropped"] for r in
                 (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()) if d) + 1
    assert rates("rewound")[after] > rates("plain")[after]

    full = run("full-rewound", method="full-rewound", reference=str(tmp_path / "rewound"))
    assert full["drops"] == [] and full["schedule_rewinds"] == rewound["schedule_rewinds"]
    assert rates("full-rewound") == pytest.approx(rates("rewound"))
    chance = run("random", method="random-drop", reference=str(tmp_path / "rewound"))
    assert [d["step"] for d in chance["drops"]] == [d["step"] for d in rewound["drops"]]
    assert rates("random") == pytest.approx(rates("rewound"))
    # A control under another schedule would replay the rewinds at other rates: refused,
    # before it writes anything.
    with pytest.raises(ConfigError, match="trained with --lr-decay-fraction=1.0"):
        train(TrainConfig(
            model="resnet20", dataset="fashion-mnist", epochs=4, subset=640, test_subset=200,
            batch_size=64, lr=0.05, image_size=16, out=str(tmp_path / "other"), quiet=True,
            lr_decay_fraction=0.5, method="full-rewound",
            method_options={"reference": str(tmp_path / "rewound")}), log=lambda line: None)
    assert not (tmp_path / "other" / "summary.json").exists()


def test_a_copy_of_a_reference_run_must_share_its_steps_and_schedule(tmp_path):
    """The methods that copy a reference run are refused, in one line, where the reference
    trained with other steps or rates; what the reference's record lacks reads as the default,
    and a reference not yet run is left to the method."""
    from learndrop.train.builder import check_reference

    ref = tmp_path / "ref"
    ref.mkdir()
    recorded = TrainConfig(subset=None, lr_decay_fraction=0.3, out=str(ref)).to_dict()
    (ref / "config.json").write_text(json.dumps(recorded))

    def control(method="random-drop", reference=ref, **settings):
        return TrainConfig(method=method, method_options={"reference": str(reference)},
                           **{"lr_decay_fraction": 0.3, "subset": 0, **settings})

    for method in ("random-drop", "slim-from-scratch", "full-rewound"):
        check_reference(control(method))  # 0 and None: both the whole training set
        check_reference(control(method, reference=ref / "summary.json"))
    for setting, value in (("lr_decay_fraction", 1.0), ("epochs", 9), ("batch_size", 64),
                           ("model", "resnet56"), ("subset", 5000), ("warmup_epochs", 2.0)):
        with pytest.raises(ConfigError, match=f"--{setting.replace('_', '-')}=") as err:
            check_reference(control(**{setting: value}))
        assert len(str(err.value).splitlines()) == 1
    check_reference(control(epochs=9, method="learndrop"))  # no reference needed: not checked
    check_reference(control(reference=tmp_path / "not-run-yet", epochs=9))
    # A record from before lr_decay_fraction existed trained with the default (cosine).
    del recorded["lr_decay_fraction"]
    (ref / "config.json").write_text(json.dumps(recorded))
    check_reference(control(lr_decay_fraction=1.0))
    with pytest.raises(ConfigError, match="--lr-decay-fraction=1.0"):
        check_reference(control())
    (ref / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read"):
        check_reference(control())
