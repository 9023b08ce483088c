"""A GraphModule that stays the module it replaced: an instance of the original class (its methods,
``isinstance``, container protocol), with every child, parameter, buffer, attribute and hook of the
original owner, across ``copy.deepcopy`` and pickling.

``torch.fx.GraphModule`` keeps only what its graph references and renames itself ``GraphModule``
when deep-copied: an unused child (a ``DropPath`` bypassed by the fused add, a module the forward
never calls) would vanish from the state dict. :class:`OwnerGraphModule` restores them, and
:func:`_become` makes each rewritten owner an instance of both it and the original class, so
``block.zero_init_last()`` and ``isinstance(block, Bottleneck)`` keep working; only ``forward`` is
the rewritten graph's.

    >>> import copy, timm, se_inject
    >>> from timm.models.resnet import BasicBlock
    >>> block = se_inject.apply(timm.create_model("resnet18")).layer1[0]
    >>> type(block).__name__, type(copy.deepcopy(block)).__name__, isinstance(block, BasicBlock)
    ('BasicBlock', 'BasicBlock', True)
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from ._torch_compat import MODULE_STATE as _MODULE_STATE
from ._torch_compat import CodeOnlyModule as _CodeOnlyModule
from ._torch_compat import format_import_block as _format_import_block
from ._torch_compat import forward_from_src as _forward_from_src
from ._torch_compat import sys_importer
from .tracing import KeepDictClasses

__all__ = ["OwnerGraphModule", "original_class", "original_class_name"]

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

    #: the user's class this one stands in for (set on the classes :func:`_become` makes)
    _se_inject_base: type | None = None

    @classmethod
    def build(cls, owner: nn.Module, graph: fx.Graph, modules: "OrderedDict[str, nn.Module | None]",
              constants: dict[str, torch.Tensor] | None = None) -> "OwnerGraphModule":
        """A graph module running ``graph`` with ``owner``'s state and ``modules`` as its children;
        ``constants`` (tensors fx made of values the forward builds) become non-persistent buffers:
        they follow ``.to(device)`` and stay out of the state dict. It is an instance of the
        owner's class too (:func:`_become`)."""
        constants = constants or {}
        targets = {n.target: constants[n.target] if n.target in constants else _resolve(modules, owner, n.target)
                   for n in graph.nodes if n.op in ("call_module", "get_attr")}
        base = original_class(owner) or type(owner)
        gm = cls(targets, graph, class_name=base.__name__)
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
        gm.__dict__["_se_inject_original_class"] = f"{base.__module__}.{base.__qualname__}"
        return _become(gm, base)

    def __str__(self) -> str:
        return nn.Module.__repr__(self)  # the module tree; the generated code is in `.code`

    def __deepcopy__(self, memo: dict[int, Any]) -> "OwnerGraphModule":
        res = OwnerGraphModule.__new__(OwnerGraphModule)  # made an instance of the original class below
        memo[id(self)] = res
        state = copy.deepcopy(self.__dict__, memo)
        fx.GraphModule.__init__(res, _CodeOnlyModule(dict(state)), state["_graph"], class_name=self.__class__.__name__)
        _adopt(res, state, plain_only=False)
        return _become(res, type(self)._se_inject_base)

    def __reduce__(self) -> tuple[Any, ...]:
        body = self.__dict__.copy()
        python_code = self.recompile()
        import_block = _format_import_block(python_code.globals, sys_importer)
        del body["_graph"]
        body["_graphmodule_cls_name"] = self.__class__.__name__
        # the original class by reference (pickle stores its import path), as it would for the original
        return (_rebuild_owner_graph_module, (body, import_block, type(self)._se_inject_base))



def _container_getitem(self: nn.Module, idx: Any) -> Any:
    """Indexing of a rewritten ``nn.Sequential`` / ``nn.ModuleList`` subclass: as the base class does,
    except that a slice is a plain ``nn.Sequential`` / ``nn.ModuleList`` of those children (the
    rewritten class's constructor takes a graph, not modules)."""
    base = type(self)._se_inject_base
    if isinstance(idx, slice):
        children = list(self._modules.items())[idx]
        return nn.Sequential(OrderedDict(children)) if issubclass(base, nn.Sequential) else nn.ModuleList(
            [m for _, m in children])
    return base.__getitem__(self, idx)


def _become(gm: OwnerGraphModule, base: type | None) -> OwnerGraphModule:
    """Make ``gm`` an instance of ``base`` as well, after fx built it: its class becomes a subclass of
    fx's per-instance class and of ``base``, so ``base``'s methods, ``isinstance`` and container
    protocol work while ``forward`` stays the graph's. (Not a base of the class fx builds: fx's
    ``GraphModule.__init__`` calls ``super().__init__()``, which would reach ``base.__init__``.)
    Where Python cannot combine the two classes (a metaclass or memory-layout conflict), or
    ``base`` is itself an fx graph module, ``gm`` stays a plain :class:`OwnerGraphModule`."""
    if base is None or issubclass(base, fx.GraphModule):
        return gm
    body: dict[str, Any] = {"_se_inject_base": base, "__module__": base.__module__,
                            "__qualname__": base.__qualname__, "__doc__": base.__doc__}
    if issubclass(base, (nn.Sequential, nn.ModuleList)):
        body["__getitem__"] = _container_getitem
    if "_wrapped_call" in vars(type(gm)):
        # fx's recompile() wraps __call__ once per class; a second wrapper on this subclass would
        # call the first, which calls this one again
        body["_wrapped_call"] = vars(type(gm))["_wrapped_call"]
    try:
        gm.__class__ = type(base.__name__, (type(gm), base), body)
    except TypeError:
        pass
    return gm


def original_class(module: nn.Module) -> type | None:
    """The user's class a rewritten owner stands in for (``timm.models.resnet.Bottleneck``), else None."""
    return getattr(type(module), "_se_inject_base", None) if isinstance(module, OwnerGraphModule) else None


def _resolve(modules: "OrderedDict[str, nn.Module | None]", owner: nn.Module, target: str) -> Any:
    head, _, rest = target.partition(".")
    obj: Any = modules[head] if head in modules else getattr(owner, head)
    for part in rest.split(".") if rest else ():
        obj = getattr(obj, part)
    return obj


class _KeepModules(KeepDictClasses):
    """Re-traces generated code: every submodule call stays a call (as torch's own unpickler does)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def _rebuild_owner_graph_module(body: dict[str, Any], import_block: str, base: type | None = None) -> OwnerGraphModule:
    """Unpickle: re-trace ``forward`` from its code, then restore every child and attribute.

    Like ``torch.fx.graph_module._deserialize_graph_module``, plus the wrapped-call clean-up of
    :func:`se_inject.tracing.trace_module` (without it a specialised ``None`` argument breaks
    every later fx trace in the process).
    """
    from .tracing import assert_is_none, clean_wrapped_calls
    forward = _forward_from_src(import_block + (body.get("_code") or body["code"]), {})
    class_name = body.get("_graphmodule_cls_name", "GraphModule")
    state = {k: v for k, v in body.items() if k != "_graphmodule_cls_name"}

    class _Code(nn.Module):
        pass
    _Code.forward = forward
    com = _Code()
    com.__dict__.update(state)
    graph = clean_wrapped_calls(_KeepModules(autowrap_functions=(assert_is_none,)).trace(com))
    gm = OwnerGraphModule(com, graph, class_name=class_name)
    _adopt(gm, state, plain_only=False)
    return _become(gm, base)


def original_class_name(module: nn.Module) -> str | None:
    """``'timm.models.resnet.Bottleneck'`` for a rewritten owner, ``None`` for any other module."""
    return module.__dict__.get("_se_inject_original_class")

