"""``se_inject.fold``: SE blocks whose gate hardly moves become their mean scale (paper §6.3-§6.4).

§6.3 finds the last stage's excitations saturated and nearly the same for every class ("SE_5_2 and
SE_5_3 are less important than previous blocks"), and §4 drops them at < 0.1 % top-1 cost. A block
whose gate varies by at most ``tolerance`` (its largest per-channel standard deviation over the
calibration set, :meth:`ExcitationStats.variation`) recomputes an almost constant scale for every
input: ``fold`` replaces it by its mean per-channel scale ``s``. Where the graph allows, ``s`` goes
into the layer that produces the gated map, so inference pays nothing for it:

- a BatchNorm/GroupNorm with affine weights: ``weight *= s``, ``bias *= s`` (exact, train or eval;
  timm's ``BatchNormAct2d`` too when its activation is a ReLU);
- a conv or linear layer: its output rows (and bias) ``*= s``;
- through ops that commute with a non-negative per-channel scale (ReLU, LeakyReLU, max/avg pooling,
  dropout, drop-path, identity: gates are never negative) and across a channel ``torch.cat``, each
  input's slice of ``s`` into its own producer (an Inception module's branches).

Every tensor on that path must have no other reader (the scale would reach it too). Elsewhere (the
input comes from outside the owner module, an op that does not commute, a fused norm + activation)
the block becomes a :class:`ConstantScale` holding ``s`` as a buffer: one multiply, no pooling, no
FCs. Either way the block's module stays where it was (``layer1.0.se``), now a ``ConstantScale``
that also performs the residual add and ReLU the SE block did; the model keeps its class and every
other parameter name, exports to ONNX and trains on.

    >>> import torch, timm, se_inject
    >>> model = se_inject.apply(timm.create_model("resnet18", num_classes=2), init="identity")
    >>> stats = se_inject.excitation_stats(model, [(torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 0, 1]))])
    >>> print(se_inject.fold_plan(model, stats, tolerance=0.01))   # identity init: every gate is exactly 1
    fold at tolerance 0.01: 8 of 8 SE blocks folded into the preceding layer, 0 kept as a constant scale, 0 kept
    block        label   C    variation  mean scale  action    into
    layer1.0.se  SE_2_1  64   0.0000     1.000       folded    layer1.0.bn2
    ...
    >>> folded = se_inject.fold(model, stats, tolerance=0.01)
    >>> type(folded.layer1[0].se).__name__, type(model.layer1[0].se).__name__   # the user's model is untouched
    ('ConstantScale', 'SqueezeExcite')
    >>> x = torch.randn(2, 3, 64, 64)
    >>> torch.allclose(folded.eval()(x), model.eval()(x), atol=1e-5)
    True
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from enum import StrEnum
from numbers import Real

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..block import SqueezeExcite
from ..errors import CompressError
from ..gated_layer import GATE_NAME, is_gated_layer, layer_of
from ..operators import CAT_FUNCTIONS, NORM_ACTS, TRANSPARENT
from .constant import ConstantScale
from .stats import ExcitationStats

__all__ = ["fold", "fold_plan", "FoldPlan", "FoldDecision", "FoldAction", "ConstantScale"]

#: modules with f(s * x) == s * f(x) for a per-channel scale s >= 0 (besides TRANSPARENT's identity-likes)
COMMUTING_MODULES: tuple[type, ...] = (nn.ReLU, nn.LeakyReLU, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d,
                                       nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                                       nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                                       nn.AdaptiveMaxPool3d)
COMMUTING_FUNCTIONS = frozenset({F.relu, F.relu_, torch.relu, torch.relu_, F.leaky_relu, F.max_pool2d, F.avg_pool2d,
                                 F.adaptive_avg_pool2d, F.dropout, torch.dropout})
COMMUTING_METHODS = frozenset({"relu", "relu_"})
#: layers whose output channels can absorb the scale: exact torch classes (a subclass may add an activation)
NORMS: tuple[type, ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm)
LAYERS: tuple[type, ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class FoldAction(StrEnum):
    FOLDED = "folded"        # the mean scale went into the layer(s) before: the block costs nothing
    CONSTANT = "constant"    # kept as a constant per-channel scale (the graph does not allow folding)
    KEPT = "kept"            # its gate varies more than the tolerance: left as it is


@dataclass(frozen=True)
class Segment:
    """Channels ``[start, start + channels)`` of the gated map, produced by the layer at ``path``."""
    path: str
    start: int
    channels: int


@dataclass(frozen=True)
class FoldDecision:
    block: str
    label: str
    channels: int
    variation: float
    mean_scale: float
    action: FoldAction
    into: tuple[Segment, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class FoldPlan:
    """What :func:`fold` does to each SE block at ``tolerance``; ``print(plan)`` gives the table."""
    tolerance: float
    decisions: tuple[FoldDecision, ...]

    def count(self, action: FoldAction) -> int:
        return sum(d.action is action for d in self.decisions)

    def __str__(self) -> str:
        rows = [("block", "label", "C", "variation", "mean scale", "action", "into")]
        for d in self.decisions:
            where = ", ".join(s.path for s in d.into) if d.action is FoldAction.FOLDED else d.reason
            rows.append((d.block, d.label, str(d.channels), f"{d.variation:.4f}", f"{d.mean_scale:.3f}", d.action.value,
                         where))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows]
        head = (f"fold at tolerance {self.tolerance:g}: {self.count(FoldAction.FOLDED)} of {len(self.decisions)} SE blocks "
                f"folded into the preceding layer, {self.count(FoldAction.CONSTANT)} kept as a constant scale, "
                f"{self.count(FoldAction.KEPT)} kept")
        return "\n".join([head] + [line.rstrip() for line in lines])


_THROUGH = object()   # the walk reached the input of the (sub)graph: continue at the caller


def _layer_type(m: nn.Module) -> type:
    """``m``'s class; for a layer that runs an SE block on its output (se_inject.holders), the layer's."""
    return type(m)._se_inject_base if is_gated_layer(m) else type(m)


def _absorbs(m: nn.Module) -> bool:
    if _layer_type(m) in NORMS or _norm_act(m):
        return bool(getattr(m, "affine", True)) and m.weight is not None
    return _layer_type(m) in LAYERS and not getattr(m, "transposed", False)


def _norm_act(m: nn.Module) -> bool:
    """timm's BatchNormAct2d and friends, when what follows the norm commutes (ReLU, identity)."""
    return (isinstance(m, nn.modules.batchnorm._BatchNorm) and NORM_ACTS(m)
            and all(_commutes(getattr(m, part, nn.Identity())) for part in ("drop", "act")))


def _out_channels(m: nn.Module) -> int:
    return int(getattr(m, "num_features", 0) or getattr(m, "num_channels", 0) or getattr(m, "out_channels", 0)
               or m.out_features)


def _commutes(m: nn.Module) -> bool:
    return isinstance(m, COMMUTING_MODULES) or TRANSPARENT(m)


class _Tracer(fx.Tracer):
    """Keeps the modules the walk understands (timm's BatchNormAct2d, ...) as leaves."""

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        return _absorbs(m) or _commutes(m) or super().is_leaf_module(m, qualified_name)


def _walk_module(path: str, m: nn.Module, channel_dim: int):
    """Segments absorbing the scale inside ``m``, _THROUGH, or a reason (str)."""
    if is_gated_layer(m):  # its output is its SE block's, which a channel scale does not pass through
        return f"{path} runs an SE block ({path}.{GATE_NAME}) on its output"
    if _absorbs(m):
        return [Segment(path, 0, _out_channels(m))]
    if _commutes(m):
        return _THROUGH
    if isinstance(m, nn.Sequential):
        for name, child in reversed(list(m.named_children())):
            found = _walk_module(f"{path}.{name}", child, channel_dim)
            if found is not _THROUGH:
                return found
        return _THROUGH
    graph = m if isinstance(m, fx.GraphModule) else None
    if graph is None:
        try:
            graph = fx.GraphModule(m, _Tracer().trace(m))
        except Exception:
            return f"cannot see inside {type(m).__name__} ({path})"
    output = next(n for n in graph.graph.nodes if n.op == "output")
    if not isinstance(output.args[0], fx.Node):
        return f"{type(m).__name__} ({path}) returns several tensors"
    return _walk_graph(path, graph, output.args[0], channel_dim)


def _walk_graph(prefix: str, gm: fx.GraphModule, node: fx.Node, channel_dim: int):
    """Walk back from ``node`` (the gated map, or a tensor on its way) to the layers that produce it."""
    if node.op == "placeholder":
        return _THROUGH
    if len(node.users) != 1:
        return f"{node.name} is read elsewhere too"
    first = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    if node.op == "call_module":
        path = f"{prefix}.{node.target}" if prefix else str(node.target)
        if sum(n.op == "call_module" and n.target == node.target for n in gm.graph.nodes) > 1:
            return f"{path} is called more than once"
        found = _walk_module(path, gm.get_submodule(str(node.target)), channel_dim)
        if found is _THROUGH:
            return _walk_graph(prefix, gm, first, channel_dim) if first is not None else f"{path} has no tensor input"
        return found
    if (node.op == "call_function" and node.target in COMMUTING_FUNCTIONS) or \
            (node.op == "call_method" and node.target in COMMUTING_METHODS):
        return _walk_graph(prefix, gm, first, channel_dim) if first is not None else f"{node.name} has no tensor input"
    if node.op == "call_function" and node.target in CAT_FUNCTIONS:
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        if dim != channel_dim:
            return f"{node.name} concatenates along dim {dim}, not the channels"
        segments: list[Segment] = []
        for item in node.args[0]:
            found = _walk_graph(prefix, gm, item, channel_dim) if isinstance(item, fx.Node) else "a constant"
            if not isinstance(found, list):
                return found if isinstance(found, str) else f"{node.name} concatenates the owner's input"
            start = sum(s.channels for s in segments)
            segments += [Segment(s.path, start + s.start, s.channels) for s in found]
        return segments
    what = getattr(node.target, "__name__", str(node.target))
    return f"{what} ({node.name}) does not commute with a channel scale"


def _producers(model: nn.Module, path: str, block: SqueezeExcite) -> list[Segment] | str:
    """Where the block's mean scale can go, or why it cannot."""
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    channel_dim = 1 if block.layout == "nchw" else -1
    if is_gated_layer(parent) and parent._modules.get(name) is block:
        # inside the layer it gates (a container's layer, se_inject.holders): the layer made the map,
        # or it commutes with the scale (a ReLU) and the walk goes on before it
        found = _walk_module(parent_path, layer_of(parent), channel_dim)
        if found is _THROUGH:
            found = _before(model, parent_path, channel_dim)
    else:
        found = _before(model, path, channel_dim)
    if found is _THROUGH:
        return "its input comes from outside its owner module"
    if isinstance(found, list) and sum(s.channels for s in found) != block.channels:
        return f"the layers before it make {sum(s.channels for s in found)} channels, it gates {block.channels}"
    return found


def _before(model: nn.Module, path: str, channel_dim: int):
    """Segments absorbing the scale before the module at ``path`` in its parent, _THROUGH, or a reason."""
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    if isinstance(parent, fx.GraphModule):
        calls = [n for n in parent.graph.nodes if n.op == "call_module" and n.target == name]
        if len(calls) != 1:
            return f"{path} is called {len(calls)} times"
        x = calls[0].args[0] if calls[0].args else calls[0].kwargs.get("x")
        found = _walk_graph(parent_path, parent, x, channel_dim) if isinstance(x, fx.Node) else "no input node"
    elif isinstance(parent, nn.Sequential):
        found = _THROUGH
        names = list(parent._modules)
        for before in reversed(names[: names.index(name)]):
            found = _walk_module(f"{parent_path}.{before}" if parent_path else before, parent._modules[before], channel_dim)
            if found is not _THROUGH:
                break
    else:
        return f"its owner {type(parent).__name__} was not rewritten as a graph"
    return found


def check_tolerance(tolerance: object) -> float:
    if isinstance(tolerance, bool) or not isinstance(tolerance, Real) or not math.isfinite(tolerance) or tolerance < 0:
        raise CompressError(f"tolerance={tolerance!r} is not a gate standard deviation: pass a number >= 0, "
                            "e.g. 0.02 (see ExcitationStats.summary() for each block's variation)")
    return float(tolerance)


def fold_plan(model: nn.Module, stats: ExcitationStats, tolerance: float) -> FoldPlan:
    """Which SE blocks :func:`fold` folds at ``tolerance``, into what, and why not; changes nothing."""
    tolerance = check_tolerance(tolerance)
    blocks = stats.check(model)
    decisions = []
    for path, block in blocks.items():
        common = dict(block=path, label=stats.labels.get(path, path), channels=block.channels,
                      variation=stats.variation(path), mean_scale=float(stats.mean[path].mean()))
        if common["variation"] > tolerance:
            decisions.append(FoldDecision(**common, action=FoldAction.KEPT, reason=f"varies more than {tolerance:g}"))
            continue
        found = _producers(model, path, block)
        if isinstance(found, list):
            decisions.append(FoldDecision(**common, action=FoldAction.FOLDED, into=tuple(found)))
        else:
            decisions.append(FoldDecision(**common, action=FoldAction.CONSTANT, reason=found))
    return FoldPlan(tolerance, tuple(decisions))


@torch.no_grad()
def _absorb(layer: nn.Module, scale: torch.Tensor) -> None:
    scale = scale.to(layer.weight)
    if _layer_type(layer) in NORMS or _norm_act(layer):
        layer.weight.mul_(scale)
        layer.bias.mul_(scale) if layer.bias is not None else None
        return
    layer.weight.mul_(scale.reshape(-1, *[1] * (layer.weight.dim() - 1)))
    if layer.bias is not None:
        layer.bias.mul_(scale)


def fold(model: nn.Module, stats: ExcitationStats, tolerance: float, *, inplace: bool = False) -> nn.Module:
    """``model`` with every SE block whose gate varies by at most ``tolerance`` replaced by its mean
    scale (see the module docstring and :func:`fold_plan` for the per-block report). A new model
    unless ``inplace=True``."""
    plan = fold_plan(model, stats, tolerance)
    target = model if inplace else copy.deepcopy(model)
    for d in plan.decisions:
        if d.action is FoldAction.KEPT:
            continue
        block = target.get_submodule(d.block)
        scale = stats.mean[d.block]
        for s in d.into:
            _absorb(target.get_submodule(s.path), scale[s.start: s.start + s.channels])
        replacement = ConstantScale(None if d.action is FoldAction.FOLDED else scale, channel_dim=block._channel_dim,
                                    spatial_dims=block.spatial_dims, post_act=block.post_act, label=block.label)
        replacement.train(block.training)
        replacement.to(device=block.fc1.weight.device)
        parent_path, _, name = d.block.rpartition(".")
        setattr(target.get_submodule(parent_path) if parent_path else target, name, replacement)
    return target
