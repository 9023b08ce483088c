"""se-inject: Squeeze-and-Excitation for any backbone, without touching model code.

    >>> import timm, se_inject
    >>> model = se_inject.apply(timm.create_model("resnet50"), r=16)   # == timm's seresnet50
    >>> print(se_inject.plan(timm.create_model("resnet50")).totals())
    params: 25,557,032 -> 28,088,024 (+2,530,992, +9.90%)
    MACs:   4.089 G -> 4.103 G (+0.331%) at 3x224x224

The names below load on first use (PEP 562): ``import se_inject.errors`` (what the command line and
the trainer's config checks need) does not import torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (CompressError, ExportError, KernelError, MissingExtraError, PolicyError, PretrainedError,
                     SearchError, SEInjectError, TraceError)

#: public name -> the module that defines it
_LAZY = {"apply": "api", "plan": "api", "Plan": "planner", "Policy": "policy", "load_policy": "policy",
         "list_presets": "policy", "SqueezeExcite": "block", "export_onnx": "export", "ExportReport": "export",
         "se_nodes": "export", "excitation_stats": "compress.stats", "ExcitationStats": "compress.stats",
         "prune": "compress.pruning", "fold": "compress.folding", "fold_plan": "compress.folding",
         "save_pretrained": "pretrained", "load_pretrained": "pretrained"}

__all__ = ["apply", "plan", "Plan", "Policy", "load_policy", "list_presets", "SqueezeExcite",
           "export_onnx", "ExportReport", "se_nodes", "excitation_stats", "ExcitationStats", "prune", "fold", "fold_plan",
           "save_pretrained", "load_pretrained",
           "SEInjectError", "PolicyError", "TraceError", "ExportError", "KernelError", "CompressError", "PretrainedError",
           "MissingExtraError", "SearchError"]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from .api import apply, plan
    from .block import SqueezeExcite
    from .compress.folding import fold, fold_plan
    from .compress.pruning import prune
    from .compress.stats import ExcitationStats, excitation_stats
    from .export import ExportReport, export_onnx, se_nodes
    from .planner import Plan
    from .policy import Policy, list_presets, load_policy
    from .pretrained import load_pretrained, save_pretrained


#: subpackages that load on first use too: ``se_inject.search.space(model)`` after ``import se_inject``
_SUBPACKAGES = ("search",)


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'se_inject' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBPACKAGES))
