"""Pieces shared by se-inject's own backbones: argument checks, the classifier head, He initialisation."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .registry import BackboneError

__all__ = ["check_args", "he_init_", "ClassifierNet", "StagedNet", "projection"]


class ClassifierNet(nn.Module):
    """Base of our nets: subclasses build their body and ``forward_features``, then call
    :meth:`_add_head` last; the head is global average pool -> dropout -> linear (timm's names)."""

    def _add_head(self, chs: int, num_classes: int, drop_rate: float) -> None:
        self.num_features = chs
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(chs, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.flatten(self.global_pool(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def projection(in_chs: int, out_chs: int, stride: int) -> nn.Module | None:
    """A residual block's shortcut: None (identity) when the shape is kept, else a 1x1 conv + BN."""
    if stride == 1 and in_chs == out_chs:
        return None
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride, bias=False), nn.BatchNorm2d(out_chs))


class StagedNet(ClassifierNet):
    """A ResNet-shaped net: a stem (``conv1``, ``bn1``, ``act1``), then stages ``layer1`` ... of blocks
    whose first block strides by 2 from the second stage on (He et al.'s CIFAR nets, ResNeXt's)."""

    def _add_stem(self, in_chans: int, chs: int) -> int:
        self.conv1 = nn.Conv2d(in_chans, chs, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(chs)
        self.act1 = nn.ReLU(inplace=True)
        return chs

    def _add_stages(self, in_chs: int, widths: tuple[int, ...], blocks: int,
                    make_block: Callable[[int, int, int, int], nn.Module]) -> int:
        """``make_block(stage, in_chs, out_chs, stride)`` for ``blocks`` blocks a stage; the last width."""
        self.stage_names: list[str] = []
        for i, width in enumerate(widths):
            stage = []
            for j in range(blocks):
                stage.append(make_block(i, in_chs, width, 2 if (i > 0 and j == 0) else 1))
                in_chs = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
            self.stage_names.append(f"layer{i + 1}")
        return in_chs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x


def check_args(name: str, num_classes: int, in_chans: int, pretrained: bool) -> None:
    """One-line :class:`BackboneError` for arguments our own nets cannot honour."""
    if pretrained:
        raise BackboneError(f"{name}: se-inject's own backbones have no pretrained weights; pass pretrained=False")
    if num_classes < 1 or in_chans < 1:
        raise BackboneError(f"{name}: num_classes and in_chans must be >= 1 (got {num_classes}, {in_chans})")


def he_init_(model: nn.Module) -> nn.Module:
    """He (Kaiming) normal init of every conv, unit BN, zero biases: the paper's §5 recipe.

        >>> from backbones import create_backbone
        >>> _ = he_init_(create_backbone("cifar_resnet20", num_classes=10))
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_uniform_(m.weight, a=5 ** 0.5)  # PyTorch's default: keeps logits O(1) at start
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model
