"""se-inject: Squeeze-and-Excitation for any backbone, without touching model code.

    >>> import timm, se_inject
    >>> model = se_inject.apply(timm.create_model("resnet50"), r=16)   # == timm's seresnet50
    >>> print(se_inject.plan(timm.create_model("resnet50")).totals())
    params: 25,557,032 -> 28,088,024 (+2,530,992, +9.90%)
    MACs:   4.089 G -> 4.103 G (+0.331%) at 3x224x224
"""
from .api import apply, plan
from .block import SqueezeExcite
from .errors import ExportError, KernelError, PolicyError, SEInjectError, TraceError
from .export import ExportReport, export_onnx, se_nodes
from .planner import Plan
from .policy import Policy, list_presets, load_policy

__all__ = ["apply", "plan", "Plan", "Policy", "load_policy", "list_presets", "SqueezeExcite",
           "export_onnx", "ExportReport", "se_nodes",
           "SEInjectError", "PolicyError", "TraceError", "ExportError", "KernelError"]
__version__ = "0.1.0"
