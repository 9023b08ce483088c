"""Measured latency of a point: the model with the point's blocks, timed forward passes.

    >>> from backbones import create_backbone
    >>> from se_inject.search import space
    >>> s = space(create_backbone("cifar_resnet8"), r_choices=(16,))
    >>> s.latency({"stage0": 16, "stage1": "off", "stage2": 16}, repeats=3) > 0
    True
"""
from __future__ import annotations

import copy
import statistics
import time
import warnings

import torch
from torch import nn

from ..modes import eval_mode
from ..shapes import model_device

__all__ = ["measure_latency"]


def measure_latency(model: nn.Module, plan, *, device: str | None = None, batch_size: int = 1, repeats: int = 20,
                    warmup: int = 3) -> float:
    """Median ms of ``repeats`` forward passes (after ``warmup``) of ``model`` with ``plan`` applied, in eval mode
    under ``torch.inference_mode``, at batch ``batch_size`` on ``device`` (default: the model's). ``model`` is
    not changed (a copy gets the blocks)."""
    from ..api import NothingInserted, apply
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NothingInserted)   # the all-off point: the plain model, timed as such
        timed = apply(model, plan) if plan.placements else copy.deepcopy(model)
    dev = torch.device(device) if device else model_device(model)
    timed.to(dev)
    x = torch.randn(batch_size, *plan.input_size, device=dev)
    times = []
    with eval_mode(timed), torch.inference_mode():
        for i in range(warmup + repeats):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            start = time.perf_counter()
            timed(x)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if i >= warmup:
                times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)
