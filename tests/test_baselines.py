"""The peers' methods (FreezeOut, stochastic depth, random-drop, slim-from-scratch) on small real
networks, driven like Learn&Drop through the `Method` interface."""

from __future__ import annotations

import io
import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from learndrop.flops import measure_cost
from learndrop.methods import (
    METHODS,
    Event,
    FreezeOut,
    MethodOptionError,
    RandomDrop,
    SlimFromScratch,
    StochasticDepth,
    create_method,
)
from learndrop.methods.random_drop import schedule_from
from learndrop.models import create_model
from learndrop.surgery import replace_module

BATCH = 4
X = torch.randn(BATCH, 1, 16, 16, generator=torch.Generator().manual_seed(1))


pytestmark = pytest.mark.usefixtures("one_thread")


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Step ``step``'s synthetic batch: random images and labels (nothing to memorise, so the
    network never reaches the denormal-float regime that makes CPU kernels crawl)."""
    generator = torch.Generator().manual_seed(step)
    return torch.randn(BATCH, 1, 16, 16, generator=generator), torch.randint(
        0, 3, (BATCH,), generator=generator)


def resnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("resnet20", num_classes=3, in_channels=1)


class Block(nn.Module):
    """A residual unit: ``relu(bn(conv(x)) + x)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)) + x)


class TinyResNet(nn.Module):
    """Stem, six residual units, head: cheap to run and to count FLOPs of."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.blocks = nn.Sequential(*(Block(8) for _ in range(6)))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.stem(x)))
        return self.head(x.mean((2, 3)))


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TinyResNet()


def sgd(model: nn.Module, lr: float = 0.1) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)


def train_step(method, model: nn.Module, optimizer) -> list[Event]:
    model.train()
    x, y = batch(method.steps)
    method.before_step()
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return method.step(BATCH, batch=(x, y))


def checkpoint(obj: object) -> object:
    """``obj`` through ``torch.save``/``torch.load`` (weights only), as a resumed run sees it."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def unit_state(model: nn.Module, unit) -> dict[str, torch.Tensor]:
    return {
        f"{m}.{k}": v.detach().clone()
        for m in unit.modules
        for k, v in model.get_submodule(m).state_dict().items()
    }


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_registered_and_strict_about_arguments():
    for name in ("freezeout", "stochastic-depth", "random-drop", "slim-from-scratch"):
        assert name in METHODS
    model = tiny()
    required = {"freezeout": {"total_steps": 10}, "random-drop": {"schedule": [(1, 1)]},
                "slim-from-scratch": {"dropped": []}, "stochastic-depth": {}}
    for name, kwargs in required.items():
        with pytest.raises(TypeError):
            create_method(name, model, sgd(model), X, bogus=1, **kwargs)
    with pytest.raises(ValueError, match="t0"):
        FreezeOut(model, sgd(model), X, total_steps=10, t0=0.0)
    with pytest.raises(ValueError, match="total_steps"):
        FreezeOut(model, sgd(model), X, total_steps=0)
    with pytest.raises(ValueError, match="drop_rate"):
        StochasticDepth(model, sgd(model), X, drop_rate=1.0)
    for bad in ([(1, 0)], [(1, 0, 0)], [(-1, 1)], [(1, 1, -1)], [(1, 1, 1, 1)], [(1, 7)],
                [(1, 4, 3)], [{"unit": "blocks.0", "action": "prune", "step": 1}]):
        with pytest.raises(ValueError):
            RandomDrop(model, sgd(model), X, schedule=bad)
    with pytest.raises(ValueError, match="not droppable"):
        SlimFromScratch(model, sgd(model), X, dropped=["stem"])


# ---- FreezeOut ------------------------------------------------------------------------------

def test_freezeout_splits_param_groups_deterministically():
    model = resnet()
    decay = [p for n, p in model.named_parameters() if "bn" not in n]
    no_decay = [p for n, p in model.named_parameters() if "bn" in n]
    optimizer = torch.optim.SGD(
        [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=0.1, momentum=0.9, weight_decay=5e-4,
    )
    method = FreezeOut(model, optimizer, X, total_steps=10)
    assert len(optimizer.param_groups) == 2 + 2 * len(method.units)
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    for unit in method.units:
        groups = [optimizer.param_groups[i] for i in method.group_indices[unit.name]]
        assert {id(p) for g in groups for p in g["params"]} == {
            id(p) for p in unit.parameters(model)}
        assert [g["weight_decay"] for g in groups] == [5e-4, 0.0]
        assert all(g["momentum"] == 0.9 for g in groups)
    times = list(method.freeze_times.values())
    assert times[0] == 0.5 and times == sorted(times) and times[-1] < 1
    # An optimizer state dict of this layout loads into a freshly built one.
    model2 = resnet(seed=1)
    optimizer2 = torch.optim.SGD(
        [{"params": [p for n, p in model2.named_parameters() if "bn" not in n]},
         {"params": [p for n, p in model2.named_parameters() if "bn" in n], "weight_decay": 0.0}],
        lr=0.1, momentum=0.9, weight_decay=5e-4,
    )
    FreezeOut(model2, optimizer2, X, total_steps=10)
    optimizer2.load_state_dict(optimizer.state_dict())

    # A scheduler must come after the method and step after method.step(): say so when not.
    model3 = tiny()
    optimizer3 = sgd(model3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer3, step_size=1, gamma=0.5)
    with pytest.warns(UserWarning, match="after the method"):
        method3 = FreezeOut(model3, optimizer3, X, total_steps=10)
    method3.before_step()
    optimizer3.step()  # no gradients: changes nothing
    scheduler.step()
    with pytest.warns(UserWarning, match="after method.step"):
        method3.step(BATCH)


def test_freezeout_anneals_each_unit_to_zero_then_freezes_it():
    total = 20
    model = resnet()
    optimizer = sgd(model)
    method = FreezeOut(model, optimizer, X, total_steps=total)
    # A user scheduler, created after the method, keeps driving the unscaled rate.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / (2 * total))
    frozen_at: dict[str, int] = {}
    frozen_state = {}
    lrs: list[dict[str, float]] = []
    others = {n: p.detach().clone() for n, p in model.named_parameters()
              if n.startswith(("conv1", "fc", "layer2.0"))}
    for s in range(total):
        method.before_step()
        lrs.append(method.effective_lrs())
        x, y = batch(s)
        for unit in method.live_units:
            group = optimizer.param_groups[method.group_indices[unit.name][0]]
            scheduled = 0.1 * (1 - s / (2 * total))
            t_i = method.freeze_times[unit.name]
            expected = scheduled * 0.5 * (1 + math.cos(math.pi * (s / total) / t_i))
            assert group["lr"] == pytest.approx(expected, rel=1e-9, abs=1e-15)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for event in method.step(BATCH):
            frozen_at[event.unit] = event.step
            unit = next(u for u in method.units if u.name == event.unit)
            frozen_state[event.unit] = unit_state(model, unit)
        scheduler.step()
        # Between steps every group holds the scheduler's (unscaled) rate.
        assert all(g["lr"] == pytest.approx(0.1 * (1 - (s + 1) / (2 * total)))
                   for g in optimizer.param_groups)
    assert set(frozen_at) == {u.name for u in method.units}
    for unit in method.units:
        t_i = method.freeze_times[unit.name]
        due = next(k for k in range(1, total + 1) if k / total >= t_i)
        assert frozen_at[unit.name] == due
        # Positive and decreasing until the freeze, zero from then on.
        series = [lr[unit.name] for lr in lrs]
        assert all(v > 0 for v in series[:due]) and all(v == 0 for v in series[due:])
        assert series[:due] == sorted(series[:due], reverse=True)
        assert series[due - 1] < 0.1 * 0.2
        # Bit-identical weights and BatchNorm statistics after the freeze.
        assert same_state(unit_state(model, unit), frozen_state[unit.name])
        assert not any(p.requires_grad for p in unit.parameters(model))
    # Non-unit layers trained to the end.
    assert all(not torch.equal(p, others[n]) for n, p in model.named_parameters() if n in others)
    # The last unit froze after the first one, and changed in between.
    first, last = method.units[0], method.units[-1]
    assert frozen_at[last.name] > frozen_at[first.name]
    summary = method.summary()
    assert summary["units_frozen"] == len(method.units) and summary["units_dropped"] == 0
    assert abs(summary["fwd_flops_reduction"]) < 1e-12
    assert 0.05 < summary["bwd_flops_reduction"] < 0.5
    assert summary["params_final"] == summary["params_initial"]


def test_freezeout_resumes_on_a_fresh_model_and_optimizer():
    """FreezeOut's own part of resume: the same param-group layout on a fresh optimizer, and
    the run's length is checked. (Resume equals the uninterrupted run: test_method_contract.)"""
    total, cut = 16, 10
    model = tiny()
    optimizer = sgd(model)
    method = FreezeOut(model, optimizer, X, total_steps=total, t0=0.4)
    for _ in range(cut):
        train_step(method, model, optimizer)
    assert 0 < len(method.removed) < len(method.units)
    state = checkpoint((method.state_dict(), model.state_dict(), optimizer.state_dict()))

    model2 = tiny(seed=123)
    optimizer2 = sgd(model2)
    method2 = FreezeOut(model2, optimizer2, X, total_steps=total, t0=0.4)
    method2.load_state_dict(state[0])
    model2.load_state_dict(state[1])
    optimizer2.load_state_dict(state[2])
    assert method2.removed == method.removed and method2.steps == cut
    assert [len(g["params"]) for g in optimizer2.param_groups] == [
        len(g["params"]) for g in optimizer.param_groups]
    assert method2.effective_lrs() == method.effective_lrs()
    with pytest.raises(ValueError, match="total_steps"):
        FreezeOut(tiny(), sgd(model), X, total_steps=total + 1).load_state_dict(state[0])


# ---- stochastic depth -----------------------------------------------------------------------

def test_stochastic_depth_skips_computation_in_training_steps():
    model = resnet()
    optimizer = sgd(model)
    method = StochasticDepth(model, optimizer, X, drop_rate=0.5, seed=3)
    survival = list(method.survival.values())
    assert survival[0] == 1 and survival[-1] == 0.5 and survival == sorted(survival, reverse=True)
    modules = {u.name: model.get_submodule(u.name) for u in method.units}
    fired: list[str] = []
    for name, module in modules.items():
        module.register_forward_hook(lambda m, a, o, name=name: fired.append(name))
    steps = 60
    calls: Counter[str] = Counter()
    for s in range(steps):
        fired.clear()
        method.before_step()
        skipped = set(method.skipped)
        x, y = batch(s)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.step(BATCH)
        assert set(fired) == set(modules) - skipped and len(fired) == len(set(fired))
        calls.update(fired)
        # Between steps every unit is back in place.
        assert all(model.get_submodule(n) is m for n, m in modules.items())
    for name, s in method.survival.items():
        sd = math.sqrt(steps * s * (1 - s))
        assert abs(calls[name] - steps * s) <= 4 * sd + 1, (name, calls[name], steps * s)
    assert calls[method.units[0].name] == steps
    assert sum(calls.values()) < steps * len(modules)


def test_stochastic_depth_evaluates_the_whole_network():
    model = resnet()
    optimizer = sgd(model)
    method = StochasticDepth(model, optimizer, X, seed=0)
    for _ in range(3):
        train_step(method, model, optimizer)
    reference = resnet(seed=9)
    reference.load_state_dict(model.state_dict())
    reference.eval()
    with torch.no_grad():
        expected = reference(X)
    modules = {u.name: model.get_submodule(u.name) for u in method.units}
    fired: list[str] = []
    for name, module in modules.items():
        module.register_forward_hook(lambda m, a, o, name=name: fired.append(name))

    model.eval()
    with torch.no_grad():
        assert torch.equal(model(X), expected)
    assert sorted(fired) == sorted(modules)

    # An eval between before_step() and step() runs the whole network too.
    while True:
        model.train()
        method.before_step()
        if method.skipped:
            break
        method.step(BATCH)
    assert any(model.get_submodule(n) is not m for n, m in modules.items())
    fired.clear()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(X), expected)
    assert sorted(fired) == sorted(modules)
    assert all(model.get_submodule(n) is m for n, m in modules.items())
    assert not model._forward_pre_hooks

    # A step abandoned after before_step() (an exception) is undone by the next before_step().
    model.train()
    method.before_step()
    method.before_step()
    method.restore()
    assert all(model.get_submodule(n) is m for n, m in modules.items())


def test_stochastic_depth_ledger_and_seeds():
    model = resnet()
    optimizer = sgd(model)
    method = StochasticDepth(model, optimizer, X, drop_rate=0.5, seed=7)
    full = method.ledger.full
    # Per-unit costs equal the full cost minus the cost with the unit alone removed.
    for unit in method.units:
        old = [replace_module(model, m, nn.Identity()) for m in unit.modules]
        without = measure_cost(model, X)
        for m, module in zip(unit.modules, old, strict=True):
            replace_module(model, m, module)
        cost = method.unit_costs[unit.name]
        assert cost.fwd == full.fwd - without.fwd and cost.bwd == full.bwd - without.bwd
    # The ledger without running the network (it accounts for the sampled configuration).
    steps, fwd = 1500, 0.0
    for s in range(steps):
        method.before_step()
        assert method.skipped == method.sample(s)
        fwd += (full.fwd - sum(method.unit_costs[n].fwd for n in method.skipped)) * BATCH
        method.step(BATCH)
    totals = method.ledger.totals()
    assert totals["fwd_flops"] == pytest.approx(fwd, rel=1e-12)
    expected_fwd, expected_bwd = method.expected_reductions()
    assert expected_fwd > 0.1
    assert totals["fwd_flops_reduction"] == pytest.approx(expected_fwd, abs=0.02)
    assert totals["bwd_flops_reduction"] == pytest.approx(expected_bwd, abs=0.02)
    assert len(method.ledger.costs) <= len(method.units) + 1

    same = StochasticDepth(resnet(), optimizer, X, drop_rate=0.5, seed=7)
    other = StochasticDepth(resnet(), optimizer, X, drop_rate=0.5, seed=8)
    pattern = [method.sample(s) for s in range(50)]
    assert [same.sample(s) for s in range(50)] == pattern
    assert [other.sample(s) for s in range(50)] != pattern

    # Resume: the ledger carries on exactly, the pattern continues.
    same.load_state_dict(checkpoint(method.state_dict()))
    for _ in range(20):
        for m in (method, same):
            m.before_step()
            m.step(BATCH)
        assert same.steps == method.steps
    assert same.ledger.totals() == method.ledger.totals()


# ---- random-drop ----------------------------------------------------------------------------

REFERENCE = [  # summary["drops"] of a reference run on TinyResNet
    {"unit": "blocks.1", "action": "drop", "step": 3, "epoch": 1.0, "change_score": 0.1,
     "continuation_score": 0.2},
    {"unit": "blocks.4", "action": "drop", "step": 3, "epoch": 1.0, "change_score": 0.1,
     "continuation_score": 0.2},
    {"unit": "blocks.2", "action": "drop", "step": 6, "epoch": 2.0, "change_score": 0.1,
     "continuation_score": 0.2},
]


def run_random_drop(seed: int, steps: int = 8, schedule=REFERENCE,
                    recalibration_batches: int = 0) -> RandomDrop:
    model = tiny()
    optimizer = sgd(model)
    method = RandomDrop(model, optimizer, X, schedule=schedule, seed=seed, steps_per_check=3,
                        recalibration_batches=recalibration_batches)
    for _ in range(steps):
        train_step(method, model, optimizer)
    return method


def test_random_drop_reproduces_the_reference_timing():
    assert schedule_from(REFERENCE) == [(3, 2, 0), (6, 1, 0)]
    assert schedule_from([(6, 1), (3, 1), (3, 1)]) == [(3, 2, 0), (6, 1, 0)]
    assert schedule_from([Event(**e) for e in REFERENCE]) == [(3, 2, 0), (6, 1, 0)]
    assert schedule_from({"drops": REFERENCE}) == [(3, 2, 0), (6, 1, 0)]
    method = run_random_drop(seed=0)
    drops = method.summary()["drops"]
    assert Counter(e["step"] for e in drops) == Counter(e["step"] for e in REFERENCE)
    assert [e["epoch"] for e in drops] == [e["epoch"] for e in REFERENCE]
    assert all(e["action"] == "drop" for e in drops)
    summary = method.summary()
    assert summary["units_dropped"] == 3 and summary["params_final"] < summary["params_initial"]
    assert summary["fwd_flops_reduction"] > 0
    for name in method.removed:
        assert isinstance(method.model.get_submodule(name), nn.Identity)
    # A (step, count) schedule gives the same run.
    pairs = run_random_drop(seed=0, schedule=[(3, 2), (6, 1)])
    assert pairs.summary()["drops"] == drops


REFERENCE_WITH_FREEZES = REFERENCE + [  # Learn&Drop froze a costly unit at each check
    {"unit": "blocks.0", "action": "freeze", "step": 3, "epoch": 1.0},
    {"unit": "blocks.5", "action": "freeze", "step": 6, "epoch": 2.0},
]


def test_random_drop_copies_the_reference_freezes_too():
    """Learn&Drop's cap counts its freezes: a random-drop that copied only its drops would
    leave more units learning than its reference (issue 15)."""
    assert schedule_from(REFERENCE_WITH_FREEZES) == [(3, 2, 1), (6, 1, 1)]
    assert schedule_from([(3, 2, 1), (6, 1), (6, 0, 1)]) == [(3, 2, 1), (6, 1, 1)]
    method = run_random_drop(seed=0, schedule=REFERENCE_WITH_FREEZES)
    model, events = method.model, method.summary()["drops"]
    assert Counter((e["step"], e["action"]) for e in events) == Counter(
        (e["step"], e["action"]) for e in REFERENCE_WITH_FREEZES)
    summary = method.summary()
    assert (summary["units_dropped"], summary["units_frozen"]) == (3, 2)
    in_optimizer = {id(p) for g in method.optimizer.param_groups for p in g["params"]}
    for name, action in method.removed.items():
        unit = model.get_submodule(name)
        if action == "drop":
            assert isinstance(unit, nn.Identity)
        else:  # still runs forward, learns nothing
            assert not isinstance(unit, nn.Identity)
            assert all(not p.requires_grad and id(p) not in in_optimizer
                       for p in unit.parameters())
    # The draw lists drops first: at the first step with a freeze the drops are those of the
    # schedule without freezes (later the live units differ, and so do the choices).
    drops_only = run_random_drop(seed=0)
    assert [e for e in events if e["action"] == "drop" and e["step"] == 3] == [
        e for e in drops_only.summary()["drops"] if e["step"] == 3]
    # A checkpoint written before freezes were copied ((step, drops) pairs) still resumes.
    state = drops_only.state_dict()
    state["schedule"] = [[3, 2], [6, 1]]
    same = RandomDrop(tiny(), sgd(tiny()), X, schedule=REFERENCE, seed=0, steps_per_check=3,
                      recalibration_batches=0)
    same.load_state_dict(checkpoint(state))
    assert same.removed == drops_only.removed
    # Slim-from-scratch keeps the frozen units: they are part of the final network.
    slim = SlimFromScratch(tiny(), sgd(tiny()), X, dropped=summary)
    assert set(slim.dropped) == {n for n, a in method.removed.items() if a == "drop"}


def test_random_drop_recalibrates_batchnorm_after_its_drops_and_counts_it():
    method = run_random_drop(seed=0, recalibration_batches=2)
    # Drops at steps 3 (two units) and 6 (one): each time 2 batches of 4 run forward through
    # the network as it is after the drops.
    assert sorted(method.ledger.costs) == [0, 2, 3]  # structure versions: one per drop
    costs = [method.ledger.costs[v].fwd for v in (2, 3)]  # after each step's drops
    assert method.ledger.extra_fwd == pytest.approx(2 * BATCH * sum(costs))
    norms = [m for m in method.model.modules() if isinstance(m, nn.BatchNorm2d)]
    # Reset at step 6, then 2 recalibration batches and the training steps 7 and 8.
    assert all(int(m.num_batches_tracked) == 2 + 2 and m.momentum == 0.1 for m in norms)
    with pytest.raises(ValueError, match="recalibration_batches must be"):
        RandomDrop(tiny(), sgd(tiny()), X, schedule=REFERENCE, recalibration_batches=-1)


def test_random_drop_seeds():
    reference_units = {e["unit"] for e in REFERENCE}
    choices = {seed: set(run_random_drop(seed, steps=6).removed) for seed in range(3)}
    assert all(len(units) == 3 for units in choices.values())
    assert any(units != reference_units for units in choices.values())
    assert len({frozenset(u) for u in choices.values()}) > 1
    assert set(run_random_drop(2, steps=6).removed) == choices[2]


def test_random_drop_draws_under_the_reference_cap_per_stage(tmp_path):
    """A reference capped per stage (``max_dropped_fraction_per_stage``) is copied with random
    units under the same cap, read from its config.json: ResNet-20's stages have 3, 2 and 2
    units, so at 0.5 three drops take one unit of each on every seed, where uncapped draws put
    two in one stage; a schedule the cap cannot hold is refused."""
    import json

    from learndrop.methods import build_method
    from learndrop.methods.base import RunInfo
    from learndrop.units import unit_stages

    schedule = [(1, 2), (2, 1)]
    stages = unit_stages(resnet(), X, RandomDrop(resnet(), sgd(resnet()), X,
                                                 schedule=[]).units)
    per_stage = {}
    for cap in (1.0, 0.5):
        for seed in range(6):
            model = resnet()
            optimizer = sgd(model)
            method = RandomDrop(model, optimizer, X, schedule=schedule, seed=seed,
                                recalibration_batches=0, max_dropped_fraction_per_stage=cap)
            for _ in range(3):
                train_step(method, model, optimizer)
            assert len(method.removed) == 3
            per_stage[cap, seed] = Counter(stages[name] for name in method.removed)
    assert all(max(per_stage[0.5, seed].values()) == 1 for seed in range(6))
    assert any(max(per_stage[1.0, seed].values()) == 2 for seed in range(6))
    with pytest.raises(ValueError, match="a cap of 0.2 per stage lets 0 go"):
        RandomDrop(resnet(), sgd(resnet()), X, schedule=schedule,
                   max_dropped_fraction_per_stage=0.2)
    with pytest.raises(ValueError, match="max_dropped_fraction_per_stage='0.5' is invalid"):
        RandomDrop(resnet(), sgd(resnet()), X, schedule=schedule,
                   max_dropped_fraction_per_stage="0.5")  # e.g. a corrupt config.json

    # Built from a reference run directory, the cap comes from its config.json.
    (tmp_path / "summary.json").write_text(json.dumps({"drops": [
        {"unit": "layer1.1", "action": "drop", "step": 1},
        {"unit": "layer1.2", "action": "drop", "step": 1}]}))
    run = RunInfo(seed=0)
    method = build_method("random-drop", resnet(), sgd(resnet()), X,
                          {"reference": str(tmp_path)}, run)
    assert method.summary()["max_dropped_fraction_per_stage"] == 1.0  # no config: no cap
    (tmp_path / "config.json").write_text(json.dumps(
        {"method_options_resolved": {"max_dropped_fraction_per_stage": 0.75}}))
    method = build_method("random-drop", resnet(), sgd(resnet()), X,
                          {"reference": str(tmp_path)}, run)
    assert method.summary()["max_dropped_fraction_per_stage"] == 0.75
    for text, error in (("{", "cannot read .*config.json"), ("[0.75]", "not a record of a run"),
                        ('{"method_options_resolved": [0.75]}', "holds no method options")):
        (tmp_path / "config.json").write_text(text)
        with pytest.raises(MethodOptionError, match=error):
            build_method("random-drop", resnet(), sgd(resnet()), X,
                         {"reference": str(tmp_path)}, run)


def test_random_drop_resumes_only_its_own_seed_and_schedule():
    """Random-drop's own part of resume (resume equals the uninterrupted run:
    test_method_contract)."""
    model = tiny()
    optimizer = sgd(model)
    method = RandomDrop(model, optimizer, X, schedule=REFERENCE, seed=5)
    for _ in range(4):
        train_step(method, model, optimizer)
    with pytest.raises(ValueError, match="seed"):
        RandomDrop(tiny(), sgd(model), X, schedule=REFERENCE, seed=6).load_state_dict(
            method.state_dict())
    with pytest.raises(ValueError, match="schedule"):
        RandomDrop(tiny(), sgd(model), X, schedule=[(1, 1)], seed=5).load_state_dict(
            method.state_dict())


# ---- slim-from-scratch ----------------------------------------------------------------------

def test_slim_from_scratch_trains_the_reference_final_network():
    reference = run_random_drop(seed=1)
    ref_summary = reference.summary()
    model = tiny(seed=0)  # the reference run's initialisation
    optimizer = sgd(model)
    method = SlimFromScratch(model, optimizer, X, dropped=ref_summary)
    assert set(method.dropped) == set(reference.removed)
    assert all(e.step == 0 for e in method.events)
    assert sum(p.numel() for p in model.parameters()) == ref_summary["params_final"]
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    fresh = tiny(seed=0).state_dict()
    slim = model.state_dict()
    dropped_prefixes = tuple(f"{n}." for n in method.dropped)
    assert set(slim) == {k for k in fresh if not k.startswith(dropped_prefixes)}
    assert all(torch.equal(slim[k], fresh[k]) for k in slim)
    for name in method.dropped:
        assert isinstance(model.get_submodule(name), nn.Identity)

    for _ in range(3):
        assert train_step(method, model, optimizer) == []
    summary = method.summary()
    assert summary["params_initial"] == ref_summary["params_initial"]
    assert summary["params_final"] == ref_summary["params_final"]
    slim_cost = measure_cost(model, X)
    assert summary["fwd_flops_reduction"] == pytest.approx(
        1 - slim_cost.fwd / method.ledger.full.fwd)
    assert summary["fwd_flops_reduction"] > ref_summary["fwd_flops_reduction"] > 0

    # Names work as well as events; resume does not duplicate the events.
    by_names = SlimFromScratch(tiny(), sgd(tiny()), X, dropped=sorted(reference.removed))
    assert set(by_names.dropped) == set(method.dropped)
    model2 = tiny(seed=4)
    method2 = SlimFromScratch(model2, sgd(model2), X, dropped=list(reference.removed))
    method2.load_state_dict(checkpoint(method.state_dict()))
    assert method2.summary()["drops"] == summary["drops"]
    assert method2.ledger.totals() == method.ledger.totals()


def test_random_drop_applies_the_synced_decision():
    model = tiny()
    method = RandomDrop(model, sgd(model), X, schedule=[(1, 2)], seed=0,
                        recalibration_batches=0)
    method.sync = lambda names: ["blocks.0", "blocks.5"]  # e.g. rank 0's choice
    events = method.step(BATCH)
    assert [e.unit for e in events] == ["blocks.0", "blocks.5"]
    assert sorted(method.removed) == ["blocks.0", "blocks.5"]
