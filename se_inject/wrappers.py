"""Models whose forward is not a feature extractor: where in them se-inject works.

A detector takes a list of images and returns boxes; its forward cannot be run on one image tensor
(and on stand-in tensors it stops at data-dependent ops such as ``nonzero``). Its SE sites are in
its backbone, which takes an image batch like any classifier: se-inject plans and rewrites that
submodule, paths staying paths in the whole model (``backbone.body.layer1.0.se``).

    >>> import torchvision
    >>> detector = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    >>> backbone_path(detector)
    'backbone'
    >>> backbone_path(torchvision.models.resnet18()) is None
    True
"""
from __future__ import annotations

from torch import nn

__all__ = ["backbone_path", "WRAPPERS", "FALLBACK_CHILD"]

#: qualified class name -> the child se-inject rewrites (subclasses count: FasterRCNN is a GeneralizedRCNN).
WRAPPERS: dict[str, str] = {
    "torchvision.models.detection.generalized_rcnn.GeneralizedRCNN": "backbone",  # Faster/Mask/Keypoint R-CNN
    "torchvision.models.detection.retinanet.RetinaNet": "backbone",
    "torchvision.models.detection.fcos.FCOS": "backbone",
    "torchvision.models.detection.ssd.SSD": "backbone",                          # SSD, SSDlite
}
#: the child tried when a model of another class fails its forward on an image batch.
FALLBACK_CHILD = "backbone"


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def backbone_path(model: nn.Module) -> str | None:
    """The child of ``model`` to plan and rewrite instead of ``model`` itself, if it is a known wrapper."""
    for cls in type(model).__mro__:
        child = WRAPPERS.get(_qualified(cls))
        if child is not None and isinstance(getattr(model, child, None), nn.Module):
            return child
    return None
