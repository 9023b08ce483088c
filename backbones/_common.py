"""Pieces shared by se-inject's own backbones: argument checks and He initialisation."""
from __future__ import annotations

from torch import nn

from .registry import BackboneError

__all__ = ["check_args", "he_init_"]


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
