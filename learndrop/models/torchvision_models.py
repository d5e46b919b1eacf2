"""torchvision's ImageNet ResNets and VGGs, registered under their torchvision names.

They are built without weights by default (nothing is downloaded), with
`num_classes` outputs and, for `in_channels != 3`, a stem conv of the same kind
taking that many channels. `pretrained=True` loads torchvision's default weights,
which needs internet access.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tvm

from learndrop.models.registry import ModelBuilder, register_model, replace_head

TORCHVISION_MODELS: tuple[str, ...] = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "wide_resnet50_2",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "vgg11_bn",
    "vgg13_bn",
    "vgg16_bn",
    "vgg19_bn",
)


def _replace_stem_conv(model: nn.Module, in_channels: int, pretrained: bool) -> None:
    """Swap the first Conv2d for one with `in_channels` inputs and otherwise the same setup."""
    path, old = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        old.kernel_size,
        old.stride,
        old.padding,
        old.dilation,
        old.groups,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    with torch.no_grad():
        if pretrained:
            # Keep what the RGB filters learned (timm's adapt_input_conv): a grey
            # image sees their sum; otherwise tile the RGB filters over the new
            # channels, rescaled so that the response keeps its magnitude.
            if in_channels == 1:
                new.weight.copy_(old.weight.sum(dim=1, keepdim=True))
            else:
                repeats = -(-in_channels // old.in_channels)  # ceil division
                tiled = old.weight.repeat(1, repeats, 1, 1)[:, :in_channels]
                new.weight.copy_(tiled * (old.in_channels / in_channels))
            if old.bias is not None:
                new.bias.copy_(old.bias)
        else:
            # Same initialisation torchvision gives its own ResNet and VGG convs.
            nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
            if new.bias is not None:
                nn.init.zeros_(new.bias)
    parent_path, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent_path), attr, new)


def _make_builder(name: str) -> ModelBuilder:
    tv_builder = tvm.get_model_builder(name)

    def build(num_classes: int = 10, in_channels: int = 3, pretrained: bool = False) -> nn.Module:
        if pretrained:
            try:
                model = tv_builder(weights="DEFAULT")
            except OSError as err:  # urllib's URLError and socket errors are OSErrors
                raise RuntimeError(
                    f"could not download torchvision weights for {name} (no internet?); "
                    "download them elsewhere and pass --weights FILE"
                ) from err
            if num_classes != 1000:
                replace_head(model, num_classes)
        else:
            model = tv_builder(weights=None, num_classes=num_classes)
        if in_channels != 3:
            _replace_stem_conv(model, in_channels, pretrained)
        return model

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"torchvision `{name}` (ImageNet architecture); weights only if pretrained."
    return build


for _name in TORCHVISION_MODELS:
    register_model(_make_builder(_name), name=_name)
