"""Models, one registry. Every model takes [0,1] images; `Normalized` puts the dataset's normalisation inside.

Registered: `small-cnn` (CPU demos), `preact-resnet18` (fast-AT's standard), `wrn-34-10` (Madry/TRADES'
standard). Any torchvision classifier is also accepted by name (`resnet50`, `vit_b_16`, ...).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import Registry

Builder = Callable[[int, Tuple[int, int, int]], nn.Module]  # (num_classes, (C, H, W)) -> module


def _torchvision_builder(name: str) -> Optional[Builder]:
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        return None

    def build(num_classes: int, shape: Tuple[int, int, int]) -> nn.Module:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        return model if shape[0] == 3 else nn.Sequential(_RepeatChannels(3), model)

    return build


MODELS: Registry[Builder] = Registry(
    "arch", fallback=_torchvision_builder, extra_hint=", or any torchvision classifier (resnet50, vit_b_16, ...)"
)


class Normalized(nn.Module):
    """(x - mean) / std, then the network: attacks work in [0,1] pixel space."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


class _RepeatChannels(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, self.channels, -1, -1) if x.shape[1] == 1 else x


def build_model(arch: str, num_classes: int, shape: Tuple[int, int, int], mean, std) -> Normalized:
    return Normalized(MODELS.get(arch)(num_classes, shape), mean, std)


# --- small CNN ------------------------------------------------------------------------------------------------
@MODELS.register("small-cnn")
def small_cnn(num_classes: int, shape: Tuple[int, int, int], width: int = 32) -> nn.Module:
    """Four 3x3 conv layers with BN, two poolings, a linear head: trains in seconds on a CPU."""
    c = shape[0]

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(
        *block(c, width),
        *block(width, width),
        nn.MaxPool2d(2),
        *block(width, 2 * width),
        *block(2 * width, 2 * width),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, num_classes),
    )


# --- PreAct ResNet-18 (He et al. 2016; the fast-AT / Rice et al. baseline) ------------------------------------
class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    def __init__(self, blocks: Sequence[int], num_classes: int, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        layers, cin = [], 64
        for i, (count, width) in enumerate(zip(blocks, (64, 128, 256, 512))):
            for j in range(count):
                layers.append(PreActBlock(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width
        self.layers = nn.Sequential(*layers)
        self.bn, self.linear = nn.BatchNorm2d(512), nn.Linear(512, num_classes)

    def forward(self, x):
        out = self.layers(self.conv1(x))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1).flatten(1)
        return self.linear(out)


@MODELS.register("preact-resnet18")
def preact_resnet18(num_classes: int, shape: Tuple[int, int, int]) -> nn.Module:
    return PreActResNet((2, 2, 2, 2), num_classes, shape[0])


# --- Wide ResNet-34-10 (Zagoruyko & Komodakis 2016; Madry / TRADES' CIFAR model) -------------------------------
class WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if cin == cout else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + shortcut


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int = 3):
        super().__init__()
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        layers, cin = [], widths[0]
        for stage, stride in zip(widths[1:], (1, 2, 2)):
            for j in range(n):
                layers.append(WideBlock(cin, stage, stride if j == 0 else 1))
                cin = stage
        self.blocks = nn.Sequential(*layers)
        self.bn, self.fc = nn.BatchNorm2d(cin), nn.Linear(cin, num_classes)

    def forward(self, x):
        out = F.relu(self.bn(self.blocks(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


@MODELS.register("wrn-34-10")
def wrn_34_10(num_classes: int, shape: Tuple[int, int, int]) -> nn.Module:
    return WideResNet(34, 10, num_classes, shape[0])
