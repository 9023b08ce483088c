"""Pieces shared by se-inject's own backbones: argument checks, the classifier head, He initialisation."""
from __future__ import annotations

import torch
from torch import nn

from .registry import BackboneError

__all__ = ["check_args", "he_init_", "ClassifierNet"]


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
