"""Shared fixtures: timm models built once per session (never pretrained: no downloads)."""
from __future__ import annotations

import copy
import functools

import pytest
import timm
import torch


@functools.lru_cache(maxsize=None)
def _model(name: str, kwargs: tuple = ()):
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **dict(kwargs)).eval()


@pytest.fixture
def timm_model():
    """``timm_model("resnet50")``: a fresh copy of a cached eval-mode timm model."""
    return lambda name, **kw: copy.deepcopy(_model(name, tuple(sorted(kw.items()))))


def state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def zoo():
    """``benchmarks/zoo.py`` as a module (the zoo harness the zoo tests drive)."""
    import importlib
    import sys
    from pathlib import Path
    bench = str(Path(__file__).resolve().parents[1] / "benchmarks")
    sys.path.insert(0, bench)
    try:
        yield importlib.import_module("zoo")
    finally:
        sys.path.remove(bench)
