"""Plain backbones by name: timm, torchvision, and small/paper nets neither has.

    >>> from backbones import create_backbone
    >>> model = create_backbone("resnet50", num_classes=10)          # timm
    >>> model = create_backbone("tv:resnet50")                       # torchvision

SE variants are never written by hand here: they come from ``se_inject.apply(create_backbone(...))``.
"""
from .registry import create_backbone, list_backbones, BackboneError

__all__ = ["create_backbone", "list_backbones", "BackboneError"]
