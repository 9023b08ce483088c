"""CIFAR-style ResNets (He et al. 2016, §4.2) for 28-32 px inputs: depth 6n+2, widths 16/32/64.

    >>> import torch
    >>> from backbones import create_backbone
    >>> net = create_backbone("cifar_resnet20", num_classes=10, in_chans=1)
    >>> net(torch.randn(2, 1, 28, 28)).shape
    torch.Size([2, 10])

Plain nets, no SE: ``se_inject.apply(net, "paper")`` finds each block's residual add
(``out = out + shortcut`` in :meth:`BasicBlock.forward`). Names follow timm's ResNet
(``conv1/bn1/act1/conv2/bn2/act2``, ``downsample``, ``layer1..3``, ``global_pool``, ``fc``).
Downsampling shortcuts are 1x1 conv + BN (the paper's option B), so every block has a module
path the engine can name.
"""
from __future__ import annotations

import torch
from torch import nn

from ._common import StagedNet, check_args, projection
from .registry import register_backbone

__all__ = ["BasicBlock", "CifarResNet"]


class BasicBlock(nn.Module):
    """Two 3x3 convs and an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act2 = nn.ReLU(inplace=True)
        self.downsample = projection(in_chs, out_chs, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + shortcut
        return self.act2(out)


class CifarResNet(StagedNet):
    """Stem 3x3 conv, three stages of ``n`` blocks (strides 1, 2, 2), global average pool, linear."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_chans: int = 3, widths: tuple[int, ...] = (16, 32, 64),
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        if (depth - 2) % 6 or depth < 8:
            raise ValueError(f"CifarResNet depth must be 6n+2 with n >= 1 (got {depth})")
        n = (depth - 2) // 6
        self.num_classes, self.num_features = num_classes, widths[-1]
        in_chs = self._add_stem(in_chans, widths[0])
        in_chs = self._add_stages(in_chs, widths, n, lambda i, cin, cout, stride: BasicBlock(cin, cout, stride=stride))
        self._add_head(in_chs, num_classes, drop_rate)


def _make(depth: int, num_classes: int, in_chans: int, pretrained: bool, **kwargs) -> CifarResNet:
    check_args(f"cifar_resnet{depth}", num_classes, in_chans, pretrained)
    return CifarResNet(depth, num_classes, in_chans, **kwargs)


@register_backbone
def cifar_resnet8(num_classes: int = 10, in_chans: int = 3, pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-8 (n=1, 78k params): the fastest net that still has a residual add per stage."""
    return _make(8, num_classes, in_chans, pretrained, **kwargs)


@register_backbone
def cifar_resnet20(num_classes: int = 10, in_chans: int = 3, pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-20 (n=3, 0.27M params), He et al. 2016 Table 6: 8.75 % CIFAR-10 error."""
    return _make(20, num_classes, in_chans, pretrained, **kwargs)


@register_backbone
def cifar_resnet32(num_classes: int = 10, in_chans: int = 3, pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-32 (n=5, 0.46M params)."""
    return _make(32, num_classes, in_chans, pretrained, **kwargs)


@register_backbone
def cifar_resnet56(num_classes: int = 10, in_chans: int = 3, pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-56 (n=9, 0.85M params), He et al. 2016 Table 6: 6.97 % CIFAR-10 error."""
    return _make(56, num_classes, in_chans, pretrained, **kwargs)


@register_backbone
def cifar_resnet110(num_classes: int = 10, in_chans: int = 3, pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-110 (n=18, 1.7M params)."""
    return _make(110, num_classes, in_chans, pretrained, **kwargs)
