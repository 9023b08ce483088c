"""What se-inject knows about operators: one registry, type-based first, class names as a fallback.

Site detection asks of a graph node "is this an activation, a norm, a conv, a drop-path, a
pooling, a gate function?". The answers live here, as data: a module class is matched by
``isinstance`` against the classes listed (torch, timm and torchvision ones, imported when
available), and only then by class name, for the same blocks copied into other repositories.

Whether a module *is a channel gate* (SE and its relatives) is decided by what its graph computes
(:mod:`se_inject.gates`), from the pooling, gate and product operators listed here;
:data:`CHANNEL_GATES`, class names, is only the fallback for gates whose forward fx cannot trace
(timm's ``GatherExcite`` branches on a shape) or that gate by an add (``GlobalContext``'s default).

    >>> import torch, torchvision
    >>> from torch import nn
    >>> is_gate(torchvision.ops.SqueezeExcitation(64, 16)), is_gate(nn.Conv2d(3, 8, 1))
    (True, False)
    >>> is_act(nn.GELU()), is_norm(nn.BatchNorm2d(8)), is_transparent(nn.Dropout(0.1)), is_conv(nn.Conv3d(3, 8, 3))
    (True, True, True, True)
    >>> contains_gate(torchvision.models.efficientnet_b0().features[1][0].block)   # MBConv's Sequential
    True
"""
from __future__ import annotations

import importlib
import operator
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ._torch_compat import ConvNd, NormBase

__all__ = ["is_gate", "contains_gate", "is_act", "is_norm", "is_norm_act", "is_transparent", "is_conv", "is_learned",
           "learned_layers", "fresh_output", "conv_dilation", "CHANNEL_GATES", "ACTS", "NORMS", "NORM_ACTS", "TRANSPARENT",
           "ADD_FUNCTIONS", "ADD_METHODS", "CAT_FUNCTIONS", "CONV_FUNCTIONS", "LEARNED_FUNCTIONS",
           "MATRIX_PRODUCT_FUNCTIONS", "MATRIX_PRODUCT_METHODS",
           "ACT_FUNCTIONS", "ACT_METHODS", "TRANSPARENT_FUNCTIONS", "SPLIT_FUNCTIONS", "SPLIT_METHODS",
           "GATE_ACTS", "GATE_FUNCTIONS", "GATE_METHODS", "POOLS", "POOL_FUNCTIONS", "POOL_METHODS", "UPSAMPLES",
           "UPSAMPLE_FUNCTIONS", "PRODUCT_FUNCTIONS", "PRODUCT_METHODS", "VIEW_FUNCTIONS", "VIEW_METHODS",
           "AFFINE_FUNCTIONS", "AFFINE_METHODS"]


def _classes(names: Iterable[str | type]) -> tuple[type, ...]:
    """The classes named ``module.Class`` that can be imported here (timm is optional)."""
    out = []
    for name in names:
        if isinstance(name, type):
            out.append(name)
            continue
        module, _, cls = name.rpartition(".")
        try:
            out.append(getattr(importlib.import_module(module), cls))
        except (ImportError, AttributeError):
            continue
    return tuple(out)


class _Functions(frozenset):
    """A set of functions (``target in FUNCTIONS``); those of optional libraries are listed by qualified
    name, so that importing se_inject does not import timm."""

    def __new__(cls, functions: Iterable[object], names: Iterable[str] = ()) -> "_Functions":
        out = super().__new__(cls, functions)
        out.names = frozenset(names)
        return out

    def __contains__(self, target: object) -> bool:
        try:
            if super().__contains__(target):
                return True
        except TypeError:  # an unhashable target
            return False
        return bool(self.names) and f"{getattr(target, '__module__', '')}.{getattr(target, '__name__', '')}" in self.names


class _Kind:
    """A kind of module: classes (``isinstance``) first, then class names (copies in other repos)."""

    def __init__(self, qualified: Iterable[str | type], names: Iterable[str] = ()) -> None:
        self.qualified = tuple(qualified)
        self.names = frozenset(names) | {q.__name__ if isinstance(q, type) else q.rpartition(".")[2]
                                         for q in self.qualified}
        self._types: tuple[type, ...] | None = None

    @property
    def types(self) -> tuple[type, ...]:
        if self._types is None:
            self._types = _classes(self.qualified)
        return self._types

    def __call__(self, module: nn.Module) -> bool:
        return isinstance(module, self.types) or type(module).__name__ in self.names


#: modules known by class to gate channels: SE and its relatives (timm, torchvision, ours, common repos).
#: The fallback behind :mod:`se_inject.gates`, which knows a gate by what it computes.
CHANNEL_GATES = _Kind(
    ["se_inject.block.SqueezeExcite", "torchvision.ops.misc.SqueezeExcitation",
     "timm.layers.squeeze_excite.SEModule", "timm.layers.squeeze_excite.EffectiveSEModule",
     "timm.layers.squeeze_excite.SqueezeExcite", "timm.layers.squeeze_excite.SqueezeExciteCl",
     "timm.layers.eca.EcaModule", "timm.layers.eca.CecaModule", "timm.layers.gather_excite.GatherExcite",
     "timm.layers.cbam.CbamModule", "timm.layers.cbam.LightCbamModule", "timm.layers.split_attn.SplitAttn",
     "timm.layers.selective_kernel.SelectiveKernelAttn", "timm.layers.global_context.GlobalContext",
     "timm.models._efficientnet_blocks.SqueezeExcite", "timm.models.byobnet.SqueezeExcite"],
    names=["SEBlock", "SELayer", "SqueezeExcite2d", "SEWeightModule", "SqueezeExcitation"])
#: activations (fused norm + activation modules are :data:`NORM_ACTS`).
ACTS = _Kind(
    ["torch.nn.ReLU", "torch.nn.ReLU6", "torch.nn.SiLU", "torch.nn.GELU", "torch.nn.Hardswish", "torch.nn.LeakyReLU",
     "torch.nn.Mish", "torch.nn.PReLU", "torch.nn.ELU", "torch.nn.CELU", "torch.nn.SELU", "torch.nn.Sigmoid",
     "torch.nn.Tanh", "torch.nn.Hardtanh", "timm.layers.activations.Swish", "timm.layers.activations.HardSwish",
     "timm.layers.activations.GELUTanh", "timm.layers.activations.QuickGELU", "timm.layers.activations.HardMish"])
NORMS = _Kind(
    [NormBase, "torch.nn.GroupNorm", "torch.nn.LayerNorm",
     "torchvision.ops.misc.FrozenBatchNorm2d"])
#: norm + activation in one module (timm's BatchNormAct2d and friends).
NORM_ACTS = _Kind(["timm.layers.norm_act.BatchNormAct2d", "timm.layers.norm_act.GroupNormAct",
                   "timm.layers.norm_act.LayerNormAct2d", "timm.layers.norm_act.FrozenBatchNormAct2d"])
#: identity-like in eval and per-sample in training: SE goes before them.
TRANSPARENT = _Kind(
    ["torch.nn.Identity", "torch.nn.Dropout", "torch.nn.Dropout1d", "torch.nn.Dropout2d", "torch.nn.Dropout3d",
     "torch.nn.AlphaDropout", "timm.layers.drop.DropPath", "timm.layers.drop.DropBlock2d",
     "torchvision.ops.stochastic_depth.StochasticDepth"], names=["DropPath"])

ADD_FUNCTIONS = frozenset({operator.add, operator.iadd, torch.add})
ADD_METHODS = frozenset({"add", "add_"})
CAT_FUNCTIONS = frozenset({torch.cat, torch.concat, torch.concatenate})
CONV_FUNCTIONS = frozenset({F.conv1d, F.conv2d, F.conv3d})
#: functions that apply learned weights (their depth counts like a conv's)
LEARNED_FUNCTIONS = frozenset({F.conv1d, F.conv2d, F.conv3d, F.linear, torch.matmul, torch.bmm})
#: matrix products: a rank-4 one is attention (``(B, heads, N, d)``), whose dim 1 counts heads, not channels
MATRIX_PRODUCT_FUNCTIONS = frozenset({torch.matmul, operator.matmul, torch.bmm, torch.einsum,
                                      F.scaled_dot_product_attention})
MATRIX_PRODUCT_METHODS = frozenset({"matmul", "bmm", "__matmul__"})
ACT_FUNCTIONS = frozenset({F.relu, torch.relu, F.relu6, F.silu, F.gelu, F.hardswish, F.leaky_relu, F.mish,
                           F.elu, F.relu_, torch.relu_})
ACT_METHODS = frozenset({"relu", "relu_"})
TRANSPARENT_FUNCTIONS = frozenset({F.dropout, F.dropout1d, F.dropout2d, torch.dropout})
#: channel slicing ops: a concat of such slices and learned branches is a split unit (ShuffleNetV2)
SPLIT_FUNCTIONS = frozenset({torch.chunk, torch.split, torch.tensor_split, torch.narrow, operator.getitem})
SPLIT_METHODS = frozenset({"chunk", "split", "tensor_split", "narrow"})

# ---- what a channel gate is made of (se_inject.gates): pool -> (bottleneck) -> gate -> product
#: bounded activations a gate ends in (paper Eq. 3's sigmoid; hard-sigmoid, tanh, softmax over paths or channels;
#: ReLU6 and hard-tanh, of which timm's old hard_sigmoid ``relu6(x + 3) / 6`` is an affine)
GATE_ACTS = _Kind(
    ["torch.nn.Sigmoid", "torch.nn.Hardsigmoid", "torch.nn.Tanh", "torch.nn.Softmax", "torch.nn.Softmax2d",
     "torch.nn.ReLU6", "torch.nn.Hardtanh", "timm.layers.activations.Sigmoid", "timm.layers.activations.Tanh",
     "timm.layers.activations.HardSigmoid", "timm.layers.activations_me.HardSigmoidMe"])
GATE_FUNCTIONS = _Functions(
    {torch.sigmoid, F.sigmoid, torch.special.expit, F.hardsigmoid, torch.tanh, F.tanh, torch.softmax, F.softmax,
     F.relu6, F.hardtanh},
    ["timm.layers.activations.sigmoid", "timm.layers.activations.tanh", "timm.layers.activations.hard_sigmoid",
     "timm.layers.activations_me.hard_sigmoid_me"])
GATE_METHODS = frozenset({"sigmoid", "sigmoid_", "tanh", "tanh_", "softmax"})
#: pooling modules (global when their output has no spatial extent left: checked on the graph's shapes)
POOLS = _Kind(
    ["torch.nn.AdaptiveAvgPool1d", "torch.nn.AdaptiveAvgPool2d", "torch.nn.AdaptiveAvgPool3d",
     "torch.nn.AdaptiveMaxPool1d", "torch.nn.AdaptiveMaxPool2d", "torch.nn.AdaptiveMaxPool3d",
     "torch.nn.AvgPool1d", "torch.nn.AvgPool2d", "torch.nn.AvgPool3d", "torch.nn.MaxPool1d", "torch.nn.MaxPool2d",
     "torch.nn.MaxPool3d", "torch.nn.LPPool1d", "torch.nn.LPPool2d", "timm.layers.adaptive_avgmax_pool.SelectAdaptivePool2d",
     "timm.layers.adaptive_avgmax_pool.AdaptiveAvgMaxPool2d", "timm.layers.adaptive_avgmax_pool.AdaptiveCatAvgMaxPool2d"])
#: reductions: means, maxima, sums, norms, and the matrix product of attention pooling (GCNet's context)
POOL_FUNCTIONS = _Functions(
    {torch.mean, torch.sum, torch.amax, torch.max, torch.std, torch.var, torch.logsumexp, torch.norm,
     torch.linalg.vector_norm, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
     F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
     F.max_pool1d, F.max_pool2d, F.max_pool3d, torch.matmul, operator.matmul, torch.bmm, torch.einsum},
    ["timm.layers.adaptive_avgmax_pool.adaptive_avgmax_pool2d", "timm.layers.adaptive_avgmax_pool.select_adaptive_pool2d"])
POOL_METHODS = frozenset({"mean", "sum", "amax", "max", "std", "var", "logsumexp", "norm", "matmul", "bmm", "__matmul__"})
#: upsampling back to the map's size: gather-excite's gate over a coarse map of regions
UPSAMPLES = _Kind(["torch.nn.Upsample", "torch.nn.UpsamplingNearest2d", "torch.nn.UpsamplingBilinear2d"])
UPSAMPLE_FUNCTIONS = frozenset({F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear})
PRODUCT_FUNCTIONS = frozenset({operator.mul, operator.imul, torch.mul, torch.multiply})
PRODUCT_METHODS = frozenset({"mul", "mul_", "multiply", "__mul__", "__rmul__"})
#: ops that move, cast or broadcast a tensor's values without computing new ones
VIEW_FUNCTIONS = frozenset({torch.reshape, torch.flatten, torch.unsqueeze, torch.squeeze, torch.permute,
                            torch.transpose, torch.broadcast_to, operator.getitem, torch.movedim, torch.unflatten})
VIEW_METHODS = frozenset({"view", "reshape", "flatten", "unflatten", "unsqueeze", "squeeze", "permute", "transpose",
                          "contiguous", "expand", "expand_as", "broadcast_to", "to", "float", "half", "bfloat16",
                          "type", "type_as", "view_as", "reshape_as", "movedim", "clone"})
#: ops that rescale or shift a gate (``1 + tanh(...)``, ``2 * sigmoid(...)``) when the other operand is a constant
AFFINE_FUNCTIONS = frozenset({operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub,
                              operator.imul, operator.itruediv, operator.neg, torch.add, torch.sub, torch.mul,
                              torch.div, torch.rsub, torch.neg, torch.clamp, torch.clip})
AFFINE_METHODS = frozenset({"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "neg", "clamp", "clamp_",
                            "clip", "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__"})


def is_gate(m: nn.Module) -> bool:
    """``m``'s class is a known channel gate: the fallback of :mod:`se_inject.gates`."""
    return CHANNEL_GATES(m)


def contains_gate(m: nn.Module) -> bool:
    """``m`` is or holds a module of a known gate class (torchvision's MBConv keeps its SE inside a
    ``Sequential``): the fallback of :meth:`se_inject.gates.GateIndex.holds`."""
    return any(CHANNEL_GATES(sub) for sub in m.modules())


def is_act(m: nn.Module) -> bool:
    return ACTS(m)


def is_norm(m: nn.Module) -> bool:
    """A normalisation layer (fused norm + activation modules included)."""
    return NORMS(m) or "Norm" in type(m).__name__


def is_norm_act(m: nn.Module) -> bool:
    return NORM_ACTS(m) or "NormAct" in type(m).__name__ or "BnAct" in type(m).__name__


def is_transparent(m: nn.Module) -> bool:
    return TRANSPARENT(m)


def is_conv(m: nn.Module) -> bool:
    return isinstance(m, ConvNd)


def is_learned(m: nn.Module) -> bool:
    """A layer with a weight of 2+ dims of its own (a conv, a linear layer): what SE's depth counts."""
    return any(p.dim() >= 2 for p in m.parameters(recurse=False))


def learned_layers(m: nn.Module) -> list[nn.Module]:
    """``m``'s learned layers (itself included), in registration order."""
    return [sub for sub in m.modules() if is_learned(sub)]


def fresh_output(m: nn.Module) -> bool:
    """Whether ``m`` returns a new tensor (not a view of its input, nor its input): the fused add
    may then write into it in inference."""
    return isinstance(m, (NormBase, ConvNd, nn.Linear, nn.GroupNorm, nn.LayerNorm)) or NORM_ACTS(m)


def conv_dilation(m: nn.Module) -> int | None:
    """The smallest dilation of ``m``'s spatial convolutions (kernel > 1), None if it has none."""
    dilations = [max(c.dilation) for c in m.modules() if is_conv(c) and max(c.kernel_size) > 1]
    return min(dilations) if dilations else None
