"""Discovery of droppable units on the model families we support, and on custom models."""

import pytest
import torch
from torch import nn
from torchvision.models import resnet

from learndrop.models import create_model
from learndrop.units import NoDroppableUnitsError, find_units, unit_stages

CIFAR = torch.zeros(2, 3, 32, 32)


def meta_model(name: str) -> nn.Module:
    with torch.device("meta"):
        return create_model(name)


@pytest.mark.parametrize(
    ("name", "blocks", "units"),
    [
        ("resnet18", 8, 5),
        ("resnet34", 16, 13),
        ("resnet50", 16, 12),
        ("resnet101", 33, 29),
        ("resnet152", 50, 46),
        ("resnext50_32x4d", 16, 12),
        ("wide_resnet50_2", 16, 12),
    ],
)
def test_torchvision_resnets_identity_shortcut_blocks(name, blocks, units):
    model = meta_model(name)
    found = find_units(model, torch.zeros(2, 3, 64, 64))
    all_blocks = [
        m for m in model.modules()
        if isinstance(m, (resnet.BasicBlock, resnet.Bottleneck))
    ]
    assert len(all_blocks) == blocks
    assert len(found) == units
    assert all(u.kind == "residual" for u in found)
    for unit in found:
        assert model.get_submodule(unit.name).downsample is None


@pytest.mark.parametrize(
    ("name", "convs", "units"),
    [("vgg11", 8, 4), ("vgg13", 10, 6), ("vgg16", 13, 9), ("vgg19", 16, 12),
     ("vgg11_bn", 8, 4), ("vgg16_bn", 13, 9)],
)
def test_torchvision_vggs_square_stride1_convs(name, convs, units):
    model = meta_model(name)
    found = find_units(model, torch.zeros(2, 3, 64, 64))
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == convs
    assert len(found) == units
    for unit in found:
        conv = model.get_submodule(unit.name)
        assert isinstance(conv, nn.Conv2d) and conv.in_channels == conv.out_channels
        kinds = [type(model.get_submodule(m)) for m in unit.modules]
        bn = [nn.BatchNorm2d] if name.endswith("_bn") else []
        expected = [nn.Conv2d, *bn, nn.ReLU]
        assert kinds == expected


@pytest.mark.parametrize(
    ("name", "units"),
    [("resnet20", 7), ("resnet32", 13), ("resnet44", 19), ("resnet56", 25), ("resnet110", 52),
     ("vgg11_cifar", 4), ("vgg16_cifar", 9)],
)
def test_cifar_models(name, units):
    assert len(find_units(create_model(name), CIFAR)) == units


def test_cifar_resnet56_keeps_downsampling_blocks():
    model = create_model("resnet56")
    names = {u.name for u in find_units(model, CIFAR)}
    blocks = [n for n, m in model.named_modules() if type(m).__name__ == "BasicBlock"]
    assert len(blocks) == 27
    assert set(blocks) - names == {"layer2.0", "layer3.0"}


def test_a_stage_is_the_units_of_one_activation_shape():
    """ResNet-56's droppable blocks fall into its three stages (9 + 8 + 8: each stage's first
    block of the last two downsamples and is no unit); VGG-16's convolutions group between
    its poolings; the stage follows the input's resolution."""
    model = create_model("resnet56")
    stages = unit_stages(model, CIFAR, find_units(model, CIFAR))
    by_stage = {}
    for name, stage in stages.items():
        by_stage.setdefault(stage, []).append(name)
    assert by_stage == {(0, 16, 32, 32): [f"layer1.{i}" for i in range(9)],
                        (1, 32, 16, 16): [f"layer2.{i}" for i in range(1, 9)],
                        (2, 64, 8, 8): [f"layer3.{i}" for i in range(1, 9)]}
    vgg = create_model("vgg16_cifar", in_channels=1)
    small = torch.zeros(2, 1, 16, 16)
    stages = unit_stages(vgg, small, find_units(vgg, small))
    assert stages["features.17"] == stages["features.20"] == (2, 256, 4, 4)
    assert stages["features.34"] == stages["features.40"] == (4, 512, 1, 1)
    assert len(set(stages.values())) == 5

    # An encoder and a decoder at one resolution, a smaller one between them: three stages.
    def conv() -> nn.Module:
        return nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())

    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), conv(), conv(), nn.MaxPool2d(2), conv(),
                        nn.Upsample(scale_factor=2), conv(), conv())
    x = torch.zeros(2, 3, 8, 8)
    stages = unit_stages(net, x, find_units(net, x, names=["1", "2", "4", "6", "7"]))
    assert stages == {"1": (0, 4, 8, 8), "2": (0, 4, 8, 8), "4": (1, 4, 4, 4),
                      "6": (2, 4, 8, 8), "7": (2, 4, 8, 8)}


def test_one_channel_inputs():
    model = create_model("resnet20", in_channels=1)
    assert len(find_units(model, torch.zeros(2, 1, 28, 28))) == 7
    vgg = create_model("vgg16_cifar", in_channels=1)
    assert len(find_units(vgg, torch.zeros(2, 1, 28, 28))) == 9


def test_discovery_does_not_touch_the_model():
    model = create_model("resnet20").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    find_units(model, CIFAR)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


class Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return torch.relu(x + self.conv(x))


class OutOfOrder(nn.Module):
    """Registers its modules in an order different from the one they run in."""

    def __init__(self) -> None:
        super().__init__()
        self.late = Residual(8)
        self.head = nn.Linear(8, 3)
        self.early = Residual(8)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        x = self.late(self.early(self.stem(x)))
        return self.head(x.mean((2, 3)))


def test_custom_model_units_in_execution_order():
    found = find_units(OutOfOrder(), CIFAR)
    assert [u.name for u in found] == ["early", "late"]
    assert [u.kind for u in found] == ["residual", "residual"]


class Stage(nn.Module):
    """Contains residual blocks but is not one itself."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = Residual(8), Residual(8)

    def forward(self, x):
        return self.b(self.a(x))


def test_a_stage_of_blocks_is_not_a_unit():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), Stage())
    assert [u.name for u in find_units(model, CIFAR)] == ["1.a", "1.b"]


def test_no_droppable_unit_is_a_clear_error():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)
    )
    with pytest.raises(NoDroppableUnitsError, match="no droppable unit") as err:
        find_units(model, CIFAR)
    assert "\n" not in str(err.value)


def test_explicit_names():
    model = create_model("resnet20")
    found = find_units(model, CIFAR, names=["layer3.2", "layer1.1"])
    assert [u.name for u in found] == ["layer1.1", "layer3.2"]
    with pytest.raises(NoDroppableUnitsError, match="changes the shape"):
        find_units(model, CIFAR, names=["layer2.0"])
    with pytest.raises(NoDroppableUnitsError, match="does not run"):
        find_units(model, CIFAR, names=["layer9"])


# ---- identity shortcuts however spelled; tied parameters (issue 14, items 2 and 3) ----------

class PassThrough(nn.Module):
    def forward(self, x):
        return x


class CopiedBlock(nn.Module):
    """The widely copied CIFAR ResNet block: its identity shortcut is an empty Sequential and
    it adds in place (``out += self.shortcut(x)``)."""

    def __init__(self, c: int, shortcut: nn.Module) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
        self.shortcut = shortcut

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return torch.relu(out)


def copied_resnet(shortcut) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), CopiedBlock(8, shortcut()),
                         CopiedBlock(8, shortcut()), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 3))


@pytest.mark.parametrize("shortcut", [
    nn.Sequential, nn.Identity, PassThrough, lambda: nn.Sequential(nn.Identity(), PassThrough()),
], ids=["empty-sequential", "identity", "custom-module", "nested"])
def test_every_spelling_of_an_identity_shortcut_is_recognised(shortcut):
    found = find_units(copied_resnet(shortcut), CIFAR)
    assert [(u.name, u.kind) for u in found] == [("1", "residual"), ("2", "residual")]


def test_a_shortcut_that_computes_something_is_not_the_identity():
    model = copied_resnet(lambda: nn.Sequential(nn.Conv2d(8, 8, 1, bias=False)))
    with pytest.raises(NoDroppableUnitsError):
        find_units(model, CIFAR)
    dropout = copied_resnet(lambda: nn.Dropout(0.5))  # parameter-free, but not the identity
    with pytest.raises(NoDroppableUnitsError):
        find_units(dropout, CIFAR)


class TiedNet(nn.Module):
    """Three residual blocks; a conv after them reuses the first block's weight (tied)."""

    def __init__(self, num_classes: int = 3, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 8, 3, 2, 1)
        self.blocks = nn.Sequential(Residual(8), Residual(8), Residual(8))
        self.extra = nn.Conv2d(8, 8, 3, padding=1)
        self.extra.weight = self.blocks[0].conv.weight
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.extra(self.blocks(self.stem(x)))
        return self.head(x.mean((2, 3)))


def test_units_sharing_parameters_with_other_modules_are_not_droppable():
    from learndrop.units import discover

    model = TiedNet()
    found = discover(model, CIFAR)
    assert [u.name for u in found.units] == ["blocks.1", "blocks.2"]
    assert set(found.rejected) == {"blocks.0", "extra"}
    assert "shares its parameter blocks.0.conv.weight with extra.weight" in found.rejected[
        "blocks.0"]
    with pytest.raises(NoDroppableUnitsError, match="cannot be a unit: it shares"):
        find_units(model, CIFAR, names=["blocks.0"])
    assert [u.name for u in find_units(model, CIFAR, names=["blocks.2"])] == ["blocks.2"]


def test_methods_and_flops_work_with_tied_weights():
    import copy

    from learndrop.flops import measure_cost, unit_costs
    from learndrop.methods import create_method

    model = TiedNet()
    untied = copy.deepcopy(model)
    untied.extra.weight = nn.Parameter(untied.extra.weight.detach().clone())
    assert untied.extra.weight is not untied.blocks[0].conv.weight
    assert measure_cost(model, CIFAR) == measure_cost(untied, CIFAR)
    units = find_units(model, CIFAR)
    assert unit_costs(model, CIFAR, units) == unit_costs(untied, CIFAR, units)
    for name in ("full", "learndrop", "stochastic-depth"):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        method = create_method(name, model, optimizer, CIFAR)
        assert [u.name for u in method.units] == ["blocks.1", "blocks.2"]


def test_learndrop_units_says_why_a_part_is_not_droppable(capsys):
    from learndrop.cli import main
    from learndrop.models import register_model

    register_model(TiedNet, name="test-tied-net")
    assert main(["units", "test-tied-net", "--num-classes", "3"]) == 0
    out = capsys.readouterr().out
    assert "test-tied-net: 2 droppable units" in out
    assert "not droppable: blocks.0 shares its parameter blocks.0.conv.weight with extra" in out
    assert "not droppable: extra shares" in out


def test_no_unit_left_says_why():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1),
                          nn.Conv2d(8, 8, 3, padding=1))
    model[2].weight = model[1].weight  # both square convs share one weight
    with pytest.raises(NoDroppableUnitsError, match="not droppable: 1 shares its parameter") as err:
        find_units(model, CIFAR)
    assert "\n" not in str(err.value)


def test_units_named_twice_or_nested_are_refused():
    model = create_model("resnet20", num_classes=10, in_channels=1)
    x = torch.zeros(2, 1, 16, 16)
    with pytest.raises(NoDroppableUnitsError, match="'layer1.1' is named twice"):
        find_units(model, x, ["layer1.1", "layer1.1"])
    with pytest.raises(NoDroppableUnitsError, match="inside another"):
        find_units(model, x, ["layer1.1", "layer1.1.conv1"])
    assert [u.name for u in find_units(model, x, ["layer1.2", "layer1.1"])] == [
        "layer1.1", "layer1.2"]


@pytest.mark.parametrize(("argv", "message"), [(["--image-size", "0"], "--image-size must be >= 8"),
                                               (["--in-channels", "0"], "--in-channels must be"),
                                               (["--num-classes", "1"], "--num-classes must be")])
def test_learndrop_units_refuses_impossible_shapes_in_one_line(capsys, argv, message):
    from learndrop.cli import main

    assert main(["units", "resnet20", *argv]) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
