"""A layer that runs its own SE block on its output, in place of the layer: the same position, name,
class and parameter names, so whatever reaches the layer (by index, by name, by iterating its
container) runs the SE block too.

``apply`` puts an SE block inside the layer whose output it gates when that layer sits at a position
others count on: a child of an ``nn.Sequential`` (VGG's ``features``, whose positions timm's
``feature_info`` and ``forward_intermediates`` index) or a layer that another ``forward_*`` method
of its owner runs on its own (xception's ``forward_with_tap``). The layer keeps its parameters'
names (``features.3.weight`` stays ``features.3.weight``); the block's are ``<layer>.se.*``.

    >>> import torch, se_inject
    >>> from torch import nn
    >>> features = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
    ...                          nn.Conv2d(16, 8, 3))
    >>> net = se_inject.apply(nn.Sequential(features, nn.Flatten()), input_size=(3, 32, 32), r=4)
    >>> relu = net[0][2]
    >>> type(relu).__name__, isinstance(relu, nn.ReLU), is_gated_layer(relu), len(net[0]), type(net[0][3]).__name__
    ('ReLU', True, True, 5, 'MaxPool2d')
    >>> [k for k in net.state_dict() if not k.startswith("0.1.")]           # doctest: +NORMALIZE_WHITESPACE
    ['0.0.weight', '0.0.bias', '0.2.se.fc1.weight', '0.2.se.fc1.bias', '0.2.se.fc2.weight', '0.2.se.fc2.bias',
     '0.4.weight', '0.4.bias']
"""
from __future__ import annotations

import copy
import types
from typing import Any, Callable

from torch import fx, jit, nn

from ._torch_compat import MODULE_STATE

__all__ = ["GatedLayer", "gate_layer", "is_gated_layer", "gates_own_output", "can_gate", "layer_of", "GATE_NAME"]

#: the attribute of a gated layer that holds its SE block
GATE_NAME = "se"


class GatedLayer(nn.Module):
    """Mixin of the per-class subclasses :func:`gate_layer` makes: ``forward`` is the layer's own
    forward followed by its SE block. Written for TorchScript: the layer's forward is compiled as the
    method ``_se_inject_layer_forward`` (a renamed copy of the original class's ``forward``)."""

    #: the layer's class (set on each subclass)
    _se_inject_base: type

    def forward(self, input):
        return self.se(self._se_inject_layer_forward(input))

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        # the class is made at run time: pickle the layer's class by reference, rebuild the subclass
        return (_new_gated, (type(self)._se_inject_base,), self.__dict__)


def _renamed(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``fn`` under another name: TorchScript compiles a method under its function's ``__name__``,
    and ``forward`` is taken by the gated forward."""
    new = types.FunctionType(fn.__code__, fn.__globals__, name, fn.__defaults__, fn.__closure__)
    new.__qualname__ = f"{fn.__qualname__.rpartition('.')[0]}.{name}".lstrip(".")
    new.__module__ = fn.__module__
    new.__kwdefaults__ = fn.__kwdefaults__
    new.__annotations__ = dict(getattr(fn, "__annotations__", {}))
    new.__doc__ = fn.__doc__
    return new


_CLASSES: dict[type, type] = {}


def _gated_class(base: type) -> type:
    cls = _CLASSES.get(base)
    if cls is None:
        body = {"_se_inject_base": base, "__module__": base.__module__, "__qualname__": base.__qualname__,
                "__doc__": base.__doc__, "_se_inject_layer_forward": _renamed(base.forward, "_se_inject_layer_forward")}
        # the layer's own module name: fx's default tracers keep a torch.nn layer a leaf, called as a whole
        cls = _CLASSES[base] = type(base.__name__, (GatedLayer, base), body)
    return cls


def _new_gated(base: type) -> GatedLayer:
    cls = _gated_class(base)
    return cls.__new__(cls)


def can_gate(layer: nn.Module) -> bool:
    """Whether :func:`gate_layer` takes ``layer``: a plain module (not already gated, not an fx graph
    module or a scripted one) with a Python ``forward`` and no attribute named ``se``."""
    forward = type(layer).forward
    return (not isinstance(layer, (GatedLayer, fx.GraphModule, jit.ScriptModule))
            and isinstance(forward, types.FunctionType)
            and forward is not nn.Module.forward and not hasattr(layer, GATE_NAME))


def gate_layer(layer: nn.Module, block: nn.Module) -> nn.Module:
    """A copy of ``layer`` (sharing its parameters, buffers, children and hooks) whose forward runs
    ``layer``'s, then ``block`` on the output; an instance of ``layer``'s class, the block its child ``se``.

        >>> import torch
        >>> from se_inject import SqueezeExcite
        >>> conv = torch.nn.Conv2d(3, 8, 3)
        >>> gated = gate_layer(conv, SqueezeExcite(8, r=2))
        >>> isinstance(gated, torch.nn.Conv2d), gated.weight is conv.weight, list(gated.state_dict())[:3]
        (True, True, ['weight', 'bias', 'se.fc1.weight'])
    """
    if not can_gate(layer):
        raise TypeError(f"gate_layer cannot gate a {type(layer).__name__}")
    new = _new_gated(type(layer))
    state = dict(layer.__dict__)
    state["_modules"] = dict(layer._modules)
    for key in MODULE_STATE:  # its own containers: the user's layer is left as it was
        if isinstance(state.get(key), (dict, set)):
            state[key] = copy.copy(state[key])
    new.__dict__.update(state)
    new._modules[GATE_NAME] = block
    return new


def is_gated_layer(module: nn.Module) -> bool:
    """``module`` is a layer :func:`gate_layer` made: it runs its SE block on its own output."""
    return isinstance(module, GatedLayer)


def gates_own_output(module: nn.Module) -> bool:
    """``module`` is a gated layer, or a plain ``nn.Sequential`` whose last layer is one (at any depth):
    its output has passed an SE block already."""
    while isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward and len(module):
        module = module[-1]
    return is_gated_layer(module)


def layer_of(gated: GatedLayer) -> nn.Module:
    """The layer inside ``gated`` as it was: an instance of its own class sharing its parameters,
    buffers and children, without the SE block (to read what the layer computes, e.g. for folding)."""
    base = type(gated)._se_inject_base
    layer = base.__new__(base)
    layer.__dict__.update(gated.__dict__)
    layer.__dict__["_modules"] = {k: v for k, v in gated._modules.items() if k != GATE_NAME}
    return layer
