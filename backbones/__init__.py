"""Plain backbones by name: timm, torchvision, and small/paper nets neither has.

    >>> from backbones import create_backbone
    >>> model = create_backbone("resnet50", num_classes=10)          # timm
    >>> model = create_backbone("tv:resnet50")                       # torchvision

SE variants are never written by hand here: they come from ``se_inject.apply(create_backbone(...))``.
"""
from .registry import create_backbone, resolve_backbone, list_backbones, BackboneError, register_backbone
# Importing these modules registers their nets (``@register_backbone``).
from . import bn_inception, cifar_inception, cifar_resnet, cifar_resnext  # noqa: F401,E402
from ._common import he_init_

__all__ = ["create_backbone", "resolve_backbone", "list_backbones", "BackboneError", "register_backbone", "he_init_"]
