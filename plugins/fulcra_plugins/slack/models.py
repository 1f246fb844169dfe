"""The SLACK paper's networks as ``students`` plugins: WRN-40-2, WRN-28-10, CIFAR ResNet-18, and a
small CNN for the offline digits recipe. Each maps ``[B, 3, H, W]`` float to ``[B, num_classes]``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SmallCNN", "WideResNet", "Wrn402", "Wrn2810", "ResNet18"]


class SmallCNN(nn.Module):
    """A small 3-block CNN (conv-BN-ReLU, max-pool) + linear head; fast enough for CPU recipes.

    Args:
        num_classes: number of output logits.
        width: channels of the first block (doubled per block).
        in_channels: input channels.
    """

    def __init__(self, num_classes: int = 10, width: int = 16, in_channels: int = 3):
        super().__init__()
        w = int(width)
        layers, c = [], in_channels
        for i in range(3):
            layers += [nn.Conv2d(c, w * 2**i, 3, padding=1, bias=False), nn.BatchNorm2d(w * 2**i), nn.ReLU()]
            if i < 2:
                layers.append(nn.MaxPool2d(2))
            c = w * 2**i
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, D]`` pooled features."""
        return F.adaptive_avg_pool2d(self.body(x), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, drop: float):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.drop = drop
        self.short = None if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = F.relu(self.bn2(y))
        if self.drop > 0:
            y = F.dropout(y, self.drop, self.training)
        y = self.conv2(y)
        return y + (x if self.short is None else self.short(o))


class WideResNet(nn.Module):
    """Wide ResNet (Zagoruyko & Komodakis) for 32×32 inputs.

    Args:
        num_classes: number of output logits.
        depth: 6n + 4 layers.
        widen_factor: width multiplier k.
        dropout: dropout rate inside blocks.
    """

    def __init__(self, num_classes: int = 10, depth: int = 28, widen_factor: int = 10, dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv = nn.Conv2d(3, ch[0], 3, 1, 1, bias=False)
        blocks, cin = [], ch[0]
        for g, stride in zip(range(3), (1, 2, 2)):
            for i in range(n):
                blocks.append(_WideBlock(cin, ch[g + 1], stride if i == 0 else 1, dropout))
                cin = ch[g + 1]
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.head = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x):
        return F.adaptive_avg_pool2d(F.relu(self.bn(self.blocks(self.conv(x)))), 1).flatten(1)

    def forward(self, x):
        return self.head(self.features(x))


class Wrn402(WideResNet):
    """WRN-40-2 (the thesis' small CIFAR network)."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.0):
        super().__init__(num_classes, 40, 2, dropout)


class Wrn2810(WideResNet):
    """WRN-28-10 (the thesis' large CIFAR network)."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.0):
        super().__init__(num_classes, 28, 10, dropout)


class _Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        return F.relu(self.b2(self.c2(y)) + self.short(x))


class ResNet18(nn.Module):
    """ResNet-18; ``cifar=True`` uses the 3×3 stem without max-pool (32×32 inputs), otherwise the
    ImageNet stem (7×7 stride 2 + max-pool) used for ImageNet-100 and DomainNet.

    Args:
        num_classes: number of output logits.
        cifar: small-image stem.
    """

    def __init__(self, num_classes: int = 10, cifar: bool = True):
        super().__init__()
        if cifar:
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
            )
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_Basic(cin, cout, stride), _Basic(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(512, num_classes)

    def features(self, x):
        return F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1)

    def forward(self, x):
        return self.head(self.features(x))
