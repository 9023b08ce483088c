"""A GraphModule that stays the module it replaced: every child, parameter, buffer, attribute and
hook of the original owner, its class name in ``repr``, across ``copy.deepcopy`` and pickling.

``torch.fx.GraphModule`` keeps only what its graph references and renames itself ``GraphModule``
when deep-copied: an unused child (a ``DropPath`` bypassed by the fused add, a module the forward
never calls) would vanish from the state dict. :class:`OwnerGraphModule` restores them.

    >>> import copy, timm, se_inject
    >>> block = se_inject.apply(timm.create_model("resnet18")).layer1[0]
    >>> type(block).__name__, type(copy.deepcopy(block)).__name__
    ('BasicBlock', 'BasicBlock')
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.fx.graph_module import _CodeOnlyModule, _format_import_block, _forward_from_src
from torch.package import sys_importer

__all__ = ["OwnerGraphModule", "original_class_name"]

#: nn.Module state that GraphModule.__init__ rebuilds from the graph alone, and we restore whole.
_MODULE_STATE = ("_modules", "_parameters", "_buffers", "_non_persistent_buffers_set", "training",
                 "_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                 "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks",
                 "_backward_pre_hooks", "_state_dict_hooks", "_state_dict_pre_hooks",
                 "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks", "_is_full_backward_hook")


def _adopt(gm: fx.GraphModule, state: dict[str, Any], *, plain_only: bool) -> None:
    """Give ``gm`` the module state in ``state`` (another module's ``__dict__``).

    ``plain_only``: from a user's module take public attributes only; from one of ours, take all.
    """
    for key in _MODULE_STATE:
        if key in state:
            gm.__dict__[key] = state[key]
    for key, value in state.items():
        if key in gm.__dict__ or key in gm.__dict__["_modules"] or (plain_only and key.startswith("_")):
            continue
        gm.__dict__[key] = value


class OwnerGraphModule(fx.GraphModule):
    """The rewritten owner of SE sites (see the module docstring)."""

    @classmethod
    def build(cls, owner: nn.Module, graph: fx.Graph, modules: "OrderedDict[str, nn.Module | None]",
              constants: dict[str, torch.Tensor] | None = None) -> "OwnerGraphModule":
        """A graph module running ``graph`` with ``owner``'s state and ``modules`` as its children;
        ``constants`` (tensors fx made of values the forward builds) become non-persistent buffers:
        they follow ``.to(device)`` and stay out of the state dict."""
        constants = constants or {}
        targets = {n.target: constants[n.target] if n.target in constants else _resolve(modules, owner, n.target)
                   for n in graph.nodes if n.op in ("call_module", "get_attr")}
        gm = cls(targets, graph, class_name=type(owner).__name__)
        state = dict(vars(owner))
        state["_modules"] = modules
        state["_parameters"] = OrderedDict(owner._parameters)
        state["_buffers"] = OrderedDict(owner._buffers)
        state["_non_persistent_buffers_set"] = set(owner._non_persistent_buffers_set)
        for key in _MODULE_STATE[5:]:
            if key in state:
                state[key] = copy.copy(state[key])
        _adopt(gm, state, plain_only=True)
        for name, tensor in constants.items():
            gm.register_buffer(name, tensor, persistent=False)
        gm.__dict__["_se_inject_original_class"] = f"{type(owner).__module__}.{type(owner).__qualname__}"
        return gm

    def __str__(self) -> str:
        return nn.Module.__repr__(self)  # the module tree; the generated code is in `.code`

    def __deepcopy__(self, memo: dict[int, Any]) -> "OwnerGraphModule":
        res = type(self).__new__(type(self))
        memo[id(self)] = res
        state = copy.deepcopy(self.__dict__, memo)
        fx.GraphModule.__init__(res, _CodeOnlyModule(dict(state)), state["_graph"], class_name=self.__class__.__name__)
        _adopt(res, state, plain_only=False)
        return res

    def __reduce__(self) -> tuple[Any, ...]:
        body = self.__dict__.copy()
        python_code = self.recompile()
        import_block = _format_import_block(python_code.globals, sys_importer)
        del body["_graph"]
        body["_graphmodule_cls_name"] = self.__class__.__name__
        return (_rebuild_owner_graph_module, (body, import_block))


def _resolve(modules: "OrderedDict[str, nn.Module | None]", owner: nn.Module, target: str) -> Any:
    head, _, rest = target.partition(".")
    obj: Any = modules[head] if head in modules else getattr(owner, head)
    for part in rest.split(".") if rest else ():
        obj = getattr(obj, part)
    return obj


class _KeepModules(fx.Tracer):
    """Re-traces generated code: every submodule call stays a call (as torch's own unpickler does)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def _rebuild_owner_graph_module(body: dict[str, Any], import_block: str) -> OwnerGraphModule:
    """Unpickle: re-trace ``forward`` from its code, then restore every child and attribute.

    Like ``torch.fx.graph_module._deserialize_graph_module``, plus the wrapped-call clean-up of
    :func:`se_inject.tracing.trace_module` (without it a specialised ``None`` argument breaks
    every later fx trace in the process).
    """
    from .tracing import clean_wrapped_calls
    forward = _forward_from_src(import_block + (body.get("_code") or body["code"]), {})
    class_name = body.get("_graphmodule_cls_name", "GraphModule")
    state = {k: v for k, v in body.items() if k != "_graphmodule_cls_name"}

    class _Code(nn.Module):
        pass
    _Code.forward = forward
    com = _Code()
    com.__dict__.update(state)
    graph = clean_wrapped_calls(_KeepModules().trace(com))
    gm = OwnerGraphModule(com, graph, class_name=class_name)
    _adopt(gm, state, plain_only=False)
    return gm


def original_class_name(module: nn.Module) -> str | None:
    """``'timm.models.resnet.Bottleneck'`` for a rewritten owner, ``None`` for any other module."""
    return module.__dict__.get("_se_inject_original_class")

