"""Parameters and multiply-adds, before and after SE (paper §4, Eq. 5).

MACs follow the paper's "FLOPs" (multiply-adds): conv, linear and matmul layers as counted by
``torch.utils.flop_counter`` (halved: it counts a multiply-add as two), plus one per element for
global pooling and for channel-wise scaling, the two SE steps that are not layers. Counting runs on
meta tensors: no compute, no memory.

    >>> import timm
    >>> model = timm.create_model("resnet50")
    >>> count_params(model), round(count_macs(model, (3, 224, 224)) / 1e9, 2)
    (25557032, 4.09)
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .modes import eval_mode
from .shapes import BACKENDS, model_device

__all__ = ["count_params", "count_macs", "se_params", "se_macs"]

aten = torch.ops.aten


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared ones once)."""
    return sum(p.numel() for p in model.parameters())


def se_params(channels: int, reduced: int) -> int:
    """Parameters of one SE block: ``2·C·C/r`` weights (Eq. 5's term) plus ``C/r + C`` biases."""
    return 2 * channels * reduced + reduced + channels


def se_macs(channels: int, reduced: int, positions: int) -> int:
    """Multiply-adds of one SE block per image: pooling, the two FCs, scaling."""
    return channels * positions + 2 * channels * reduced + channels * positions


def _per_element(count_input: bool):
    # flop_counter calls the formula with the op's args/kwargs as shapes and out_shape
    def formula(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        shape = args[0] if count_input else out_shape
        return 2 * math.prod(shape)  # x2: the counter's unit is FLOPs; we halve everything at the end
    return formula


#: pooling counts its input's elements, scaling its output's (registered on top of torch's formulas).
_EXTRA = {  # keyed by overload packet, as FlopCounterMode looks them up
    aten.mean: _per_element(True),
    aten.amax: _per_element(True),
    aten.mul: _per_element(False),
    aten.addcmul: _per_element(False),
}


def count_macs(model: nn.Module, input_size: tuple[int, ...]) -> int | None:
    """Multiply-adds of one forward pass at batch 1 (model left untouched): on meta tensors, or
    under fake tensors where the forward mixes in a tensor of its own; ``None`` if neither runs."""
    with eval_mode(model):
        for name in ("meta", "fake"):  # the shape pass's stand-in backends, in its order
            backend = BACKENDS[name](model)
            counter = FlopCounterMode(display=False, custom_mapping=_EXTRA)
            try:
                with backend.context(), counter:
                    backend.run_module("", model, (backend.input((1, *input_size), model_device(model)),), {})
                break
            except Exception:  # e.g. a forward that builds a CPU tensor: try the next backend
                continue
        else:
            return None
    return counter.get_total_flops() // 2
