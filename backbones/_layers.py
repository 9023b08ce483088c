"""Conv -> BN -> ReLU, the unit every Inception branch is made of."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConvBnAct"]


class ConvBnAct(nn.Sequential):
    """``conv`` (no bias) -> ``bn`` -> ``act`` (ReLU); an ``nn.Sequential`` so it traces as three leaf modules."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, padding: int | None = None) -> None:
        padding = kernel_size // 2 if padding is None else padding
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))
