"""Compression from what the SE blocks learned (paper §6.3, §7): prune channels, fold near-constant gates.

    stats.py       one calibration pass: per block and channel, the gate's mean and spread, per class
    prunable.py    SE blocks for Torch-Pruning's dependency graph (a customised pruner)
    importance.py  the excitation importance (and the seeded random one the study compares)
    pruning.py     se_inject.prune(model, stats, amount): a MAC target, reached with Torch-Pruning
    folding.py     se_inject.fold(model, stats, tolerance): near-constant gates become their mean
    constant.py    ConstantScale: what a folded block leaves (a residual add, at most a constant scale)

The names below load on first use, so ``import se_inject.compress`` does not import Torch-Pruning.
"""
from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module that defines it
_LAZY = {"excitation_stats": "stats", "ExcitationStats": "stats", "se_blocks": "stats",
         "SqueezeExcitePruner": "prunable", "customized_pruners": "prunable",
         "ExcitationImportance": "importance", "SeededRandomImportance": "importance", "IMPORTANCES": "importance",
         "prune": "pruning", "fold": "folding", "fold_plan": "folding", "FoldPlan": "folding", "FoldDecision": "folding",
         "FoldAction": "folding", "ConstantScale": "constant"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'se_inject.compress' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
