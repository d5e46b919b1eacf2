"""The driver contract, checked for every registered method (``METHODS``): a new method gets
these tests by registering itself.

For each method, built as the drivers build it (``build_method`` with options and
``RunInfo``): resume after an interruption equals the uninterrupted run (events, weights,
ledger), ``state_dict`` round-trips through a weights-only checkpoint, the FLOPs ledger never
decreases, and a decision broadcast through ``Method.sync`` is the one applied.
"""

from __future__ import annotations

import dataclasses
import io
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from learndrop.methods import METHODS, RunInfo, build_method

pytestmark = pytest.mark.usefixtures("one_thread")

BATCH, TOTAL, PER_CHECK, CUT = 4, 12, 3, 7  # the interruption falls inside a check interval
X = torch.zeros(BATCH, 1, 12, 12)


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)) + x)


class Net(nn.Module):
    """Stem, five residual units, head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 6, 3, padding=1)
        self.blocks = nn.Sequential(*(Block(6) for _ in range(5)))
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(F.relu(self.stem(x))).mean((2, 3)))


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.randn(BATCH, 1, 12, 12, generator=g), torch.randint(0, 3, (BATCH,), generator=g)


@pytest.fixture
def reference(tmp_path):
    """A finished reference run's summary.json (for methods that copy one)."""
    drops = [{"unit": "blocks.1", "action": "drop", "step": 3, "epoch": 1.0},
             {"unit": "blocks.3", "action": "drop", "step": 6, "epoch": 2.0}]
    (tmp_path / "summary.json").write_text(json.dumps({"drops": drops}))
    return str(tmp_path)


def options_for(name: str, reference: str) -> dict:
    """Options that make each method act within TOTAL steps; a method this test does not know
    gets its defaults (and a reference when it needs one)."""
    cls = METHODS[name]
    fields = {f.name for f in dataclasses.fields(cls.options_type)} if cls.options_type else set()
    eager = {"warmup_checks": 0, "change_threshold": 100.0, "max_slope": 100.0,
             "max_drops_per_check": 1, "max_dropped_fraction": 1.0, "t0": 0.3,
             "drop_rate": 0.5}
    options = {k: v for k, v in eager.items() if k in fields}
    if cls.needs_reference:
        options["reference"] = reference
    return options


def build(name: str, reference: str, seed: int = 0):
    torch.manual_seed(seed)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    method = build_method(name, model, optimizer, X, options_for(name, reference),
                          RunInfo(seed=0, total_steps=TOTAL, steps_per_check=PER_CHECK))
    return model, optimizer, method


def step(model, optimizer, method) -> list:
    model.train()
    x, y = batch(method.steps)
    method.before_step()
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return method.step(BATCH, batch=(x, y))


def weights_only(obj: object) -> object:
    """``obj`` through ``torch.save``/``torch.load(weights_only=True)``, as a checkpoint."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


ALL = sorted(METHODS)


@pytest.mark.parametrize("name", ALL)
def test_resume_equals_the_uninterrupted_run(name, reference):
    model, optimizer, method = build(name, reference)
    for _ in range(TOTAL):
        step(model, optimizer, method)

    model1, optimizer1, method1 = build(name, reference)
    for _ in range(CUT):
        step(model1, optimizer1, method1)
    saved = weights_only((method1.state_dict(), model1.state_dict(), optimizer1.state_dict()))
    model2, optimizer2, method2 = build(name, reference, seed=123)  # other initial weights
    method2.load_state_dict(saved[0])
    model2.load_state_dict(saved[1])
    optimizer2.load_state_dict(saved[2])
    for _ in range(CUT, TOTAL):
        step(model2, optimizer2, method2)

    assert method2.summary()["drops"] == method.summary()["drops"]
    assert method2.steps == method.steps == TOTAL and method2.checks == method.checks
    assert method2.ledger.totals() == pytest.approx(method.ledger.totals())
    assert same(model2.state_dict(), model.state_dict())


@pytest.mark.parametrize("name", ALL)
def test_state_dict_round_trips(name, reference):
    model, optimizer, method = build(name, reference)
    for _ in range(CUT):
        step(model, optimizer, method)
    state = method.state_dict()
    _, _, fresh = build(name, reference, seed=5)
    fresh.load_state_dict(weights_only(state))
    assert same(fresh.state_dict(), state)
    assert fresh.removed == method.removed
    assert fresh.structure_version == method.structure_version


@pytest.mark.parametrize("name", ALL)
def test_flops_ledger_is_monotone(name, reference):
    model, optimizer, method = build(name, reference)
    before = method.ledger.totals()
    for i in range(TOTAL):
        step(model, optimizer, method)
        now = method.ledger.totals()
        assert method.ledger.samples_seen == (i + 1) * BATCH
        for key in ("fwd_flops", "bwd_flops", "fwd_flops_full", "bwd_flops_full"):
            assert now[key] > before[key], key
        # The method's own measurements (extra forward passes) come on top of the network's.
        network = now["fwd_flops"] - now.get("extra_fwd_flops", 0)
        assert network <= now["fwd_flops_full"] * (1 + 1e-9)
        before = now


# Methods whose checks decide something within TOTAL steps with the options above: for them
# the test must see a broadcast decision (for the others it checks that none is overridden).
DECIDING = {"learndrop", "freeze", "random-drop"}


@pytest.mark.parametrize("name", ALL)
def test_a_broadcast_decision_is_honoured(name, reference):
    model, optimizer, method = build(name, reference)
    decisions = []

    def rank0(chosen: list[str]) -> list[str]:
        """Another process's choice: as many units, but others than this one's (an entry is a
        unit name, or ``action:unit`` for methods whose action is part of the decision)."""
        units = [c.rpartition(":")[2] for c in chosen]
        live = [u.name for u in method.live_units if u.name not in units]
        decided = [c.rpartition(":")[0] + (":" if ":" in c else "") + other
                   for c, other in zip(chosen, live[-len(chosen):])] if chosen else []
        decisions.append([d.rpartition(":")[2] for d in decided])
        return decided

    method.sync = rank0
    for _ in range(TOTAL):
        calls = len(decisions)
        events = step(model, optimizer, method)
        if len(decisions) > calls:  # this step asked for a decision: exactly that one applies
            assert [e.unit for e in events] == decisions[-1]
    if name in DECIDING:
        assert any(decisions), "the method never decided anything: the test proved nothing"
        assert {u for d in decisions for u in d} <= set(method.removed)


def test_config_files_of_earlier_versions_still_load():
    """Run directories written before methods owned their options resume: their config.json
    fields (policy, freezeout_t0, drop_rate, reference) become the method's options."""
    from learndrop.train import TrainConfig

    old = {"method": "freezeout", "policy": {}, "freezeout_t0": 0.3, "drop_rate": 0.5,
           "reference": None, "epochs": 3}
    config = TrainConfig.from_dict(old)
    assert config.method_options == {"t0": 0.3} and config.epochs == 3
    config.validate()
    learndrop = TrainConfig.from_dict({"method": "learndrop", "policy": {"patience": 2},
                                       "freezeout_t0": 0.5, "drop_rate": 0.5})
    assert learndrop.method_options == {"patience": 2}
    copy = TrainConfig.from_dict({"method": "random-drop", "reference": "runs/x"})
    assert copy.method_options == {"reference": "runs/x"}
    assert TrainConfig.from_dict({"check_every": 7}).steps_per_check == 7
    assert TrainConfig.from_dict(config.to_dict()) == config  # and new ones round-trip
