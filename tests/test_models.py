"""Tests for the model registry (`learndrop.models`)."""

from __future__ import annotations

import io
import operator
import pickle
import urllib.error

import pytest
import torch
import torchvision.models._api
from torch import fx, nn

from learndrop.models import (
    UnknownModelError,
    create_model,
    list_models,
    register_model,
    replace_head,
)
from learndrop.models.cifar_resnet import BasicBlock, ChannelPadShortcut
from learndrop.models.torchvision_models import TORCHVISION_MODELS, _replace_stem_conv

CIFAR_RESNETS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9, "resnet110": 18}
CIFAR_MODELS = [*CIFAR_RESNETS, "vgg11_cifar", "vgg16_cifar"]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_name_is_registered() -> None:
    assert set(list_models()) == set(CIFAR_MODELS) | set(TORCHVISION_MODELS)
    # Natural order: resnet20 comes before resnet110.
    names = list_models()
    assert names.index("resnet20") < names.index("resnet110")


@pytest.mark.parametrize("name", CIFAR_MODELS)
@pytest.mark.parametrize("in_channels, size", [(3, 32), (1, 28)])
def test_cifar_models_forward(name: str, in_channels: int, size: int) -> None:
    model = create_model(name, num_classes=7, in_channels=in_channels)
    out = model(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "name, expected",
    # He et al. 2016, Table 6: 0.27M, 0.85M, 1.7M parameters.
    [("resnet20", 0.27e6), ("resnet56", 0.85e6), ("resnet110", 1.7e6)],
)
def test_cifar_resnet_parameter_counts(name: str, expected: float) -> None:
    assert n_params(create_model(name)) == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize("name, n", CIFAR_RESNETS.items())
def test_cifar_resnet_blocks(name: str, n: int) -> None:
    model = create_model(name)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    identity = [b for b in blocks if isinstance(b.shortcut, nn.Identity)]
    # Only the first block of stages 2 and 3 downsamples (ResNet-56: 25 of 27 are units).
    assert (len(blocks), len(identity)) == (3 * n, 3 * n - 2)
    assert isinstance(model.get_submodule("layer2.0").shortcut, ChannelPadShortcut)
    assert isinstance(model.get_submodule("layer3.0").shortcut, ChannelPadShortcut)


def test_option_a_shortcut_subsamples_and_zero_pads() -> None:
    x = torch.randn(2, 16, 9, 9)
    out = ChannelPadShortcut(16, 32)(x)
    assert out.shape == (2, 32, 5, 5)  # same as a stride-2, padding-1 3x3 conv on 9x9
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert not out[:, :8].any() and not out[:, 24:].any()
    assert not list(ChannelPadShortcut(16, 32).parameters())


def test_block_traces_as_add_of_branch_and_shortcut_of_input() -> None:
    # Unit discovery relies on this graph shape: add(bn2, shortcut(x)), x the block
    # input. fx keeps nn.Identity as a leaf call, so the add sees `shortcut(x)`.
    block = BasicBlock(16, 16)
    graph = fx.symbolic_trace(block).graph
    (x,) = [node for node in graph.nodes if node.op == "placeholder"]
    (add,) = [node for node in graph.nodes if node.target is operator.add]
    branch, shortcut = add.args
    assert (branch.op, branch.target) == ("call_module", "bn2")
    assert (shortcut.op, shortcut.target, shortcut.args) == ("call_module", "shortcut", (x,))
    assert isinstance(block.shortcut, nn.Identity)


def test_cifar_resnet_pickles() -> None:
    model = create_model("resnet20").eval()
    clone = pickle.loads(pickle.dumps(model))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(clone(x), model(x))
    torch.save(model, io.BytesIO())


@pytest.mark.parametrize("name, n_convs, n_same", [("vgg11_cifar", 8, 4), ("vgg16_cifar", 13, 9)])
def test_cifar_vgg_layout(name: str, n_convs: int, n_same: int) -> None:
    features = create_model(name).features
    assert isinstance(features[0], nn.Conv2d)
    assert isinstance(features[1], nn.BatchNorm2d)
    assert isinstance(features[2], nn.ReLU)
    convs = [m for m in features if isinstance(m, nn.Conv2d)]
    same = [c for c in convs if c.stride == (1, 1) and c.in_channels == c.out_channels]
    assert (len(convs), len(same)) == (n_convs, n_same)


def test_unknown_name_is_one_line_with_close_matches() -> None:
    with pytest.raises(UnknownModelError) as info:
        create_model("resnet57")
    message = str(info.value)
    assert "\n" not in message
    assert "'resnet57'" in message and "resnet56" in message
    assert isinstance(info.value, ValueError)


def test_unknown_name_without_close_match_lists_all() -> None:
    with pytest.raises(UnknownModelError, match=r"choose one of: .*resnet20") as info:
        create_model("transformer")
    assert "\n" not in str(info.value)


def test_names_are_case_insensitive() -> None:
    assert isinstance(create_model("ResNet20"), type(create_model("resnet20")))
    assert isinstance(create_model(" VGG11_CIFAR "), type(create_model("vgg11_cifar")))


def test_register_model_rejects_duplicates() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model(lambda num_classes, in_channels: nn.Identity(), name="ResNet20")


@pytest.mark.parametrize("name, head", [("resnet20", "fc"), ("vgg16_cifar", "classifier")])
def test_replace_head(name: str, head: str) -> None:
    model = create_model(name, num_classes=10)
    body = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(head)}
    assert replace_head(model, 3) is model
    assert model.get_submodule(head).out_features == 3
    for k, v in body.items():  # everything but the head is untouched
        assert torch.equal(model.state_dict()[k], v)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_replace_head_of_torchvision_vgg_on_meta() -> None:
    with torch.device("meta"):
        model = create_model("vgg16", num_classes=1000)
    replace_head(model, 5)
    head = model.classifier[6]
    assert (head.in_features, head.out_features) == (4096, 5)
    assert head.weight.is_meta


@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_torchvision_models_structure(name: str) -> None:
    # Meta tensors: full structure, no memory and no init cost for the 100M+ models.
    with torch.device("meta"):
        model = create_model(name, num_classes=7, in_channels=1)
    stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert stem.in_channels == 1
    assert stem.kernel_size == ((7, 7) if name.startswith("res") or "wide" in name else (3, 3))
    assert head.out_features == 7
    assert all(p.is_meta for p in model.parameters())


def test_torchvision_resnet18_forward_one_channel() -> None:
    model = create_model("resnet18", num_classes=4, in_channels=1)
    assert model.conv1.in_channels == 1 and model.conv1.stride == (2, 2)
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 4)


def test_pretrained_stem_adaptation_keeps_grey_response() -> None:
    # A grey image fed as RGB must give the same stem output as the 1-channel stem.
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1))
    rgb_conv = model[0]
    grey = torch.randn(2, 1, 16, 16)
    expected = rgb_conv(grey.expand(-1, 3, -1, -1))
    _replace_stem_conv(model, 1, pretrained=True)
    torch.testing.assert_close(model(grey), expected)


def test_pretrained_download_failure_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # Simulate an offline machine; nothing is downloaded.
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match="could not download torchvision weights for resnet18"):
        create_model("resnet18", pretrained=True)
