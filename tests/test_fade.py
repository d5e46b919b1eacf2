"""Fading a unit out before its drop (``fade_steps``): the blend, the schedule, the guards."""

import copy
import json
import math
import os

import pytest
import torch
from torch import nn

from learndrop import DropPolicy, LearnDrop, PolicyError
from learndrop.methods import MethodOptionError, create_method
from learndrop.models import create_model
from learndrop.surgery import Fade, drop_unit
from learndrop.train import TrainConfig, train
from learndrop.units import find_units

EAGER_FIELDS = {"warmup_checks": 0, "change_threshold": 100.0, "max_slope": 1e9,
                "max_loss_rise": math.inf}
F16 = torch.zeros(64, 1, 16, 16)


def test_a_compiled_forward_follows_the_fade_without_recompiling(one_thread):
    """The blend weight is a tensor updated in place: one compiled graph serves every step of a
    fade (a float would be baked into the graph, and each new value would recompile)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=1).eval()
    x = torch.randn(2, 1, 16, 16)
    fade = Fade(model, find_units(model, x)[4])
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(model, backend=counting)
    try:
        with torch.no_grad():
            for alpha in (0.0, 0.25, 0.5, 1.0):
                fade.alpha = alpha
                torch.testing.assert_close(compiled(x), model(x))
        assert len(graphs) == 1
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize(("model_name", "which"), [("vgg16_cifar", 3), ("resnet20", 4)])
def test_a_fade_goes_from_the_unit_to_its_drop(model_name, which, one_thread):
    """alpha = 0 is the network as it is, alpha = 1 the network without the unit (a plain
    convolution with its BatchNorm and ReLU, or a residual block), and in between the unit's
    gradients shrink with 1 - alpha; removing the fade restores the unit."""
    torch.manual_seed(0)
    model = create_model(model_name).eval()
    x = torch.randn(4, 3, 32, 32)
    unit = find_units(model, x)[which]
    before = model(x)
    fade = Fade(model, unit)
    assert torch.equal(model(x), before)
    fade.alpha = 1.0
    dropped = copy.deepcopy(model)  # its copy of the fade goes with the unit's modules
    drop_unit(dropped, unit)
    torch.testing.assert_close(model(x), dropped(x))
    assert not torch.allclose(model(x), before, atol=1e-3)

    def grad_norm(alpha):
        fade.alpha = alpha
        model.zero_grad()
        model(x).square().sum().backward()
        return torch.linalg.vector_norm(torch.cat(
            [p.grad.flatten() for p in unit.parameters(model)])).item()

    assert grad_norm(1.0) == 0.0 and grad_norm(0.5) > 0.0
    fade.remove()
    torch.testing.assert_close(model(x), before)
    with pytest.raises(ValueError, match="alpha must be in"):
        fade.alpha = 1.5


def sgd_steps(model, optimizer, method, batches):
    for x, y in batches:
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
        method.step(len(x), batch=(x, y))


def fading_run(trained, batches, fade_steps=3, total_steps=100, **fields):
    model = copy.deepcopy(trained)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    policy = DropPolicy(**{**EAGER_FIELDS, "max_drops_per_check": 2, "max_drop_cost": 10.0,
                           "fade_steps": fade_steps, **fields})
    ld = LearnDrop(model, optimizer, F16, policy=policy, total_steps=total_steps)
    sgd_steps(model, optimizer, ld, batches)
    return model, optimizer, ld


def test_decided_units_fade_out_then_drop(trained_resnet20, one_thread):
    """The check starts fades, not drops: the units stay in the network, trained, their output
    blended with their input by a weight that rises by 1/fade_steps per step; after fade_steps
    steps they are dropped (the event carries the check's scores and cost), BatchNorm is
    recalibrated, and the units never count twice."""
    trained, batches, _ = trained_resnet20
    model, optimizer, ld = fading_run(trained, batches)
    version = ld.structure_version
    assert ld.check() == []  # nothing has left yet
    fading = sorted(ld.fading)
    assert len(fading) == 2 and ld.structure_version == version + 1
    assert ld.metrics()["fading"] == fading
    assert {ld.metrics()["scores"][n]["action"] for n in fading} == {"fade"}
    costs = {n: ld.last_costs[n] for n in fading}
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    for name in fading:
        assert not isinstance(model.get_submodule(name), nn.Identity)
        assert all(id(p) in held for p in model.get_submodule(name).parameters())
    alphas = []
    for step in range(3):
        alphas.extend(ld.fading[n][0].alpha for n in fading)
        sgd_steps(model, optimizer, ld, batches[step:step + 1])
        if step < 2:
            assert ld.events == []
    assert alphas == pytest.approx([0.0, 0.0, 1 / 3, 1 / 3, 2 / 3, 2 / 3])
    assert ld.fading == {} and sorted(e.unit for e in ld.events) == fading
    for event in ld.events:
        assert event.action == "drop" and event.step == len(batches) + 3
        assert event.drop_cost == pytest.approx(costs[event.unit])
        assert isinstance(model.get_submodule(event.unit), nn.Identity)
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert int(bn.num_batches_tracked) == ld.recalibration_batches  # recomputed after the drop
    assert ld.summary()["units_dropped"] == 2


def _hooked(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]


@pytest.mark.parametrize(("steps", "leaves"), [(1, False), (2, True)])
def test_finishing_mid_fade_settles_each_unit_at_its_nearer_end(steps, leaves, trained_resnet20,
                                                                  one_thread):
    """A run that stops early (``finish``) with units fading out: a unit at least half gone
    (alpha 2/4) is dropped, one a quarter gone stays as it is; the blend's hooks are removed
    either way and BatchNorm is recalibrated (its statistics were gathered with the blend)."""
    trained, batches, _ = trained_resnet20
    model, optimizer, ld = fading_run(trained, batches, fade_steps=4)
    ld.check()
    fading = sorted(ld.fading)
    sgd_steps(model, optimizer, ld, batches[:steps])
    assert _hooked(model) and {f[0].alpha for f in ld.fading.values()} == {steps / 4}
    version = ld.structure_version
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    tracked = int(bn.num_batches_tracked)
    x = batches[0][0]

    events = ld.finish()
    assert ld.fading == {} and _hooked(model) == [] and ld.metrics()["fading"] == []
    assert ld.structure_version > version  # a compiled forward is rebuilt without the hooks
    assert int(bn.num_batches_tracked) == ld.recalibration_batches != tracked
    if leaves:
        assert sorted(e.unit for e in events) == fading
        assert all(e.action == "drop" and e.step == len(batches) + steps for e in events)
        assert all(isinstance(model.get_submodule(n), nn.Identity) for n in fading)
        assert ld.summary()["units_dropped"] == 2
    else:
        assert events == [] and ld.removed == {}
        assert set(fading) <= set(ld.tracker.units)  # live again: scored if training goes on
        assert all(ld.streaks[name] == 0 for name in fading)  # a new streak to earn
        assert not any(isinstance(model.get_submodule(n), nn.Identity) for n in fading)
        # The unit computes F(x) again: the plain network with the same weights and statistics.
        plain = copy.deepcopy(trained)
        plain.load_state_dict(model.state_dict())
        model.eval()
        plain.eval()
        torch.testing.assert_close(model(x), plain(x))
    assert ld.finish() == []  # nothing left in flight


def test_fading_units_count_toward_the_caps(trained_resnet20, one_thread):
    trained, batches, _ = trained_resnet20
    # 7 units, at most 2 ever: both go to fades at the first check, none at the next.
    model, optimizer, ld = fading_run(trained, batches, fade_steps=8, max_dropped_fraction=0.3)
    ld.check()
    assert len(ld.fading) == 2
    sgd_steps(model, optimizer, ld, batches)
    assert ld.check() == [] and len(ld.fading) == 2
    # Decisions see the fading units' parameters as gone (the last trainable ones never go).
    leaving = {id(p) for name in ld.fading
               for p in model.get_submodule(name).parameters()}
    assert not leaving & ld._trainable_ids()


def test_resuming_mid_fade_continues_it_exactly(trained_resnet20, one_thread):
    trained, batches, _ = trained_resnet20
    model, optimizer, ld = fading_run(trained, batches, fade_steps=3)
    ld.check()
    sgd_steps(model, optimizer, ld, batches[:1])
    saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()),
             copy.deepcopy(ld.state_dict()))
    sgd_steps(model, optimizer, ld, batches[1:3])

    resumed = copy.deepcopy(trained)
    resumed.load_state_dict(saved[0])
    opt2 = torch.optim.SGD(resumed.parameters(), lr=0.01, momentum=0.9)
    ld2 = LearnDrop(resumed, opt2, F16, policy=ld.policy, total_steps=100)
    ld2.load_state_dict(saved[2])
    opt2.load_state_dict(saved[1])
    assert [f[0].alpha for f in ld2.fading.values()] == pytest.approx([1 / 3, 1 / 3])
    assert not set(ld2.fading) & set(ld2.tracker.units)  # leaving: not scored again
    sgd_steps(resumed, opt2, ld2, batches[1:3])
    assert [e.to_dict() for e in ld2.events] == [e.to_dict() for e in ld.events]
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="resume with the fade_steps it was saved with"):
        LearnDrop(copy.deepcopy(trained), opt2, F16, policy=DropPolicy(),
                  total_steps=100).load_state_dict(saved[2])


def test_fade_guards(trained_resnet20, one_thread):
    trained, batches, _ = trained_resnet20
    # A fade that could not end before the run does is not started (nor is anything dropped).
    model, optimizer, ld = fading_run(trained, batches, fade_steps=3,
                                      total_steps=len(batches) + 3)
    assert ld.check() == [] and ld.fading == {} and ld.removed == {}
    with pytest.raises(MethodOptionError, match="fade_steps=3 needs the run's length"):
        LearnDrop(copy.deepcopy(trained), optimizer, F16, policy=DropPolicy(fade_steps=3))
    with pytest.raises(PolicyError, match="fade_steps=-1 is invalid"):
        DropPolicy(fade_steps=-1)
    with pytest.raises(PolicyError, match="--method freeze freezes units, which keep"):
        create_method("freeze", copy.deepcopy(trained), optimizer, F16,
                      policy=DropPolicy(fade_steps=3))


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist")
                    and not os.environ.get("LEARNDROP_DATA"),
                    reason="Fashion-MNIST not installed (make test installs it)")
def test_the_trainer_fades_units_out_over_an_epoch(tmp_path, one_thread):
    """``--fade-steps 10`` with 10 steps per epoch: the units decided at the end of an epoch
    fade during the next and leave at its end; the metrics rows, the log and the heat map say
    so, and the run's forward FLOPs per step fall only when they leave."""
    lines = []
    summary = train(TrainConfig(
        model="resnet20", dataset="fashion-mnist", epochs=4, subset=640, test_subset=200,
        batch_size=64, lr=0.05, image_size=16, out=str(tmp_path / "run"), quiet=True,
        method_options={"change_threshold": 0.9, "max_drops_per_check": 2,
                        "max_drop_cost": math.inf, "fade_steps": 10}), log=lines.append)
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    started = next(r for r in rows if r["fading"])
    left = rows[rows.index(started) + 1]
    assert sorted(left["dropped"]) == started["fading"] and not left["fading"]
    assert all(d["step"] == started["step"] + 10 for d in summary["drops"])
    assert started["fwd_flops_per_sample"] == rows[0]["fwd_flops_per_sample"]
    assert left["fwd_flops_per_sample"] < started["fwd_flops_per_sample"]
    assert any(f"(fading out: {', '.join(started['fading'])})" in line for line in lines)
    assert (tmp_path / "run" / "unit_scores.png").exists()
