"""Part of stage 3: which SE blocks go inside the layer whose output they gate, not into its owner.

An SE block is normally a new child of the module that owns its site (timm's ``seresnet`` order:
``layer1.0.se`` beside ``bn3``). Two owners cannot take a new child without harm:

- a **container** (``nn.Sequential``, ``nn.ModuleList``): its children are counted by position.
  A block between ``features.2`` and ``features.3`` would become ``features[3]``, and timm's
  ``feature_info`` / ``forward_intermediates`` (``features.2``, ``features.6``, ...), slicing and
  ``len`` would reach the wrong layers;
- an owner whose class runs the gated layer from **another forward method** too (xception's
  ``forward_with_tap``, which ``forward_intermediates`` calls): that method is the original class's,
  and a block in the rewritten ``forward`` alone would not run there.

There the block goes inside the gated layer (:func:`se_inject.gated_layer.gate_layer`): the layer
stays at its position with its name and parameter names, and runs its SE block on its own output,
whoever calls it. A gated ``nn.Sequential`` child passes the block on to its last layer (a loop over
its layers, as ``forward_with_tap`` runs, reaches it too). Such a block cannot take over the residual
add (it is not fused).

    >>> import timm
    >>> from se_inject.tracing import trace_model
    >>> from se_inject.sites import find_sites
    >>> traced = trace_model(timm.create_model("vgg11_bn"), (3, 64, 64))
    >>> [holder(s, traced) for s in find_sites(traced)][:3]
    ['2', '6', '10']
"""
from __future__ import annotations

import torch.fx as fx
from torch import nn

from .gated_layer import can_gate
from .sites import Site
from .tracing import TracedModel

__all__ = ["holder", "alternate_forward_names"]


def _is_plain_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def alternate_forward_names(cls: type) -> frozenset[str]:
    """Attribute names that the ``forward_*`` methods of ``cls`` (other than ``forward``) read:
    the children another forward path runs (xception's ``forward_with_tap`` reads ``stack``)."""
    cached = _ALTERNATE.get(cls)
    if cached is None:
        codes = []
        for klass in cls.__mro__:
            if klass is object or klass.__module__.startswith("torch."):
                continue
            for name, fn in vars(klass).items():
                fn = getattr(fn, "__func__", fn)
                if name.startswith("forward_") and hasattr(fn, "__code__"):
                    codes.append(fn.__code__)
        names: set[str] = set()
        while codes:  # nested functions and comprehensions too
            code = codes.pop()
            names.update(code.co_names)
            codes += [c for c in code.co_consts if hasattr(c, "co_names")]
        cached = _ALTERNATE[cls] = frozenset(names)
    return cached


_ALTERNATE: dict[type, frozenset[str]] = {}


def holder(site: Site, traced: TracedModel) -> str:
    """The path below ``site.path`` of the layer that holds the site's SE block, or ``""`` when the
    owner holds it (a new child of the owner)."""
    mg = traced.graphs[site.path]
    owner = mg.module
    node = next((n for n in mg.graph.nodes if n.name == site.node), None)
    if node is None or node.op != "call_module" or "." in str(node.target):
        return ""
    name = str(node.target)
    base = getattr(type(owner), "_se_inject_base", type(owner))
    if not (isinstance(owner, (nn.Sequential, nn.ModuleList)) or name in alternate_forward_names(base)):
        return ""
    if sum(n.op == "call_module" and n.target == name for n in mg.graph.nodes) != 1:
        return ""  # called twice: a block inside would gate both calls
    if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], fx.Node):
        return ""  # the gated forward takes the one tensor a Sequential passes
    if site.kind == "residual" and len(node.users) != 1:
        return ""  # only the branch's way to the add is gated; other readers take the ungated map
    path, layer, parent = [name], owner._modules.get(name), owner
    while layer is not None and _is_plain_sequential(layer) and len(layer) > 0:
        parent, (last, layer) = layer, list(layer._modules.items())[-1]
        path.append(last)
    if layer is None or not can_gate(layer) or list(parent._modules.values()).count(layer) != 1:
        return ""
    return ".".join(path)
