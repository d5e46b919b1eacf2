"""Dropping and freezing units: the network, its FLOPs and its optimizer after surgery."""

import copy
import io

import torch
from torch import nn

from learndrop.flops import measure_cost
from learndrop.methods import LearnDrop
from learndrop.models import create_model
from learndrop.surgery import drop_unit, freeze_unit
from learndrop.units import find_units

X = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


def train_steps(model, optimizer, steps=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        x = torch.randn(4, 3, 16, 16, generator=g)
        y = torch.randint(0, 10, (4,), generator=g)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()


def test_dropped_unit_no_longer_runs_and_its_flops_are_gone():
    torch.manual_seed(0)
    model = create_model("resnet20")
    units = find_units(model, X)
    unit = units[3]
    fired = []
    model.get_submodule(unit.name).register_forward_hook(lambda *a: fired.append(1))
    model(X)
    assert fired == [1]
    full = measure_cost(model, X)
    # The unit's share of forward FLOPs, measured on the unit alone.
    block = model.get_submodule(unit.name)
    inputs = []
    handle = block.register_forward_pre_hook(lambda m, a: inputs.append(a[0]))
    model(X)
    handle.remove()
    share = measure_cost(copy.deepcopy(block), inputs[0]).fwd

    params_before = sum(p.numel() for p in model.parameters())
    released = drop_unit(model, unit, None)
    assert sum(p.numel() for p in model.parameters()) == params_before - released > 0
    fired.clear()
    model(X)
    assert fired == []
    assert isinstance(model.get_submodule(unit.name), nn.Identity)
    after = measure_cost(model, X)
    assert abs((full.fwd - after.fwd) - share) / share < 0.01
    assert after.bwd < full.bwd


def test_dropping_equals_removing_the_residual_branch_in_eval():
    torch.manual_seed(0)
    model = create_model("resnet20")
    train_steps(model, sgd(model))  # non-trivial BatchNorm statistics
    model.eval()
    units = find_units(model, X)
    reference = copy.deepcopy(model)
    for unit in (units[1], units[5]):
        # F(x) = 0 when the branch's last BatchNorm outputs zeros: relu(0 + x) = x for x >= 0.
        bn2 = reference.get_submodule(unit.name).bn2
        nn.init.zeros_(bn2.weight)
        nn.init.zeros_(bn2.bias)
        drop_unit(model, unit, None)
    with torch.no_grad():
        torch.testing.assert_close(model(X), reference(X), rtol=1e-5, atol=1e-5)


def test_vgg_conv_group_drop_keeps_other_outputs():
    torch.manual_seed(0)
    model = create_model("vgg11_cifar").eval()
    x = torch.randn(2, 3, 32, 32)
    units = find_units(model, x)
    unit = units[0]
    drop_unit(model, unit, None)
    for name in unit.modules:
        assert isinstance(model.get_submodule(name), nn.Identity)
    assert model(x).shape == (2, 10)


def test_optimizer_state_round_trips_after_drops():
    torch.manual_seed(0)
    model = create_model("resnet20")
    optimizer = sgd(model)
    ld = LearnDrop(model, optimizer, X)
    train_steps(model, optimizer)
    n_before = len(optimizer.state)
    for unit in (ld.units[0], ld.units[4]):
        ld.apply(unit, "drop")
    assert len(optimizer.state) == n_before - 2 * 6  # conv1, bn1 (w, b), conv2, bn2 (w, b)
    live = {id(p) for p in model.parameters()}
    assert all(id(p) in live for g in optimizer.param_groups for p in g["params"])
    assert all(id(p) in live for p in optimizer.state)
    train_steps(model, optimizer, seed=1)  # the optimizer keeps working

    # Resume: fresh model and optimizer, rebuilt into the dropped structure, then loaded.
    buffer = io.BytesIO()
    state = {"model": model.state_dict(), "optim": optimizer.state_dict(), "ld": ld.state_dict()}
    torch.save(state, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    torch.manual_seed(123)
    model2 = create_model("resnet20")
    optimizer2 = sgd(model2)
    ld2 = LearnDrop(model2, optimizer2, X)
    ld2.load_state_dict(saved["ld"])
    model2.load_state_dict(saved["model"])
    optimizer2.load_state_dict(saved["optim"])
    assert [u.name for u in ld2.live_units] == [u.name for u in ld.live_units]
    train_steps(model, optimizer, seed=2)
    train_steps(model2, optimizer2, seed=2)
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), k


def test_freeze_leaves_weights_and_statistics_bit_identical():
    torch.manual_seed(0)
    model = create_model("resnet20")
    optimizer = sgd(model)
    units = find_units(model, X)
    unit = units[2]
    train_steps(model, optimizer)
    freeze_unit(model, unit, optimizer)
    block = model.get_submodule(unit.name)
    frozen = {k: v.clone() for k, v in block.state_dict().items()}
    others = {k: v.clone() for k, v in model.layer3.state_dict().items()}
    model.train()
    train_steps(model, optimizer, steps=3, seed=1)
    assert not block.training and model.training
    for k, v in block.state_dict().items():
        assert torch.equal(v, frozen[k]), k  # weights, running_mean/var, num_batches_tracked
    assert any(not torch.equal(v, others[k]) for k, v in model.layer3.state_dict().items())
    cost = measure_cost(model, X)
    assert cost.fwd == measure_cost(create_model("resnet20"), X).fwd


def test_flops_per_sample_do_not_depend_on_the_example_batch_size():
    """A batch of one before BatchNorm1d: training-mode BatchNorm refuses one value per
    channel, and FLOPs are measured in training mode (issue 14, item 6)."""
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(8), nn.Linear(8, 10)).train()
    x = torch.randn(16, 3, 16, 16)
    one, sixteen = measure_cost(model, x[:1]), measure_cost(model, x)
    assert one == sixteen and one.fwd > 0 and one.bwd > 0
    method = LearnDrop(model, sgd(model), x[:1], steps_per_check=1)
    assert [u.name for u in method.units] == ["3"]
    assert method.ledger.full == sixteen
    assert model.training  # the model is left as it was
