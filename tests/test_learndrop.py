"""Scores, policy and the LearnDrop driver on real small networks."""

import math

import pytest
import torch
from torch import nn

from learndrop import DropPolicy, LearnDrop, PolicyError
from learndrop.models import create_model
from learndrop.scores import UnitScore, log_slope

X = torch.zeros(4, 3, 16, 16)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"change_threshold": -0.1}, "change_threshold=-0.1 is invalid"),
        ({"max_dropped_fraction": 1.5}, "max_dropped_fraction=1.5 is invalid"),
        ({"max_drops_per_check": 0}, "max_drops_per_check=0 is invalid"),
        ({"max_drops_per_check": 1.5}, "max_drops_per_check=1.5 is invalid"),
        ({"patience": 0}, "patience=0 is invalid"),
        ({"trend_window": 1}, "trend_window=1 is invalid"),
        ({"warmup_checks": -1}, "warmup_checks=-1 is invalid"),
        ({"max_slope": float("nan")}, "max_slope=nan is invalid"),
    ],
)
def test_policy_rejects_impossible_hyperparameters(kwargs, message):
    with pytest.raises(PolicyError, match=message):
        DropPolicy(**kwargs)


def test_policy_guards():
    policy = DropPolicy(max_drops_per_check=0.25, max_dropped_fraction=0.5, warmup_checks=2)
    low = UnitScore(change=0.1, ratio=0.1, slope=-1.0, continuation=0.03)
    scores = {f"u{i}": low for i in range(10)}
    streaks = dict.fromkeys(scores, 1)
    assert policy.decide(scores, streaks, check=2, units_total=10, units_dropped=0) == []
    assert len(policy.decide(scores, streaks, check=3, units_total=10, units_dropped=0)) == 2
    assert len(policy.decide(scores, streaks, check=9, units_total=10, units_dropped=4)) == 1
    assert policy.decide(scores, streaks, check=9, units_total=10, units_dropped=5) == []
    assert DropPolicy(max_drops_per_check=3).drops_allowed(100, 0) == 3
    # Lowest continuation first; a unit whose trend rises again is not a candidate.
    rising = UnitScore(change=0.1, ratio=0.1, slope=0.2, continuation=0.12)
    assert not policy.is_candidate(rising)
    mixed = {"a": UnitScore(0.3, 0.3, -0.1, 0.27), "b": low}
    assert policy.decide(mixed, {"a": 1, "b": 1}, check=3, units_total=2, units_dropped=0) == ["b"]


def test_log_slope():
    assert log_slope([1.0]) == 0.0
    assert math.isclose(log_slope([1.0, math.e, math.e**2]), 1.0)
    assert math.isclose(log_slope([4.0, 2.0, 1.0]), -math.log(2))


def linear_loss_run(model, directions, lr_at, decay_of, checks=8, steps_per_check=5):
    """Train with a loss linear in the parameters, so each unit's gradient is exactly its
    direction times ``decay_of(unit, check)``; the learning rate follows ``lr_at(step)``."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr_at(0))
    ld = LearnDrop(model, optimizer, X, steps_per_check=steps_per_check,
                   policy=DropPolicy(max_dropped_fraction=1.0, max_drops_per_check=1.0))
    step = 0
    for check in range(checks):
        for _ in range(steps_per_check):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            loss = sum(
                decay_of(unit.name, check) * (p * d).sum()
                for unit in ld.live_units
                for p, d in zip(unit.parameters(model), directions[unit.name])
            )
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            ld.step()
            step += 1
    return ld


def test_decaying_learning_rate_alone_does_not_trigger_drops():
    torch.manual_seed(0)
    model = create_model("resnet20")
    ld0 = LearnDrop(model, torch.optim.SGD(model.parameters(), lr=0.1), X)
    directions = {
        u.name: [1e-3 * torch.randn_like(p) for p in u.parameters(model)] for u in ld0.units
    }
    total = 40

    def cosine(step):  # decays to ~0 over the run
        return 0.1 * 0.5 * (1 + math.cos(math.pi * step / total))

    slowing = {ld0.units[1].name, ld0.units[4].name}

    def decay_of(name, check):  # these two units really stop learning
        return 0.3**check if name in slowing else 1.0

    ld = linear_loss_run(model, directions, cosine, decay_of)
    dropped = {e.unit for e in ld.events}
    assert dropped == slowing
    # The learning-rate normalised change of a steadily learning unit stays at its peak.
    steady = ld.units[0].name
    history = ld.tracker.history[steady]
    assert max(history) / min(history) < 1.05


def train_classifier(seed: int, epochs: int = 5):
    """A real (small) training run: ResNet-20 on a learnable synthetic 4-class problem."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(4, 3, 16, 16, generator=g)
    model = create_model("resnet20", num_classes=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    steps = 6
    ld = LearnDrop(model, optimizer, X, steps_per_check=steps,
                   policy=DropPolicy(change_threshold=0.7, max_drops_per_check=0.34))
    for _ in range(epochs):
        for _ in range(steps):
            y = torch.randint(0, 4, (16,), generator=g)
            x = prototypes[y] + 0.8 * torch.randn(16, 3, 16, 16, generator=g)
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
            ld.step(len(x))
    return ld


def test_same_seed_same_drops_and_consistent_summary():
    a, b = train_classifier(0), train_classifier(0)
    assert a.events, "the run should drop units"
    assert [(e.unit, e.step) for e in a.events] == [(e.unit, e.step) for e in b.events]
    assert len({e.unit for e in a.events}) == len(a.events)  # never a unit twice
    summary = a.summary()
    assert summary["units_dropped"] == len(a.events) <= math.floor(0.75 * 7)
    assert summary["params_final"] < summary["params_initial"]
    assert 0 < summary["fwd_flops_reduction"] < 1
    assert 0 < summary["bwd_flops_reduction"] < 1
    assert summary["samples_seen"] == 5 * 6 * 16
    assert all(e.step % 6 == 0 and e.epoch == e.step / 6 for e in a.events)
    assert all(e.epoch >= 3 for e in a.events)  # warm-up check 1, running peak from check 2


def test_freeze_mode_uses_the_same_scores():
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    ld = LearnDrop(model, optimizer, X, mode="freeze")
    assert ld.name == "freeze"
    ld.apply(ld.units[0], "freeze")
    summary = ld.summary()
    assert summary["units_frozen"] == 1 and summary["units_dropped"] == 0
    assert summary["params_final"] == summary["params_initial"]
    with pytest.raises(ValueError, match="mode must be"):
        LearnDrop(model, optimizer, X, mode="prune")
