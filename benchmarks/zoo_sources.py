"""Where the zoo sweep's models come from and how each kind of model is run (used by ``zoo.py``).

A :class:`Source` lists model names and builds a model untrained; a :class:`Task` says what input a
model of one category takes, how outputs are compared before and after ``se_inject.apply``, what
loss the backward pass uses and whether the model is exported to ONNX.

    >>> src = SOURCES["tv"]
    >>> src.category("fasterrcnn_resnet50_fpn"), src.family("fasterrcnn_resnet50_fpn")
    ('detection', 'detection.faster_rcnn')
    >>> TASKS["detection"].export
    False

timm: every name in ``timm.list_models()``, ``pretrained=False``, all classifiers. torchvision:
``torchvision.models.list_models`` over the classification, detection, segmentation and video
modules, ``weights=None`` (and ``weights_backbone=None``). Not swept: ``quantization`` (int8 models
built for FX/eager quantization: ``se_inject`` gates float models) and ``optical_flow`` (RAFT takes
two images, not one tensor). transformers (``hf``): every model type with an image-classification
class (a classifier) or, failing that, a backbone class (feature maps out), built from its default
config with random weights (``backbones.hf``, the names ``hf:<type>`` take).
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SMALL_SIDE = 96          # forward/export input side when the model accepts it
INCEPTION_SIDE = 299    # last input side tried for images
MAX_EXPORT_PARAMS = 400e6  # bigger models are not exported in the sweep (time and memory on 2 cores)

# ---------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    key: str                             # --source value
    title: str                           # the report's title
    stem: str                            # results file stem: benchmarks/results/<stem>.jsonl
    names: Callable[[], list[str]]
    category: Callable[[str], str]       # a TASKS key
    family: Callable[[str], str]         # the report's per-family rows
    create: Callable[[str], Any]         # untrained model (under ``torch.device("meta")`` for plans)
    library: str = "timm"                # the package whose version the report gives
    models: str = ""                     # the report's line on which models are swept and how they are built


def _timm_names() -> list[str]:
    import timm
    return timm.list_models()


def _timm_family(name: str) -> str:
    import timm.models._registry as reg
    module = reg._model_to_module.get(name, "")
    return module.rsplit(".", 1)[-1] or name.split("_")[0]


def _timm_create(name: str):
    import timm
    return timm.create_model(name, pretrained=False)


#: torchvision's model modules the sweep covers, by category (a TASKS key)
TV_MODULES = {"classification": "", "detection": "detection", "segmentation": "segmentation", "video": "video"}
TV_SKIPPED = {"quantization": "int8 models for FX/eager quantization (se_inject gates float models)",
              "optical_flow": "RAFT takes two images, not one tensor"}
#: detectors are built for small images (their transform resizes every input to this range)
DETECTION_KW = {"min_size": 128, "max_size": 160}


@functools.cache
def _tv_categories() -> dict[str, str]:
    import importlib

    import torchvision
    out: dict[str, str] = {}
    for category, sub in TV_MODULES.items():
        module = importlib.import_module(f"torchvision.models{'.' + sub if sub else ''}")
        for name in torchvision.models.list_models(module=module):
            out.setdefault(name, category)
    return out


def _tv_names() -> list[str]:
    return sorted(_tv_categories())


def _tv_category(name: str) -> str:
    return _tv_categories().get(name, "classification")


def _tv_family(name: str) -> str:
    import torchvision
    try:
        module = torchvision.models.get_model_builder(name).__module__
    except ValueError:
        return name.split("_")[0]
    return module.removeprefix("torchvision.models.")


def _tv_create(name: str):
    import torchvision
    category = _tv_category(name)
    kw: dict[str, Any] = {"weights": None}
    if category in ("detection", "segmentation"):
        kw["weights_backbone"] = None
    if category == "detection":
        try:
            return torchvision.models.get_model(name, **kw, **DETECTION_KW)
        except TypeError:  # SSD/SSDLite: a fixed 300/320 px transform, no min_size/max_size
            pass
    return torchvision.models.get_model(name, **kw)


def _hf_names() -> list[str]:
    from backbones.hf import hf_names
    return hf_names()


def _hf_category(name: str) -> str:
    from backbones.hf import is_classifier
    return "classification" if is_classifier(name) else "backbone"


def _hf_family(name: str) -> str:
    """The transformers module of the type (``data2vec-vision`` -> ``data2vec``)."""
    from transformers.models.auto.configuration_auto import model_type_to_module_name
    return model_type_to_module_name(name)


def _hf_create(name: str):
    from backbones.hf import create_hf
    return create_hf(name)


SOURCES = {
    "timm": Source("timm", "se-inject over the timm zoo", "zoo", _timm_names, lambda name: "classification",
                   _timm_family, _timm_create),
    "tv": Source("tv", "se-inject over torchvision's models", "tv_zoo", _tv_names, _tv_category, _tv_family,
                 _tv_create, library="torchvision"),
    "hf": Source("hf", "se-inject over Hugging Face transformers' vision models", "hf_zoo", _hf_names, _hf_category,
                 _hf_family, _hf_create, library="transformers",
                 models="every model type of transformers' image-classification and backbone mappings "
                        "(`backbones.hf.hf_names()`, the names `hf:<type>` take), built from its default config "
                        "(`AutoConfig.for_model`) with random weights: `AutoModelForImageClassification.from_config` "
                        "(category classification), else `AutoBackbone.from_config` (category backbone: feature maps out); "
                        "nothing downloaded"),
}

# ---------------------------------------------------------------------------------------- tasks


def _tensors(out: Any) -> list:
    import torch
    import torch.utils._pytree as pytree
    return [v for v in pytree.tree_leaves(out) if isinstance(v, torch.Tensor)]


def _shapes(out: Any) -> list[tuple[int, ...]]:
    return [tuple(v.shape) for v in _tensors(out)]


def _mean_loss(model, x):
    return sum(v.float().mean() for v in _tensors(model(x)) if v.is_floating_point())


def _image_sizes(model) -> list[tuple[int, ...]]:
    """A small input where the model accepts it, then its own size (timm's ``pretrained_cfg``, else what
    its first conv takes), then Inception's 299 px (torchvision's inception_v3 has no size of its own
    and its auxiliary head, run in training only, needs 299)."""
    from se_inject.shapes import default_input_size
    size = tuple(default_input_size(model))
    small = (size[0], *(SMALL_SIDE,) * (len(size) - 1)) if len(size) == 3 and min(size[1:]) > SMALL_SIDE else None
    inception = (size[0], INCEPTION_SIDE, INCEPTION_SIDE) if len(size) == 3 and max(size[1:]) < INCEPTION_SIDE else None
    return [s for s in (small, size, inception) if s]


def _video_sizes(model) -> list[tuple[int, ...]]:
    """8 frames of 112 px first; S3D's final 7x7 pool needs 224 px, MViT's position embeddings 16x224x224."""
    return [(3, 8, 112, 112), (3, 16, 112, 112), (3, 16, 224, 224)]


def _batch(size: tuple[int, ...]):
    import torch
    return torch.randn(2, *size)


def _detector_sizes(model) -> list[tuple[int, ...]]:
    """Images of 128x160 (each detector's transform resizes them: to 128-160 px as built, to 300 px in
    SSD300); 300x300 too, for planning an SSD300's VGG backbone, which does not run on less."""
    return [(3, 128, 160), (3, 300, 300)]


def _detector_images(size: tuple[int, ...]):
    """Two images of different sizes, as a detector takes them (a list of (C, H, W) tensors in [0, 1])."""
    import torch
    c, h, w = size
    return [torch.rand(c, h, w), torch.rand(c, h - 8, w - 32)]


def _detector_signature(out: Any) -> list:
    """Per image: each output's name and shape without its first dim (the number of detections depends
    on the untrained scores, so it may change with SE)."""
    return [sorted((k, tuple(v.shape[1:])) for k, v in d.items()) for d in out]


def _detector_loss(model, images):
    """Training-mode losses with one box (label 1) an image; masks and keypoints for the R-CNNs that
    use them (the others ignore those keys)."""
    import torch
    targets = []
    for img in images:
        h, w = img.shape[-2:]
        box = torch.tensor([[w * 0.2, h * 0.2, w * 0.7, h * 0.8]])
        mask = torch.zeros(1, h, w, dtype=torch.uint8)
        mask[:, int(h * 0.2):int(h * 0.8), int(w * 0.2):int(w * 0.7)] = 1
        keypoints = torch.tensor([[[w * 0.3 + i, h * 0.3 + i, 1.0] for i in range(17)]])
        targets.append({"boxes": box, "labels": torch.tensor([1]), "masks": mask, "keypoints": keypoints})
    losses = model(images, targets)
    return sum(losses.values())


@dataclass(frozen=True)
class Task:
    sizes: Callable[[Any], list[tuple[int, ...]]]   # candidate input sizes (no batch), first that runs wins
    inputs: Callable[[tuple[int, ...]], Any]        # what the model is called on
    signature: Callable[[Any], Any]                 # what must be unchanged by SE (output shapes)
    loss: Callable[[Any, Any], Any]                 # train-mode scalar to backpropagate
    export: bool                                    # ONNX export + onnxruntime parity (a tensor in, tensors out)
    export_note: str = ""


TASKS = {
    "classification": Task(_image_sizes, _batch, _shapes, _mean_loss, True),
    "backbone": Task(_image_sizes, _batch, _shapes, _mean_loss, True),       # feature maps (transformers' AutoBackbone)
    "segmentation": Task(_image_sizes, _batch, _shapes, _mean_loss, True),   # the dict's `out` (and `aux`)
    "video": Task(_video_sizes, _batch, _shapes, _mean_loss, True),
    "detection": Task(_detector_sizes, _detector_images, _detector_signature, _detector_loss, False,
                      "detector: a list of images in, a list of dicts out (not a tensor in, tensors out)"),
}
