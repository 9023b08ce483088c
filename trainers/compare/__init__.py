"""Comparative runs: baseline vs SE variants in one command, with the paper's tables and figures.

    >>> from trainers.compare import load_spec
    >>> spec = load_spec("examples/fashion_mnist_compare.yaml")
    >>> [v.name for v in spec.variants], spec.seeds
    (['baseline', 'se-r16', 'se-no-last-stage'], (0, 1, 2))

``run_comparison(path)`` trains every unfinished run (``torchrun`` per run) and writes the report;
from the shell: ``se-inject compare --config compare.yaml`` or ``python -m trainers.compare``.
"""
from __future__ import annotations

import os
from pathlib import Path

from typing import TYPE_CHECKING, Any

from se_inject._extras import require

from .spec import CompareError, CompareSpec, load_spec

if TYPE_CHECKING:
    from .report import write_report
    from .runner import run_matrix

__all__ = ["run_comparison", "load_spec", "write_report", "run_matrix", "CompareSpec", "CompareError"]


def __getattr__(name: str) -> Any:
    """``write_report`` and ``run_matrix`` load on first use: the report imports torch and matplotlib,
    which ``se-inject --help`` and ``--dry-run`` do not need."""
    if name == "write_report":
        from .report import write_report
        return write_report
    if name == "run_matrix":
        from .runner import run_matrix
        return run_matrix
    raise AttributeError(f"module 'trainers.compare' has no attribute {name!r}")


def run_comparison(path: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None, echo=print) -> Path:
    """Validate ``path``, train what is not finished, write the report; returns report.md's path."""
    require("train", for_="trainers.compare.run_comparison")
    from .report import write_report
    from .runner import run_matrix
    spec = load_spec(path, out_dir)
    run_matrix(spec, echo)
    return write_report(spec.out_dir, title=spec.name)
