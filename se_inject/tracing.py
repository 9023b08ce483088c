"""Stage 1: trace every module that has children, one level at a time, and record shapes.

Each module with children is traced on its own with torch.fx, its children kept as leaves, so a
residual add or an Inception concat is found in the module that *owns* it (a timm ``Bottleneck``,
not the whole ResNet). A module whose forward cannot be traced is no dead end: its children are
traced in turn, as every module is. Calls to timm's non-traceable functions
(``timm.layers._fx`` registry) are recorded as leaves too.

Shapes come from one forward pass on stand-in tensors (:mod:`se_inject.shapes`); each owner's graph
is then interpreted with the arguments its module received, and every node gets
``node.meta["shape"]``.

    >>> import timm
    >>> traced = trace_model(timm.create_model("resnet18"))
    >>> add = next(n for n in traced.graphs["layer1.0"].graph.nodes if n.op == "call_function")
    >>> add.target.__name__, add.meta["shape"]
    ('add', (1, 64, 56, 56))
"""
from __future__ import annotations

import collections
import contextlib
import inspect
import operator
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.fx as fx
from torch import nn

from ._torch_compat import FX_ASSERT_IS_NONE, drop_dotted_wraps, plain_codegen, pytree, qualified_name, traceable_assert
from .errors import TraceError
from .operators import is_learned
from .shapes import (BACKENDS, Call, annotate_shapes, check_input_size, default_input_size, eval_mode,
                     expected_input, first_line, forward_shapes, model_device, record_calls, shapes_of)

__all__ = ["ForwardError", "KeepDictClasses", "ModuleGraph", "TracedModel", "trace_model", "trace_module", "is_mode_dependent",
           "clean_wrapped_calls", "learned_paths", "Call", "default_input_size", "forward_shapes", "assert_is_none"]


class ForwardError(TraceError):
    """The model's forward fails on an input of the given size on every shape backend."""


@dataclass
class ModuleGraph:
    """One module's own forward as an fx graph (children as leaves), or why there is none."""
    path: str
    module: nn.Module
    graph: fx.Graph | None = None
    error: str | None = None      # why tracing or interpretation failed
    call: Call | None = None
    constants: dict[str, torch.Tensor] = field(default_factory=dict)  # tensors fx made constants of

    @property
    def ok(self) -> bool:
        return self.graph is not None and self.error is None


@dataclass
class TracedModel:
    """What stage 2 (sites) needs: per-owner graphs with shapes, and the input resolution.

    ``root`` is the submodule that was run and traced ('' = the whole model; ``backbone`` for a
    detector); every path, graph key included, is a path in ``model``."""
    model: nn.Module
    input_size: tuple[int, ...]
    graphs: dict[str, ModuleGraph]
    backend: str                  # meta | fake | real: how shapes were obtained
    output_shapes: Any = None     # the traced module's output shapes (a pytree of tuples)
    notes: list[str] = field(default_factory=list)
    root: str = ""

    @property
    def module(self) -> nn.Module:
        """The module that was run: the model itself, or its ``root`` submodule."""
        return self.model.get_submodule(self.root)

    def owners(self) -> Iterator[ModuleGraph]:
        """Traced owners in execution order."""
        yield from sorted((g for g in self.graphs.values() if g.ok), key=lambda g: g.call.order)


def assert_is_none(value: Optional[Any], msg: str) -> None:
    """A rewritten module's check that an argument fixed to ``None`` by the trace is still ``None``.

    fx's own check (``torch.fx._symbolic_trace._assert_is_none``) annotates ``value: object``, which
    TorchScript cannot compile: a rewritten module holding it would not script. This one compiles
    for an argument of any ``Optional`` type, and raises as fx's does:

        >>> assert_is_none(None, "mask has been specialized to have value None but got another value")
        >>> torch.jit.script(assert_is_none)(torch.ones(1), "mask has been specialized")
        Traceback (most recent call last):
        ...
        torch.jit.Error: The following operation failed in the TorchScript interpreter.
        ...
    """
    if value is not None:
        raise AssertionError(msg)


def _autowrap_functions() -> tuple[Any, ...]:
    """Functions a trace records as calls: timm's non-traceable ones and :func:`assert_is_none`
    (a re-trace of a rewritten module keeps its check)."""
    try:
        from timm.layers import _fx as timm_fx
    except ImportError:  # timm is optional for plain torch models
        return (assert_is_none,)
    return (assert_is_none, *(f for f in timm_fx.get_notrace_functions() if callable(f)))


#: dict classes fx writes into a graph as they are (any other dict subclass is rebuilt by a call of its class)
_PLAIN_DICTS = (dict, collections.OrderedDict, collections.defaultdict)


class KeepDictClasses(fx.Tracer):
    """A tracer that keeps a returned dict of a class of its own (transformers' ``ModelOutput``) of
    its class: fx writes a plain dict into the graph, and a caller that reads ``outputs[0]`` or
    ``.logits`` from a rewritten module would then fail. The dict is built again by a call of its
    class on the same keys (an unpickled rewritten module, re-traced from its code, keeps it too)."""

    def create_arg(self, a: Any) -> Any:
        if (isinstance(a, dict) and type(a) not in _PLAIN_DICTS and a
                and all(isinstance(k, str) and k.isidentifier() for k in a)):
            return self.create_node("call_function", type(a), (), {k: self.create_arg(v) for k, v in a.items()})
        return super().create_arg(a)


class _OneLevelTracer(KeepDictClasses):
    """Traces ``root``'s own forward; every submodule call is a leaf ``call_module`` node."""

    def __init__(self, root: nn.Module) -> None:
        super().__init__(autowrap_functions=_autowrap_functions(), param_shapes_constant=True)
        self._root = root

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return m is not self._root


def _is_size(value: Any) -> bool:
    """An int or a tuple/list of ints (not a bool): a size a caller may vary with the input."""
    if isinstance(value, (tuple, list)):
        return bool(value) and all(_is_size(v) for v in value)
    return isinstance(value, int) and not isinstance(value, bool)


def _concrete_args(module: nn.Module, call: Call | None, *, keep_sizes: bool = True) -> dict[str, Any] | None:
    """Non-tensor arguments of the recorded call become constants of the trace (``None`` masks,
    flags): tracing them symbolically would take every ``if mask is not None`` branch.

    ``keep_sizes``: ints and int tuples (a feature map's ``(H, W)``) stay arguments, so the
    rewritten module keeps working at other input sizes."""
    if call is None:
        return None
    try:
        bound = inspect.signature(module.forward).bind(*call.args, **call.kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    concrete: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = bound.signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD and not value:
            # no extra keywords: ``**kwargs`` is an empty dict, not a proxy that a call would unpack
            # (transformers' layers pass their ``**kwargs`` on to their children)
            concrete[f"**{name}"] = {}
            continue
        if kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        if isinstance(value, torch.Tensor) or (keep_sizes and isinstance(value, int) and _is_size(value)):
            continue
        if keep_sizes and _is_size(value):  # a tuple of placeholders: `view(B, C, *size)` traces
            concrete[name] = type(value)(fx.PH for _ in value)
            continue
        concrete[name] = pytree.tree_map(lambda v: fx.PH if isinstance(v, torch.Tensor) else v, value)
    return concrete or None


@contextlib.contextmanager
def _unwrapped_forward(module: nn.Module) -> Iterator[None]:
    """``module``'s class forward as the function a decorator wraps, while fx traces it, where the
    wrapper takes ``(*args, **kwargs)`` and the function does not (transformers' ``GradientCheckpointingLayer``
    wraps every layer's forward so): fx makes placeholders from the function's signature but calls
    the wrapper, which then unpacks a proxy as ``*args``. The wrapper only checkpoints in training
    with gradient checkpointing on; a rewritten module runs the graph of the function."""
    cls = type(module)
    wrapper = cls.forward
    inner = inspect.unwrap(wrapper)
    flags = inspect.CO_VARARGS | inspect.CO_VARKEYWORDS
    if inner is wrapper or not hasattr(wrapper, "__code__") or not hasattr(inner, "__code__") or \
            not wrapper.__code__.co_flags & inspect.CO_VARARGS or inner.__code__.co_flags & flags == flags:
        yield
        return
    own = "forward" in vars(cls)
    cls.forward = inner
    try:
        yield
    finally:
        if own:
            cls.forward = wrapper
        else:
            del cls.forward


def trace_module(module: nn.Module, call: Call | None = None) -> tuple[fx.Graph, dict[str, torch.Tensor]]:
    """``module``'s own forward as an fx graph whose submodule calls are ``call_module`` leaves, and
    the tensors that graph reads as constants.

    Size arguments stay arguments where fx can trace them so; a forward that branches on one is
    traced with it fixed. A tensor the forward builds from constants becomes a ``get_attr`` of a
    ``_tensor_constantN`` that fx sets on ``module``; it is taken off the user's module again and
    returned beside the graph (``ModuleGraph.constants``): tracing leaves no mark on the model.
    """
    before = set(vars(module))
    concrete = _concrete_args(module, call)
    try:
        try:
            with _unwrapped_forward(module):
                graph = _OneLevelTracer(module).trace(module, concrete_args=concrete)
        except Exception:  # the forward branches on a size: fix it to the traced value (fx asserts it)
            for k in set(vars(module)) - before:
                del module.__dict__[k]
            fixed = _concrete_args(module, call, keep_sizes=False)
            if fixed == concrete:
                raise
            concrete = fixed
            with _unwrapped_forward(module):
                graph = _OneLevelTracer(module).trace(module, concrete_args=concrete)
    finally:
        added = {k: module.__dict__.pop(k) for k in set(vars(module)) - before}
    plain_codegen(graph)  # an empty **kwargs made concrete: no pytree wrapper around a plain signature
    return _scriptable_specialisations(clean_wrapped_calls(graph), module, concrete or {}), added


def _scriptable_specialisations(graph: fx.Graph, module: nn.Module, concrete: dict[str, Any]) -> fx.Graph:
    """Make what fx adds for specialised arguments (``concrete``) readable by TorchScript, as the
    original forward is: each ``_assert_is_none`` check becomes :func:`assert_is_none`; each
    specialised argument gets back its annotation (fx drops it: TorchScript would read the argument as
    a tensor), or the type of its fixed value (``bool``, ``int``, ``float``, ``str``) where it had none;
    a list or tuple argument is one argument again (:func:`_unflattened_arguments`)."""
    for n in graph.find_nodes(op="call_function", target=FX_ASSERT_IS_NONE):
        n.target = assert_is_none
    try:
        hints = typing.get_type_hints(type(module).forward)
    except Exception:  # an annotation that names something not importable here
        hints = {}
    graph = _unflattened_arguments(graph, module, hints)
    for n in graph.find_nodes(op="placeholder"):
        name = n.target.rsplit("_", 1)[0] if n.target.endswith("_1") else None
        if name not in concrete or isinstance(concrete[name], (tuple, list, dict)):
            continue  # not specialised, or a container of them (pytree arguments keep fx's codegen)
        value = concrete[name]
        if name in hints:
            n.type = hints[name]
        elif type(value) in (bool, int, float, str):
            n.type = type(value)
    return graph


def _unflattened_arguments(graph: fx.Graph, module: nn.Module, hints: dict[str, Any]) -> fx.Graph:
    """``graph`` with fx's pytree code generation undone where every pytree argument is a list or tuple
    of leaves (VoVNet's ``concat_list``, a size tuple): fx then reads the argument as several inputs
    through ``fx_pytree.tree_flatten_spec`` in the generated code, which TorchScript cannot compile. The
    argument becomes one placeholder again (with its annotation) and each of its items a ``getitem``,
    its length checked as fx checks a fixed value. ``graph`` is returned as it is otherwise."""
    codegen = graph._codegen
    info = getattr(codegen, "pytree_info", None)
    if type(codegen) is fx.graph.CodeGen or info is None or info.in_spec.type is not tuple:
        return graph
    specs = info.in_spec.children()
    if len(specs) != len(info.orig_args) or not specs or not specs[0].is_leaf():
        return graph  # the first argument is the module itself (self)
    if not all(s.is_leaf() or (s.type in (list, tuple) and all(c.is_leaf() for c in s.children())) for s in specs):
        return graph  # nested containers, dicts, None items: left to fx's code generation
    old = graph.find_nodes(op="placeholder")
    if len(old) != sum(s.num_leaves for s in specs[1:]):
        return graph
    params = inspect.signature(type(module).forward).parameters
    new = fx.Graph()
    val_map: dict[fx.Node, fx.Node] = {}
    leaves = iter(old)
    for name, spec in zip(info.orig_args[1:], specs[1:]):
        default = params[name].default if name in params else inspect.Parameter.empty
        if spec.is_leaf():
            leaf = next(leaves)
            val_map[leaf] = new.placeholder(leaf.target, type_expr=leaf.type, default_value=leaf.args[0] if leaf.args
                                            else inspect.Signature.empty)
            continue
        arg = new.placeholder(name, type_expr=hints.get(name), default_value=default)
        count = len(spec.children())
        length = new.call_function(len, (arg,))
        length.meta["is_wrapped"] = True  # the code registers fx.wrap("len"): a re-trace records it, as here
        same = new.call_function(operator.eq, (length, count))
        why = f"{name} has been specialized to have {count} items but got another number"
        new.call_function(traceable_assert, (same, why))
        for i in range(count):
            val_map[next(leaves)] = new.call_function(operator.getitem, (arg, i))
    out = new.graph_copy(graph, val_map)
    new.output(pytree.tree_unflatten(list(out) if isinstance(out, (list, tuple)) else [out], info.out_spec)
               if info.out_spec is not None else out)
    return new


def clean_wrapped_calls(graph: fx.Graph) -> fx.Graph:
    """Unmark wrapped calls of torch functions in ``graph`` (returned for chaining).

    fx marks wrapped calls so that generated code re-registers them with ``wrap("name")``; for a
    torch function the name is dotted (``torch.fx._symbolic_trace._assert_is_none``, emitted for a
    specialised ``None`` argument), and that registration breaks every later fx trace in the
    process with a KeyError (torch 2.14). The call itself stays in the graph.
    """
    drop_dotted_wraps()
    for n in graph.nodes:
        if n.meta.get("is_wrapped") and "." in qualified_name(n.target):
            del n.meta["is_wrapped"]
    return graph


def _same_graph(a: fx.Graph, b: fx.Graph) -> bool:
    return a.python_code("self").src == b.python_code("self").src


@contextlib.contextmanager
def _owner_mode(module: nn.Module, training: bool) -> Iterator[None]:
    """Flip only ``module.training``: its children are leaves, so their mode does not matter here."""
    was = module.training
    module.training = training
    try:
        yield
    finally:
        module.training = was


def learned_paths(model: nn.Module) -> set[str]:
    """Paths of every module whose subtree holds a weight of 2+ dims (a conv, a linear layer)."""
    paths: set[str] = set()
    for name, m in model.named_modules():
        if is_learned(m):
            parts = name.split(".") if name else []
            paths.update(".".join(parts[:i]) for i in range(len(parts) + 1))
    return paths


def _trace_owner(path: str, module: nn.Module, call: Call | None) -> ModuleGraph:
    mg = ModuleGraph(path=path, module=module, call=call)
    if call is None:
        mg.error = "not called by the model's forward"
        return mg
    try:
        mg.graph, mg.constants = trace_module(module, call)
    except Exception as e:  # any failure to trace this level: its children are still traced
        mg.error = f"fx cannot trace {type(module).__name__}.forward: {first_line(e)}"
    return mg


def _reads_training(cls: type) -> bool:
    """Whether any method defined by ``cls`` (below nn.Module) reads an attribute named ``training``."""
    cached = _READS_TRAINING.get(cls)
    if cached is None:
        codes = []
        for klass in cls.__mro__:
            if klass in (nn.Module, object) or klass.__module__.startswith("torch.nn"):
                continue
            for fn in vars(klass).values():
                fn = getattr(fn, "__func__", fn)
                if hasattr(fn, "__code__"):
                    codes.append(fn.__code__)
        stack, cached = codes, False
        while stack and not cached:  # nested functions and comprehensions too
            code = stack.pop()
            cached = "training" in code.co_names
            stack += [c for c in code.co_consts if hasattr(c, "co_names")]
        _READS_TRAINING[cls] = cached
    return cached


_READS_TRAINING: dict[type, bool] = {}


def is_mode_dependent(mg: ModuleGraph) -> bool:
    """Whether ``mg``'s forward traces differently in train() and eval() (``if self.training``):
    a graph rewritten from one mode would then be wrong in the other. Only classes whose code reads
    ``training`` are traced again, in the other mode."""
    if not _reads_training(type(mg.module)):
        return False
    with _owner_mode(mg.module, not mg.module.training):
        other, _ = trace_module(mg.module, mg.call)
    return not _same_graph(mg.graph, other)


def trace_model(model: nn.Module, input_size: tuple[int, ...] | None = None,
                backend: str | None = None, *, root: str = "") -> TracedModel:
    """Trace every module that has children and annotate node shapes for one input.

    ``input_size`` is the input's shape without the batch: ``(C, H, W)`` for images, ``(C, L)`` or
    ``(C, T, H, W)`` for 1-D and 3-D nets (default: :func:`default_input_size`); ``backend`` forces
    ``meta``, ``fake`` or ``real`` (default: the first that works, in that order); ``root`` traces
    that submodule of ``model`` only (a detector's ``backbone``), paths staying paths in ``model``.
    Raises :class:`TraceError` naming the reason when the module's forward fails on every backend.
    """
    top, model = model, model.get_submodule(root)
    size = check_input_size(input_size, model) if input_size is not None else default_input_size(model)
    device = model_device(model)
    notes: list[str] = []
    errors: list[str] = []
    chosen = None
    calls: dict[str, Call] = {}
    with eval_mode(model):
        for name in ([backend] if backend else list(BACKENDS)):
            if name not in BACKENDS:
                raise TraceError(f"shape backend {name!r} is not one of {', '.join(BACKENDS)}")
            if name == "real" and device.type == "meta":
                continue
            candidate = BACKENDS[name](model)
            try:
                calls = record_calls(model, candidate, candidate.input((1, *size), device))
            except Exception as e:
                errors.append(f"{name}: {first_line(e)}")
                continue
            chosen = candidate
            break
        if chosen is None:
            raise ForwardError(f"{type(model).__name__} fails its forward at input size {size}: "
                             + "; ".join(errors) + f" ({expected_input(model)}; check the model runs on "
                             "torch.zeros(1, *input_size))")
        if errors:
            notes.append(f"shapes from the {chosen.name} backend ({'; '.join(errors)})")

        learned = learned_paths(model)
        graphs: dict[str, ModuleGraph] = {}
        for path, module in model.named_modules():
            prefix = f"{path}." if path else ""
            if not any(f"{prefix}{child}" in learned for child in module._modules):
                continue  # no child with weights: nothing to gate (a BatchNormAct2d, an activation wrapper)
            mg = _trace_owner(path, module, calls.get(path))
            if mg.ok:
                try:
                    annotate_shapes(module, mg.graph, path, chosen, calls, mg.constants)
                except Exception as e:
                    mg.error = f"shape propagation failed in {type(module).__name__}: {first_line(e)}"
            graphs[path] = mg
    top_call = calls.get("")
    shapes = shapes_of(top_call.output) if top_call is not None else None
    if root:  # paths in the whole model from here on
        for mg in graphs.values():
            mg.path = f"{root}.{mg.path}" if mg.path else root
        graphs = {mg.path: mg for mg in graphs.values()}
    return TracedModel(top, size, graphs, chosen.name, shapes, notes, root)
