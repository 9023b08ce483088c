"""Small CIFAR-style ResNeXts (Xie et al. 2017, §5.3) for 28-32 px inputs: depth 9n+2, cardinality C x width d.

    >>> import torch
    >>> from backbones import create_backbone
    >>> net = create_backbone("cifar_resnext29_4x16d", num_classes=10, in_chans=1)
    >>> net(torch.randn(2, 1, 28, 28)).shape
    torch.Size([2, 10])

The paper's ResNeXt-29 (8x64d, 34M params) is scaled down so SE-ResNeXt vs ResNeXt can be compared on
small data in minutes: stage outputs 64/128/256, grouped 3x3 widths ``C * d * 2**stage``. Plain nets,
no SE: the residual add ``out = out + shortcut`` sits in :meth:`Bottleneck.forward`; names follow
timm's ResNet bottleneck (``conv1..3``, ``bn1..3``, ``act1..3``, ``downsample``).
"""
from __future__ import annotations

import torch
from torch import nn

from ._common import StagedNet, check_args, projection
from .registry import register_backbone

__all__ = ["Bottleneck", "CifarResNeXt"]


class Bottleneck(nn.Module):
    """1x1 reduce -> grouped 3x3 (``cardinality`` groups) -> 1x1 expand, plus shortcut."""

    def __init__(self, in_chs: int, out_chs: int, group_width: int, cardinality: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, group_width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(group_width)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(group_width, group_width, 3, stride, 1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm2d(group_width)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(group_width, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = projection(in_chs, out_chs, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = out + shortcut
        return self.act3(out)


class CifarResNeXt(StagedNet):
    """Stem 3x3 conv, three stages of ``(depth - 2) / 9`` bottlenecks (strides 1, 2, 2), pool, linear."""

    def __init__(self, depth: int = 29, cardinality: int = 4, base_width: int = 16, num_classes: int = 10,
                 in_chans: int = 3, widths: tuple[int, ...] = (64, 128, 256), stem_chs: int = 32,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        if (depth - 2) % 9 or depth < 11:
            raise ValueError(f"CifarResNeXt depth must be 9n+2 with n >= 1 (got {depth})")
        n = (depth - 2) // 9
        self.num_classes, self.num_features = num_classes, widths[-1]
        in_chs = self._add_stem(in_chans, stem_chs)
        in_chs = self._add_stages(in_chs, widths, n, lambda i, cin, cout, stride: Bottleneck(
            cin, cout, cardinality * base_width * 2 ** i, cardinality, stride=stride))
        self._add_head(in_chs, num_classes, drop_rate)



@register_backbone
def cifar_resnext11_4x16d(num_classes: int = 10, in_chans: int = 3, pretrained: bool = False, **kwargs) -> CifarResNeXt:
    """ResNeXt-11 (4x16d, one bottleneck a stage, 0.37M params): for quick comparisons and tests."""
    check_args("cifar_resnext11_4x16d", num_classes, in_chans, pretrained)
    return CifarResNeXt(11, 4, 16, num_classes, in_chans, **kwargs)


@register_backbone
def cifar_resnext29_4x16d(num_classes: int = 10, in_chans: int = 3, pretrained: bool = False, **kwargs) -> CifarResNeXt:
    """ResNeXt-29 (4x16d, 1.1M params): the paper's CIFAR ResNeXt-29 scaled to small-data budgets."""
    check_args("cifar_resnext29_4x16d", num_classes, in_chans, pretrained)
    return CifarResNeXt(29, 4, 16, num_classes, in_chans, **kwargs)
