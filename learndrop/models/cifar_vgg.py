"""VGG for small images (CIFAR 32x32, MNIST-like 28x28).

Configurations A (VGG-11) and D (VGG-16) of Simonyan & Zisserman 2015, with
BatchNorm after every conv and a single linear classifier on globally pooled
512-channel features. All convs, BNs, ReLUs and pools sit in one flat
`features` Sequential (features.0 conv, features.1 bn, features.2 relu, ...):
a stride-1 conv with in_channels == out_channels plus its BN and ReLU is what
Learn&Drop can drop in a plain stack (VGG-16: 9 of 13 convs, VGG-11: 4 of 8).
"""

from __future__ import annotations

import torch
from torch import nn

from learndrop.models.registry import register_model

# Output channels of each 3x3 conv; "M" is a 2x2 max-pool closing a stage.
_CONFIGS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class CifarVGG(nn.Module):
    """VGG with BatchNorm for small inputs; `config` is "A" (VGG-11) or "D" (VGG-16)."""

    def __init__(self, config: str, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in _CONFIGS[config]:
            if item == "M":
                # ceil_mode keeps odd sizes alive through five pools:
                # 28 -> 14 -> 7 -> 4 -> 2 -> 1 (floor would reach 0 at the fifth).
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                out = int(item)
                # No conv bias: the BatchNorm right after it has its own.
                layers += [
                    nn.Conv2d(channels, out, 3, padding=1, bias=False),
                    nn.BatchNorm2d(out),
                    nn.ReLU(inplace=True),
                ]
                channels = out
        self.features = nn.Sequential(*layers)
        # Global pooling makes the classifier independent of the input size.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


@register_model
def vgg11_cifar(num_classes: int = 10, in_channels: int = 3) -> CifarVGG:
    """VGG-11 (config A) with BatchNorm for 28x28 / 32x32 inputs: 8 convs, 9.2M parameters."""
    return CifarVGG("A", num_classes, in_channels)


@register_model
def vgg16_cifar(num_classes: int = 10, in_channels: int = 3) -> CifarVGG:
    """VGG-16 (config D) with BatchNorm for 28x28 / 32x32 inputs: 13 convs, 14.7M parameters."""
    return CifarVGG("D", num_classes, in_channels)
