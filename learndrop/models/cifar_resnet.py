"""CIFAR ResNets of He et al. 2016, "Deep Residual Learning for Image Recognition", §4.2.

A 3x3 stem with 16 channels, three stages of n BasicBlocks with 16, 32 and 64
channels (depth = 6n + 2), global average pooling and a linear head. The first
block of stages 2 and 3 halves the resolution; its shortcut is the paper's
parameter-free "option A". Every other block has an identity shortcut, which is
what makes it a droppable unit for Learn&Drop (ResNet-56: 25 of its 27 blocks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from learndrop.models.registry import register_model


class ChannelPadShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 in space and zero-pad the new channels.

    A module rather than a lambda so that models pickle (checkpoints, DataLoader
    workers, torch.compile) and show up by name in `print(model)`.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        # Static padding amounts keep the forward free of shape arithmetic (fx-traceable).
        extra = out_channels - in_channels
        self.pad_front = extra // 2
        self.pad_back = extra - extra // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::2, ::2]
        # F.pad pads the last dimensions first: (W, W, H, H, C, C).
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}"


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut: relu(bn2(conv2(relu(bn1(conv1(x))))) + s(x))."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = ChannelPadShortcut(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # Keep this exact shape: unit discovery traces the block with torch.fx and
        # recognises a residual unit by `add(branch, x)` with x the block input.
        out = out + self.shortcut(x)
        return F.relu(out)


class CifarResNet(nn.Module):
    """ResNet-`depth` for small images (depth = 6n + 2: 20, 32, 44, 56, 110, ...).

    Works for any input of at least 8x8 pixels: global average pooling makes the
    head independent of the input size.
    """

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_stage(16, 16, n, stride=1)
        self.layer2 = self._make_stage(16, 32, n, stride=2)
        self.layer3 = self._make_stage(32, 64, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He initialisation, as in the paper (torchvision's convention: fan_out).
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _make_stage(in_channels: int, out_channels: int, n: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(in_channels, out_channels, stride)]
        blocks += [BasicBlock(out_channels, out_channels) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


@register_model
def resnet20(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-20 (0.27M parameters, 9 blocks)."""
    return CifarResNet(20, num_classes, in_channels)


@register_model
def resnet32(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-32 (0.46M parameters, 15 blocks)."""
    return CifarResNet(32, num_classes, in_channels)


@register_model
def resnet44(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-44 (0.66M parameters, 21 blocks)."""
    return CifarResNet(44, num_classes, in_channels)


@register_model
def resnet56(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-56 (0.85M parameters, 27 blocks)."""
    return CifarResNet(56, num_classes, in_channels)


@register_model
def resnet110(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-110 (1.7M parameters, 54 blocks)."""
    return CifarResNet(110, num_classes, in_channels)
