"""Hugging Face transformers vision models by model type: ``hf:resnet``, ``hf:regnet``, ``hf:vit``.

A name is a transformers ``model_type`` of an image-classification or backbone class. The model is
built from that type's default config (``AutoConfig.for_model``; keyword arguments set config fields,
``image_size=64``) with random weights: ``AutoModelForImageClassification.from_config``, or
``AutoBackbone.from_config`` for the types that are backbones only (feature maps out, no classifier).
Nothing is downloaded. transformers is optional: the ``hf`` extra (``pip install 'se-inject[hf]'``),
imported only when an ``hf:`` name is used.

An HF model returns a ``ModelOutput`` (``.logits``); se_inject plans, rewrites and exports it as it
is. The trainer wants a tensor: :class:`Logits` is the adapter it puts around a classifier.

    >>> import torch
    >>> model = create_hf("resnet", num_classes=10, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1])
    >>> type(model).__name__, model(torch.zeros(1, 3, 32, 32)).logits.shape
    ('ResNetForImageClassification', torch.Size([1, 10]))
    >>> Logits(model)(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 10])
"""
from __future__ import annotations

import functools
from typing import Any

from torch import nn

from .registry import BackboneError

__all__ = ["hf_names", "create_hf", "is_classifier", "is_hf", "Logits", "EXTRA"]

#: what to install for ``hf:`` names
EXTRA = "pip install 'se-inject[hf]'"


def _transformers():
    try:
        import transformers
    except ImportError:
        raise BackboneError(f"hf: backbones need Hugging Face transformers: {EXTRA}") from None
    return transformers


@functools.cache
def _mappings() -> tuple[frozenset[str], frozenset[str]]:
    """(image-classification model types, backbone model types) of the installed transformers."""
    _transformers()
    from transformers.models.auto.modeling_auto import (MODEL_FOR_BACKBONE_MAPPING_NAMES,
                                                        MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES)
    return frozenset(MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES), frozenset(MODEL_FOR_BACKBONE_MAPPING_NAMES)


def hf_names() -> list[str]:
    """Every model type ``hf:`` takes: those with an image-classification class, then backbone-only ones."""
    classify, backbone = _mappings()
    return sorted(classify | backbone)


def is_classifier(model_type: str) -> bool:
    """Whether ``hf:<model_type>`` is built as an image classifier (else it is a backbone: feature maps out)."""
    return model_type in _mappings()[0]


def _set_channels(config: Any, in_chans: int) -> None:
    """The input channels, on the config or its vision part (CLIP, SigLIP); else a one-line error."""
    for cfg in (config, getattr(config, "vision_config", None)):
        if cfg is not None and hasattr(cfg, "num_channels"):
            cfg.num_channels = in_chans
            return
    raise BackboneError(f"hf:{config.model_type}: its config has no num_channels; it takes 3-channel images only")


def create_hf(model_type: str, num_classes: int | None = None, pretrained: bool = False, in_chans: int | None = None,
              **config: Any) -> nn.Module:
    """``hf:<model_type>`` with random weights; ``config`` sets fields of the default config."""
    _transformers()
    from transformers import AutoBackbone, AutoConfig, AutoModelForImageClassification
    if pretrained:
        raise BackboneError(f"hf:{model_type}: pretrained weights need a download from the Hugging Face hub; "
                            "pass pretrained=False")
    if model_type not in hf_names():
        raise BackboneError(f"hf:{model_type}: not a transformers image-classification or backbone model type")
    try:
        cfg = AutoConfig.for_model(model_type, **config)
    except (TypeError, ValueError) as e:
        raise BackboneError(f"hf:{model_type}: bad config field: {e}") from None
    if in_chans not in (None, 3):
        _set_channels(cfg, in_chans)
    if getattr(cfg, "architectures", None) is None:
        cfg.architectures = []  # the auto class iterates it to pick among several classes of a type (DeiT's two)
    if not is_classifier(model_type):
        if num_classes is not None:
            raise BackboneError(f"hf:{model_type} is a backbone (feature maps out, no classifier): "
                                "num_classes does not apply; pick a type with an image-classification class")
        return AutoBackbone.from_config(cfg)
    if num_classes is not None:
        cfg.num_labels = num_classes
    return AutoModelForImageClassification.from_config(cfg)


def is_hf(model: nn.Module) -> bool:
    """A transformers model (its forward returns a ``ModelOutput``)."""
    return type(model).__module__.startswith("transformers.")


class Logits(nn.Module):
    """A transformers classifier that returns its logits tensor, as the trainer's loss and metrics take.

    The HF model is ``.model``: its parameters are ``model.<name>`` in the state dict."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).logits
