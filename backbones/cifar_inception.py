"""The small Inception for 28-32 px inputs of Zhang et al. 2017 (Appendix A, Fig. 3), with BN.

    >>> import torch
    >>> from backbones import create_backbone
    >>> net = create_backbone("cifar_inception_small", num_classes=10, in_chans=1)
    >>> net(torch.randn(2, 1, 28, 28)).shape
    torch.Size([2, 10])

Ten modules, 1.65M params: a 1x1 and a 3x3 branch concatenated (:class:`InceptionModule`), and
stride-2 :class:`DownsampleModule` (3x3/2 conv beside a 3x3/2 max pool). Plain, no SE: each module's
``torch.cat([...], 1)`` is in its own forward, where ``se_inject.apply(net, "inception")`` gates the
concatenated output (the paper's SE-Inception, Fig. 2).
"""
from __future__ import annotations

import torch
from torch import nn

from ._common import ClassifierNet, check_args
from ._layers import ConvBnAct
from .registry import register_backbone

__all__ = ["InceptionModule", "DownsampleModule", "CifarInception"]


class InceptionModule(nn.Module):
    """``cat([1x1 conv (ch1), 3x3 conv (ch3)])``: ``ch1 + ch3`` output channels."""

    def __init__(self, in_chs: int, ch1: int, ch3: int) -> None:
        super().__init__()
        self.out_chs = ch1 + ch3
        self.branch1x1 = ConvBnAct(in_chs, ch1, 1)
        self.branch3x3 = ConvBnAct(in_chs, ch3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x), self.branch3x3(x)], 1)


class DownsampleModule(nn.Module):
    """``cat([3x3/2 conv (ch3), 3x3/2 max pool])``: halves the map, ``ch3 + in_chs`` output channels."""

    def __init__(self, in_chs: int, ch3: int) -> None:
        super().__init__()
        self.out_chs = ch3 + in_chs
        self.branch3x3 = ConvBnAct(in_chs, ch3, 3, stride=2, padding=0)
        self.branch_pool = nn.MaxPool2d(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch3x3(x), self.branch_pool(x)], 1)


#: (kind, arguments) of each module after the 96-channel stem, Zhang et al. 2017 Fig. 3.
_SMALL = (("inc", 32, 32), ("inc", 32, 48), ("down", 80),
          ("inc", 112, 48), ("inc", 96, 64), ("inc", 80, 80), ("inc", 48, 96), ("down", 96),
          ("inc", 176, 160), ("inc", 176, 160))


class CifarInception(ClassifierNet):
    """Stem 3x3 conv (96), the modules of ``spec``, global average pool, linear."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, spec: tuple = _SMALL, stem_chs: int = 96,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = ConvBnAct(in_chans, stem_chs, 3)
        chs, stage, index, modules = stem_chs, 1, 0, []
        for kind, *args in spec:
            if kind == "inc":
                m: nn.Module = InceptionModule(chs, *args)
                name = f"inception{stage}{'abcdefgh'[index]}"
                index += 1
            else:
                m = DownsampleModule(chs, *args)
                name = f"downsample{stage}"
                stage, index = stage + 1, 0
            chs = m.out_chs
            self.add_module(name, m)
            modules.append(name)
        self.module_names = modules
        self._add_head(chs, num_classes, drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for name in self.module_names:
            x = getattr(self, name)(x)
        return x


@register_backbone
def cifar_inception_small(num_classes: int = 10, in_chans: int = 3, pretrained: bool = False, **kwargs) -> CifarInception:
    """Zhang et al.'s small Inception (1.65M params), BN after every conv."""
    check_args("cifar_inception_small", num_classes, in_chans, pretrained)
    return CifarInception(num_classes, in_chans, **kwargs)
