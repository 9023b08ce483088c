"""BN-Inception (Ioffe & Szegedy 2015, Fig. 5), the base of the SE paper's SE-BN-Inception (Table 2).

    >>> import torch
    >>> from backbones import create_backbone
    >>> net = create_backbone("bn_inception", num_classes=1000)
    >>> net(torch.randn(1, 3, 224, 224)).shape
    torch.Size([1, 1000])

11.3M params at 1000 classes (the Caffe model's channel counts: 4c and 4d give 608 channels where the
paper's table prints 576). Every Inception module concatenates its branches with
``torch.cat([...], 1)`` in :meth:`BNInceptionModule.forward`; SE comes from
``se_inject.apply(net, "inception")``, never from this file.
"""
from __future__ import annotations

import torch
from torch import nn

from ._common import ClassifierNet, check_args
from ._layers import ConvBnAct
from .registry import register_backbone

__all__ = ["BNInceptionModule", "BNInception"]


class BNInceptionModule(nn.Module):
    """1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 -> 3x3 | pool (-> 1x1), concatenated.

    With ``stride=2`` there is no 1x1 branch and the pool branch is a 3x3/2 max pool passed through
    (modules 3c and 4e); ``ch1=0`` or ``proj=0`` drops that branch or projection.
    """

    def __init__(self, in_chs: int, ch1: int, ch3r: int, ch3: int, dbl_r: int, dbl: int, pool: str, proj: int,
                 stride: int = 1) -> None:
        super().__init__()
        self.branch1x1 = ConvBnAct(in_chs, ch1, 1) if ch1 else None
        self.branch3x3 = nn.Sequential(ConvBnAct(in_chs, ch3r, 1), ConvBnAct(ch3r, ch3, 3, stride))
        self.branch3x3dbl = nn.Sequential(ConvBnAct(in_chs, dbl_r, 1), ConvBnAct(dbl_r, dbl, 3),
                                          ConvBnAct(dbl, dbl, 3, stride))
        pool_layer = nn.AvgPool2d(3, 1, 1) if pool == "avg" else nn.MaxPool2d(3, stride, 1)
        self.branch_pool = nn.Sequential(pool_layer, ConvBnAct(in_chs, proj, 1)) if proj else pool_layer
        self.out_chs = ch1 + ch3 + dbl + (proj or in_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch3x3(x), self.branch3x3dbl(x), self.branch_pool(x)]
        if self.branch1x1 is not None:
            branches.insert(0, self.branch1x1(x))
        return torch.cat(branches, 1)


#: name -> (#1x1, #3x3 reduce, #3x3, double #3x3 reduce, double #3x3, pool, proj, stride): paper Fig. 5.
_MODULES = {
    "3a": (64, 64, 64, 64, 96, "avg", 32, 1),
    "3b": (64, 64, 96, 64, 96, "avg", 64, 1),
    "3c": (0, 128, 160, 64, 96, "max", 0, 2),
    "4a": (224, 64, 96, 96, 128, "avg", 128, 1),
    "4b": (192, 96, 128, 96, 128, "avg", 128, 1),
    "4c": (160, 128, 160, 128, 160, "avg", 128, 1),
    "4d": (96, 128, 192, 160, 192, "avg", 128, 1),
    "4e": (0, 128, 192, 192, 256, "max", 0, 2),
    "5a": (352, 192, 320, 160, 224, "avg", 128, 1),
    "5b": (352, 192, 320, 192, 224, "max", 128, 1),
}


class BNInception(ClassifierNet):
    """7x7/2 stem, 3x3 conv, the ten Inception modules of :data:`_MODULES`, global pool, linear."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = ConvBnAct(in_chans, 64, 7, 2)
        self.pool1 = nn.MaxPool2d(3, 2, 1)
        self.conv2_reduce = ConvBnAct(64, 64, 1)
        self.conv2 = ConvBnAct(64, 192, 3)
        self.pool2 = nn.MaxPool2d(3, 2, 1)
        chs = 192
        self.module_names: list[str] = []
        for name, spec in _MODULES.items():
            m = BNInceptionModule(chs, *spec)
            self.add_module(f"inception_{name}", m)
            self.module_names.append(f"inception_{name}")
            chs = m.out_chs
        self._add_head(chs, num_classes, drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(self.conv2_reduce(x)))
        for name in self.module_names:
            x = getattr(self, name)(x)
        return x


@register_backbone
def bn_inception(num_classes: int = 1000, in_chans: int = 3, pretrained: bool = False, **kwargs) -> BNInception:
    """BN-Inception for 224 px ImageNet (any input >= 32 px works: the pool is global)."""
    check_args("bn_inception", num_classes, in_chans, pretrained)
    return BNInception(num_classes, in_chans, **kwargs)
