"""Measured drop costs, on ResNet-20 trained briefly on Fashion-MNIST."""

import copy

import pytest
import torch
from torch import nn

from learndrop.drop_cost import batch_loss, drop_costs, joint_drop_cost
from learndrop.surgery import freeze_unit
from learndrop.units import find_units

X = torch.zeros(64, 1, 16, 16)


def test_measuring_changes_nothing_and_a_zero_branch_costs_nothing(trained_resnet20,
                                                                    one_thread):
    trained, batches, _ = trained_resnet20
    model = copy.deepcopy(trained)
    units = find_units(model, X)
    freeze_unit(model, units[5])
    # A block whose residual branch outputs zero computes relu(x) = x: removing it costs 0.
    zero = model.get_submodule(units[2].name).bn2
    nn.init.zeros_(zero.weight)
    nn.init.zeros_(zero.bias)
    model.train()
    state = copy.deepcopy(model.state_dict())
    live = [u for i, u in enumerate(units) if i != 5]
    loss, costs = drop_costs(model, live, batches)
    # Parameters and every buffer (BatchNorm running statistics, batch counts) bit-identical.
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state.items())
    assert all(m.training for n, m in model.named_modules()
               if not n.startswith(units[5].name))  # frozen units stay in eval mode
    assert set(costs) == {u.name for u in live}
    assert costs[units[2].name] == pytest.approx(0.0, abs=1e-6)
    assert max(costs.values()) > 0.01  # trained units do matter
    assert loss == pytest.approx(batch_loss(model, batches))
    # The cost is the loss of the network without the unit minus the loss with it.
    without = copy.deepcopy(model)
    setattr(without.get_submodule(units[0].name.rpartition(".")[0]),
            units[0].name.rpartition(".")[2], nn.Identity())
    assert costs[units[0].name] == pytest.approx(batch_loss(without, batches) - loss, abs=1e-5)
    with pytest.raises(ValueError, match="at least one batch"):
        drop_costs(model, live, [])


def test_the_joint_cost_bypasses_every_unit_at_once(trained_resnet20, one_thread):
    """One unit's joint cost is its cost; several units' is the loss of the network without all
    of them minus the loss with them, which their costs do not add up to; nothing changes."""
    trained, batches, _ = trained_resnet20
    model = copy.deepcopy(trained).train()
    units = find_units(model, X)
    state = copy.deepcopy(model.state_dict())
    loss, costs = drop_costs(model, units[:3], batches)
    assert joint_drop_cost(model, units[:1], batches) == pytest.approx(costs[units[0].name],
                                                                        abs=1e-6)
    together = joint_drop_cost(model, units[:3], batches, base=loss)
    without = copy.deepcopy(model)
    for unit in units[:3]:
        parent, _, child = unit.name.rpartition(".")
        setattr(without.get_submodule(parent), child, nn.Identity())
    assert together == pytest.approx(batch_loss(without, batches) - loss, abs=1e-5)
    assert together != pytest.approx(sum(costs[u.name] for u in units[:3]), abs=1e-4)
    after = model.state_dict()
    assert list(after) == list(state) and all(torch.equal(after[k], v) for k, v in state.items())
    with pytest.raises(ValueError, match="at least one batch"):
        joint_drop_cost(model, units[:2], [])
