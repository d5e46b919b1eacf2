"""BatchNorm recalibration after a drop, on ResNet-20 trained briefly on Fashion-MNIST."""

import copy

import pytest
import torch
from torch import nn

from learndrop.recalibrate import batchnorms_after, recalibrate_batchnorm
from learndrop.surgery import drop_unit, freeze_unit
from learndrop.units import find_units

X = torch.zeros(64, 1, 16, 16)


def accuracy(model, loader) -> float:
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in loader)
    return 100 * correct / loader.num_samples


def test_recalibration_gives_the_dropped_network_its_own_statistics(trained_resnet20, fashion16,
                                                                    one_thread):
    trained, batches, test_loader = trained_resnet20
    model = copy.deepcopy(trained)
    before = accuracy(model, test_loader)
    unit = find_units(model, X)[0]  # layer1.0: every later BatchNorm layer sees a new input
    drop_unit(model, unit)
    stale = accuracy(model, test_loader)
    names = batchnorms_after(model, X, unit.modules)
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert names == [n for n in norms if not n.startswith("bn")]  # all but the stem's (bn1)
    untouched = {k: v.clone() for k, v in model.state_dict().items()
                 if not any(k.startswith(n + ".") for n in names)}
    model.train()
    recalibrate_batchnorm(model, [x for x, _ in batches], names)
    # Only the named layers' statistics changed; momentum and train mode are as before.
    assert all(torch.equal(model.state_dict()[k], v) for k, v in untouched.items())
    assert all(m.training for m in model.modules())
    assert all(model.get_submodule(n).momentum == 0.1 for n in names)
    assert all(int(model.get_submodule(n).num_batches_tracked) == len(batches) for n in names)
    recalibrated = accuracy(model, test_loader)
    # The reference: the statistics as well estimated as the training subset allows.
    reference = copy.deepcopy(model)
    recalibrate_batchnorm(reference, [x for x, _ in fashion16[0]], names)
    best = accuracy(reference, test_loader)
    assert abs(recalibrated - best) <= 2.0
    assert recalibrated > stale + 5  # stale statistics do real harm right after a drop
    assert recalibrated > before - 10


def test_frozen_units_keep_their_statistics_and_bad_input_is_refused(trained_resnet20,
                                                                     one_thread):
    trained, batches, _ = trained_resnet20
    model = copy.deepcopy(trained)
    units = find_units(model, X)
    freeze_unit(model, units[3])
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(units[3].name)}
    names = batchnorms_after(model, X, units[0].modules)
    assert names and not any(n.startswith(units[3].name + ".") for n in names)
    recalibrate_batchnorm(model, [x for x, _ in batches], names)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in frozen.items())
    with pytest.raises(ValueError, match="at least one batch"):
        recalibrate_batchnorm(model, [], names)
    with pytest.raises(ValueError, match="not a trainable BatchNorm"):
        recalibrate_batchnorm(model, [batches[0][0]], [f"{units[3].name}.bn1"])
    with pytest.raises(ValueError, match="runs in the forward pass"):
        batchnorms_after(model, X, ["no.such.module"])
