"""Search where SE goes: Optuna studies of SE placements, each trial trained by the bundled trainer.

    >>> from trainers.search import load_search
    >>> spec = load_search("examples/search_tiny.yaml")
    >>> spec.backbone, spec.objectives, spec.sampler_name
    ('cifar_resnet8', ('error', 'params'), 'nsga2')

``run_search(path, out_dir, workers=2)`` checks the file, the space and the storage, runs the workers
until the trial budget is spent and writes the report; from the shell: ``se-inject search FILE -o DIR``.
The space and its costs are the engine's (:mod:`se_inject.search`); this package trains.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .report import write_report
    from .runner import run_search
    from .spec import SearchSpec, load_search

__all__ = ["run_search", "load_search", "write_report", "SearchSpec"]


#: public name -> the module defining it: everything loads on first use (``se-inject --help`` imports the CLI's
#: argument parser only; torch, Optuna and matplotlib come with the spec, the runner and the report)
_LAZY = {"run_search": "runner", "write_report": "report", "load_search": "spec", "SearchSpec": "spec"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'trainers.search' has no attribute {name!r}")
