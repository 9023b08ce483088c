"""Optional features and the extras that install them: one line naming the extra when one is missing.

The core (``import se_inject``, ``plan``, ``apply``, the backbones) needs torch, torchvision, timm,
networkx, PyYAML and safetensors only. Everything else is an extra of ``pyproject.toml``; each entry
point of a feature calls :func:`require` before any work, so a missing package fails at once, in one
line that says what to install, instead of an ImportError deep inside (or, for ONNX, a silent fall
back to the other exporter):

    >>> require("onnx", for_="se_inject.export_onnx")     # nothing happens when it is installed
    >>> EXTRAS["prune"]
    ('torch_pruning',)

:data:`EXTRAS` is checked against ``[project.optional-dependencies]`` by ``tests/test_extras.py``.
"""
from __future__ import annotations

import importlib.util

from .errors import MissingExtraError

__all__ = ["EXTRAS", "require", "missing"]

#: extra -> the modules it provides (import names); ``pip install 'se-inject[extra]'`` installs them.
EXTRAS: dict[str, tuple[str, ...]] = {
    "onnx": ("onnx", "onnxruntime", "onnxscript"),          # export_onnx, se_nodes, se-inject export
    "train": ("tqdm", "matplotlib"),                         # trainer, compare, report, excitation plots
    "prune": ("torch_pruning",),                             # se_inject.prune, se-inject prune
    "tensorboard": ("tensorboard",),                         # run.tensorboard=true
    "search": ("optuna",),                                   # se_inject.search's suggest, se-inject search
    "hf": ("transformers",),                                 # Hugging Face models as a source (hf:<model_type>)
}


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here (``[]`` when the extra is installed)."""
    gone = []
    for module in EXTRAS[extra]:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):   # a parent package missing, or a module set to None
            found = False
        if not found:
            gone.append(module)
    return gone


def require(extra: str, *, for_: str) -> None:
    """Raise :class:`MissingExtraError` naming ``extra`` when any of its modules is missing.

    ``for_`` names what needs it, as the user called it (``se_inject.export_onnx``, ``se-inject export``).
    """
    if extra not in EXTRAS:
        raise KeyError(f"unknown extra {extra!r}; extras are {sorted(EXTRAS)}")
    gone = missing(extra)
    if gone:
        raise MissingExtraError(f"{for_} needs the {extra} extra ({', '.join(gone)} not installed): "
                                f"pip install 'se-inject[{extra}]'", extra=extra, missing=tuple(gone))
