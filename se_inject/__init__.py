"""se-inject: Squeeze-and-Excitation for any backbone, without touching model code."""
from .block import SqueezeExcite
from .errors import ExportError, PolicyError, SEInjectError, TraceError

__all__ = ["SqueezeExcite", "SEInjectError", "PolicyError", "TraceError", "ExportError"]
__version__ = "0.1.0"
