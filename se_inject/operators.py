"""What se-inject knows about operators: one registry, type-based first, class names as a fallback.

Site detection asks of a graph node "is this a channel gate, an activation, a norm, a conv, a
drop-path?". The answers live here, as data: a module class is matched by ``isinstance`` against
the classes listed (torch, timm and torchvision ones, imported when available), and only then by
class name, for the same blocks copied into other repositories (``SELayer``, ``SEBlock``).

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
           "ACT_FUNCTIONS", "ACT_METHODS", "TRANSPARENT_FUNCTIONS", "SPLIT_FUNCTIONS", "SPLIT_METHODS"]


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


#: modules that already gate channels: SE and its relatives (timm, torchvision, ours, common repos).
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


def is_gate(m: nn.Module) -> bool:
    return CHANNEL_GATES(m)


def contains_gate(m: nn.Module) -> bool:
    """``m`` is a gate or holds one (torchvision's MBConv keeps its SE inside a ``Sequential``)."""
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
