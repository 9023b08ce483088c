"""Stage 1: trace every module that has children, one level at a time, and record shapes.

Each module with children is traced on its own with torch.fx, its children kept as leaves, so a
residual add or an Inception concat is found in the module that *owns* it (a timm ``Bottleneck``,
not the whole ResNet). A module whose forward cannot be traced is no dead end: its children are
traced in turn, as every module is. Calls to timm's non-traceable functions
(``timm.layers._fx`` registry) are recorded as leaves too.

Shapes come from one forward pass on meta tensors (no compute, no memory: the model's weights are
swapped for meta tensors for the pass), falling back to fake tensors, then to a real batch-1 pass
for models that mix devices inside their forward. Each owner's graph is then interpreted with the
arguments its module received, and every node gets ``node.meta["shape"]``.

    >>> import timm
    >>> traced = trace_model(timm.create_model("resnet18"))
    >>> add = next(n for n in traced.graphs["layer1.0"].graph.nodes if n.op == "call_function")
    >>> add.target.__name__, add.meta["shape"]
    ('add', (1, 64, 56, 56))
"""
from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch import nn
from torch.func import functional_call

from .errors import TraceError

__all__ = ["Call", "ModuleGraph", "TracedModel", "trace_model", "default_input_size", "trace_module", "is_mode_dependent",
           "forward_shapes", "clean_wrapped_calls"]


@dataclass
class Call:
    """The first call of a module during the shape pass."""
    order: int                    # position among the model's module calls (execution order)
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: Any = None
    count: int = 1                # how many times the module ran during the pass


@dataclass
class ModuleGraph:
    """One module's own forward as an fx graph (children as leaves), or why there is none."""
    path: str
    module: nn.Module
    graph: fx.Graph | None = None
    error: str | None = None      # why tracing or interpretation failed
    call: Call | None = None

    @property
    def ok(self) -> bool:
        return self.graph is not None and self.error is None


@dataclass
class TracedModel:
    """What stage 2 (sites) needs: per-owner graphs with shapes, and the input resolution."""
    model: nn.Module
    input_size: tuple[int, ...]
    graphs: dict[str, ModuleGraph]
    backend: str                  # meta | fake | real: how shapes were obtained
    output_shapes: Any = None     # the model output's shapes (a pytree of tuples)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def owners(self) -> Iterator[ModuleGraph]:
        """Traced owners in execution order."""
        yield from sorted((g for g in self.graphs.values() if g.ok), key=lambda g: g.call.order)


def default_input_size(model: nn.Module) -> tuple[int, int, int]:
    """``pretrained_cfg['input_size']`` (timm) or ``(3, 224, 224)``."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    return tuple(int(s) for s in size) if size else (3, 224, 224)


def _autowrap_functions() -> tuple[Any, ...]:
    try:
        from timm.layers import _fx as timm_fx
    except ImportError:  # timm is optional for plain torch models
        return ()
    return tuple(f for f in timm_fx.get_notrace_functions() if callable(f))


class _OneLevelTracer(fx.Tracer):
    """Traces ``root``'s own forward; every submodule call is a leaf ``call_module`` node."""

    def __init__(self, root: nn.Module) -> None:
        super().__init__(autowrap_functions=_autowrap_functions(), param_shapes_constant=True)
        self._root = root

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return m is not self._root


def _concrete_args(module: nn.Module, call: Call | None) -> dict[str, Any] | None:
    """Non-tensor arguments of the recorded call become constants of the trace (``None`` masks,
    flags): tracing them symbolically would take every ``if mask is not None`` branch."""
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
        if kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        if isinstance(value, torch.Tensor):
            continue
        concrete[name] = pytree.tree_map(lambda v: fx.PH if isinstance(v, torch.Tensor) else v, value)
    return concrete or None


def trace_module(module: nn.Module, call: Call | None = None) -> fx.Graph:
    """``module``'s own forward as an fx graph whose submodule calls are ``call_module`` leaves."""
    return clean_wrapped_calls(_OneLevelTracer(module).trace(module, concrete_args=_concrete_args(module, call)))


def clean_wrapped_calls(graph: fx.Graph) -> fx.Graph:
    """Unmark wrapped calls of torch functions in ``graph`` (returned for chaining).

    fx marks wrapped calls so that generated code re-registers them with ``wrap("name")``; for a
    torch function the name is dotted (``torch.fx._symbolic_trace._assert_is_none``, emitted for a
    specialised ``None`` argument), and that registration breaks every later fx trace in the
    process with a KeyError (torch 2.14). The call itself stays in the graph.
    """
    _drop_dotted_wraps()
    for n in graph.nodes:
        if n.meta.get("is_wrapped") and "." in _qualified_name(n.target):
            del n.meta["is_wrapped"]
    return graph


def _qualified_name(target: Any) -> str:
    try:
        return fx.node._get_qualified_name(target)
    except Exception:
        return getattr(target, "__name__", "")


def _drop_dotted_wraps() -> None:
    """Remove registrations of dotted names (see :func:`trace_module`) that other code may have left."""
    from torch.fx import _symbolic_trace as st
    for key in [k for k in st._wrapped_fns_to_patch if "." in k[1]]:
        del st._wrapped_fns_to_patch[key]


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


# --------------------------------------------------------------------------------------------
# Shape backends: how the one forward pass runs without touching the model's weights.


class _Backend:
    """Runs modules on stand-in tensors. ``meta``: weights swapped for meta tensors;
    ``fake``: FakeTensorMode over the real weights; ``real``: a real batch-1 pass (last resort)."""

    name = "real"

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def context(self) -> contextlib.AbstractContextManager[Any]:
        return torch.no_grad()

    def input(self, size: tuple[int, ...], device: torch.device) -> torch.Tensor:
        return torch.zeros(size, device=device)

    def run_module(self, path: str, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return module(*args, **kwargs)

    def attr(self, qualified_name: str, value: Any) -> Any:
        return value


class _MetaBackend(_Backend):
    name = "meta"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
        self.state = {k: torch.empty_like(v, device="meta") for k, v in named}

    def input(self, size: tuple[int, ...], device: torch.device) -> torch.Tensor:
        return torch.empty(size, device="meta")

    def _substate(self, path: str) -> dict[str, torch.Tensor]:
        prefix = f"{path}." if path else ""
        return {k[len(prefix):]: v for k, v in self.state.items() if k.startswith(prefix)}

    def run_module(self, path: str, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return functional_call(module, self._substate(path), args, kwargs, tie_weights=False, strict=False)

    def attr(self, qualified_name: str, value: Any) -> Any:
        if qualified_name in self.state:
            return self.state[qualified_name]
        if isinstance(value, torch.Tensor):
            return torch.empty_like(value, device="meta")
        return value


class _FakeBackend(_Backend):
    name = "fake"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        from torch._subclasses.fake_tensor import FakeTensorMode
        self.mode = FakeTensorMode(allow_non_fake_inputs=True)

    def context(self) -> contextlib.AbstractContextManager[Any]:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad())
        stack.enter_context(self.mode)
        return stack

    def input(self, size: tuple[int, ...], device: torch.device) -> torch.Tensor:
        with self.mode:
            return torch.empty(size, device=device)


BACKENDS: dict[str, type[_Backend]] = {"meta": _MetaBackend, "fake": _FakeBackend, "real": _Backend}


def learned_paths(model: nn.Module) -> set[str]:
    """Paths of every module whose subtree holds a weight of 2+ dims (a conv, a linear layer)."""
    paths: set[str] = set()
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            parts = name.split(".")[:-1]
            for i in range(len(parts) + 1):
                paths.add(".".join(parts[:i]))
    return paths


def _model_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """The shape pass runs in eval mode (no batch-norm statistics updated, no dropout); every
    module's own flag is restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, was in modes:
            m.training = was


def _record_calls(model: nn.Module, backend: _Backend, x: torch.Tensor) -> dict[str, Call]:
    calls: dict[str, Call] = {}
    counter = iter(range(1 << 62))
    handles = []

    def pre_hook(path: str):
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            order = next(counter)
            if path in calls:
                calls[path].count += 1
            else:
                # copy the containers: DenseNet passes a list that the caller appends to afterwards
                calls[path] = Call(order, pytree.tree_map(lambda v: v, args), pytree.tree_map(lambda v: v, dict(kwargs)))
        return hook

    def post_hook(path: str):
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            if calls[path].output is None:
                calls[path].output = output
        return hook

    for path, module in model.named_modules(remove_duplicate=False):
        handles.append(module.register_forward_pre_hook(pre_hook(path), with_kwargs=True))
        handles.append(module.register_forward_hook(post_hook(path), with_kwargs=True))
    try:
        with backend.context():
            backend.run_module("", model, (x,), {})
    finally:
        for h in handles:
            h.remove()
    return calls


class _ShapeInterpreter(fx.Interpreter):
    """Runs an owner's graph on stand-in tensors, writing ``node.meta['shape']``. A child that ran
    exactly once in the model pass is not run again: its recorded output is reused."""

    def __init__(self, module: nn.Module, graph: fx.Graph, path: str, backend: _Backend,
                 calls: dict[str, Call]) -> None:
        super().__init__(module, garbage_collect_values=False, graph=graph)
        self.path, self.backend, self.calls = path, backend, calls

    def _qualified(self, target: str) -> str:
        return f"{self.path}.{target}" if self.path else target

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        n.meta["shape"] = tuple(out.shape) if isinstance(out, torch.Tensor) else None
        return out

    def get_attr(self, target: str, args: Any, kwargs: Any) -> Any:
        return self.backend.attr(self._qualified(target), super().get_attr(target, args, kwargs))

    def call_module(self, target: str, args: Any, kwargs: Any) -> Any:
        qualified = self._qualified(target)
        call = self.calls.get(qualified)
        if call is not None and call.count == 1 and call.output is not None:
            return call.output
        return self.backend.run_module(qualified, self.fetch_attr(target), args, kwargs)


def _bound_args(module: nn.Module, call: Call) -> tuple[Any, ...]:
    bound = inspect.signature(module.forward).bind(*call.args, **call.kwargs)
    bound.apply_defaults()
    return tuple(bound.arguments.values())


def _trace_owner(path: str, module: nn.Module, call: Call | None) -> ModuleGraph:
    mg = ModuleGraph(path=path, module=module, call=call)
    if call is None:
        mg.error = "not called by the model's forward"
        return mg
    try:
        mg.graph = trace_module(module, call)
    except Exception as e:  # any failure to trace this level: its children are still traced
        mg.error = f"fx cannot trace {type(module).__name__}.forward: {_first_line(e)}"
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
        other = trace_module(mg.module, mg.call)
    return not _same_graph(mg.graph, other)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def trace_model(model: nn.Module, input_size: tuple[int, ...] | None = None,
                backend: str | None = None) -> TracedModel:
    """Trace every module that has children and annotate node shapes for one input.

    ``input_size`` is ``(C, H, W)`` without the batch (default: :func:`default_input_size`);
    ``backend`` forces ``meta``, ``fake`` or ``real`` (default: the first that works, in that order).
    Raises :class:`TraceError` naming the reason when the model's forward fails on every backend.
    """
    t0 = time.perf_counter()
    size = tuple(input_size) if input_size is not None else default_input_size(model)
    device = _model_device(model)
    notes: list[str] = []
    errors: list[str] = []
    chosen: _Backend | None = None
    calls: dict[str, Call] = {}
    with _eval_mode(model):
        for name in ([backend] if backend else list(BACKENDS)):
            if name not in BACKENDS:
                raise TraceError(f"shape backend {name!r} is not one of {', '.join(BACKENDS)}")
            if name == "real" and device.type == "meta":
                continue
            candidate = BACKENDS[name](model)
            try:
                calls = _record_calls(model, candidate, candidate.input((1, *size), device))
            except Exception as e:
                errors.append(f"{name}: {_first_line(e)}")
                continue
            chosen = candidate
            break
        if chosen is None:
            raise TraceError(f"{type(model).__name__} fails its forward at input size {size}: "
                             + "; ".join(errors) + " (check the model runs on torch.zeros(1, *input_size))")
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
                    with chosen.context():
                        _ShapeInterpreter(module, mg.graph, path, chosen, calls).run(*_bound_args(module, mg.call))
                except Exception as e:
                    mg.error = f"shape propagation failed in {type(module).__name__}: {_first_line(e)}"
            graphs[path] = mg
    root = calls.get("")
    shapes = _shapes(root.output) if root is not None else None
    return TracedModel(model, size, graphs, chosen.name, shapes, time.perf_counter() - t0, notes)


def _shapes(tree: Any) -> Any:
    return pytree.tree_map(lambda t: tuple(t.shape) if isinstance(t, torch.Tensor) else t, tree)


def forward_shapes(model: nn.Module, input_size: tuple[int, ...], backend: str = "meta") -> Any:
    """Output shapes of one batch-1 forward on the given backend, in eval mode (model untouched)."""
    chosen = BACKENDS[backend](model)
    with _eval_mode(model), chosen.context():
        out = chosen.run_module("", model, (chosen.input((1, *input_size), _model_device(model)),), {})
    return _shapes(out)
