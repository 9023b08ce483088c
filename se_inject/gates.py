"""Channel gates recognised by what they compute: SE and its relatives, whoever wrote them.

A product node of a traced graph *gates channels* when it multiplies a map ``x`` by a factor that

1. is per channel: spread over all of ``x``'s positions (``(N, C, 1, 1)`` on ``(N, C, H, W)``,
   ``(N, 1, 1, C)`` channels-last, ``(N, C, 1)`` on a 1-D map, ``(N, 1, C)`` on tokens,
   ``(N, k, C, 1, 1)`` on the k paths of a selective kernel), or over regions of 4x4 positions or
   more, upsampled back to ``x``'s size (gather-excite);
2. comes out of a gate: a sigmoid (paper Eq. 3), hard-sigmoid, tanh, softmax (over channels or
   paths), ReLU6 or hard-tanh, or an affine of one with constants (``1 + tanh(z)``, ``relu6(z + 3) / 6``);
3. is computed from a pooling of ``x``, or of the branch ``x`` is computed from, that leaves no more
   than the factor's extent: a mean, max, sum, norm, an adaptive or strided pooling, or attention
   pooling (a matrix product: GCNet's context).

Between the pooling and the gate anything may run: nothing, a bottleneck of linear layers or 1x1
convs with any activation (paper Eq. 3), ECA's 1-D conv across channels, CBAM's MLP shared by the
mean and the max. The parts may sit in different modules: a child computes the factor and its
parent multiplies (a child whose graph pools is a pooling, one whose output is a gate is a gate),
or a child holds the whole gate and the residual add is its parent's (transformers' RegNet). Owners
(modules with learned children, :mod:`se_inject.tracing`) are read from their traced graphs; a leaf
whose code names a gate function is traced here, its input shapes taken from its caller's graph.

The three tests are :class:`se_inject.gate_reader.GraphReader`'s, on one graph; :class:`GateIndex`
asks them of every module it is asked about and follows a map across an owner's boundary.

Class names (:data:`se_inject.operators.CHANNEL_GATES`) stay as the fallback: a module of a known
gate class counts as one whatever its graph (timm's ``GatherExcite`` branches on a shape and cannot
be traced; ``GlobalContext`` gates by an add by default).

    >>> import torch
    >>> from torch import nn
    >>> from se_inject.tracing import trace_model
    >>> class Recalibrate(nn.Module):                  # an SE block under another name
    ...     def __init__(self, c):
    ...         super().__init__()
    ...         self.squeeze, self.excite = nn.Linear(c, c // 4), nn.Linear(c // 4, c)
    ...     def forward(self, x):
    ...         w = self.excite(torch.relu(self.squeeze(x.mean((2, 3))))).sigmoid()
    ...         return x * w[:, :, None, None]
    >>> model = nn.Sequential(nn.Conv2d(3, 16, 3), Recalibrate(16))
    >>> index = GateIndex.of(trace_model(model, (3, 32, 32)))
    >>> [(g.owner, g.node, g.x, g.pool, g.gate, g.modules) for g in index.gates_of(model[1])]
    [('1', 'mul', 'x', 'mean', 'sigmoid', ('1.squeeze', '1.excite'))]
    >>> index.holds(model), index.gates_input(model[1]), index.inside("1.excite"), index.inside("0")
    (True, True, True, False)
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from . import operators as ops
from .gate_reader import Gate, GraphGates, GraphReader, is_shape_query
from .shapes import BACKENDS, Call, annotate_shapes
from .tracing import ModuleGraph, TracedModel, trace_module

__all__ = ["Gate", "GraphGates", "GateIndex", "is_shape_query"]


#: words that a leaf's code must contain for it to be traced here (its own gate function or module)
_GATE_WORDS = ("sigmoid", "tanh", "softmax", "gate", "relu6", "hardtanh", "expit")
_MAY_GATE: dict[type, bool] = {}


def _code_names_gate(cls: type) -> bool:
    """Whether the methods ``cls`` defines (below nn.Module) name a gate function or a ``gate``."""
    cached = _MAY_GATE.get(cls)
    if cached is None:
        codes = [getattr(fn, "__func__", fn).__code__ for klass in cls.__mro__
                 if klass not in (nn.Module, object) and not klass.__module__.startswith("torch.nn")
                 for fn in vars(klass).values() if hasattr(getattr(fn, "__func__", fn), "__code__")]
        cached = False
        while codes and not cached:
            code = codes.pop()
            cached = any(w in name.lower() for name in code.co_names + code.co_varnames for w in _GATE_WORDS)
            codes += [c for c in code.co_consts if hasattr(c, "co_names")]
        _MAY_GATE[cls] = cached
    return cached


def _is_builtin_layer(m: nn.Module) -> bool:
    """A torch.nn layer (not a container), an activation, a norm or a drop-path: never a gate itself."""
    if isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        return False
    return (type(m).__module__.startswith("torch.nn") or ops.is_act(m) or ops.is_norm(m) or ops.is_norm_act(m)
            or ops.is_transparent(m) or ops.is_conv(m) or ops.GATE_ACTS(m) or ops.POOLS(m))


def _memo(cache: dict[int, bool], module: nn.Module, read: Callable[[], bool]) -> bool:
    """``cache[id(module)]``, read once. While it is being read it is False: a module reached again
    through its own children (a recursive question) adds nothing new."""
    key = id(module)
    if key not in cache:
        cache[key] = False
        cache[key] = read()
    return cache[key]


class GateIndex:
    """The channel gates of one traced model, found module by module on demand (memoised).

    ``graphs``: the traced owners (:attr:`TracedModel.graphs`), whose graphs carry shapes; ``root``:
    the module their paths are relative to. Every other module asked about is traced here.
    """

    def __init__(self, graphs: Iterable[ModuleGraph], root: nn.Module, prefix: str = "") -> None:
        graphs = list(graphs)
        self._owners = {id(mg.module): mg for mg in graphs if mg.ok}
        self._by_path = {mg.path: mg for mg in graphs if mg.ok}
        self._root, self._prefix = root, prefix
        self._paths: dict[int, str] | None = None
        self._leaves: dict[int, ModuleGraph | None] = {}
        self._found: dict[int, GraphGates] = {}
        self._holds: dict[int, bool] = {}
        self._gates_input: dict[int, bool] = {}
        self._outputs_gate: dict[int, bool] = {}
        self._pools: dict[int, bool] = {}
        self._inside: list[str] | None = None

    @classmethod
    def of(cls, traced: TracedModel) -> "GateIndex":
        return cls(traced.graphs.values(), traced.model)

    @classmethod
    def of_graph(cls, mg: ModuleGraph) -> "GateIndex":
        """For one owner's graph alone (children are traced on demand)."""
        return cls([mg], mg.module, mg.path)

    # ---- paths and graphs
    def path(self, module: nn.Module) -> str:
        if self._paths is None:
            self._paths = {}
            for p, m in self._root.named_modules(remove_duplicate=False):
                full = ".".join(x for x in (self._prefix, p) if x)
                self._paths.setdefault(id(m), full)
        return self._paths.get(id(module), "")

    def graph(self, module: nn.Module, caller: fx.Node | None = None) -> ModuleGraph | None:
        """``module``'s own graph: the traced owner's, else traced here (shapes from ``caller``'s inputs)."""
        mg = self._owners.get(id(module))
        if mg is not None:
            return mg
        key = id(module)
        if key not in self._leaves:
            self._leaves[key] = self._trace_leaf(module)
        mg = self._leaves[key]
        if mg is not None and caller is not None and not mg.call:
            self._shape_leaf(mg, caller)
        return mg

    def _trace_leaf(self, module: nn.Module) -> ModuleGraph | None:
        if _is_builtin_layer(module) or not (_code_names_gate(type(module))
                                             or any(ops.GATE_ACTS(c) or _code_names_gate(type(c)) for c in module.modules())):
            return None
        try:
            graph, constants = trace_module(module)
        except Exception:
            return None
        return ModuleGraph(path=self.path(module), module=module, graph=graph, constants=constants)

    def _shape_leaf(self, mg: ModuleGraph, caller: fx.Node) -> None:
        """``node.meta['shape']`` on a leaf's graph, from the shapes of its caller's arguments (meta tensors)."""
        def stand_in(a: Any) -> Any:
            if isinstance(a, fx.Node):
                shape = a.meta.get("shape")
                if shape is None:
                    raise ValueError("an argument of unknown shape")
                return torch.empty(shape, device="meta")
            return a
        try:
            args = tuple(stand_in(a) for a in caller.args)
            kwargs = {k: stand_in(v) for k, v in caller.kwargs.items()}
            mg.call = Call(0, args, kwargs)
            annotate_shapes(mg.module, mg.graph, "", BACKENDS["meta"](mg.module), {"": mg.call}, mg.constants)
        except Exception:
            for n in mg.graph.nodes:
                n.meta.pop("shape", None)

    # ---- what a module is
    def gates_of(self, module: nn.Module, caller: fx.Node | None = None) -> list[Gate]:
        """The gates in ``module``'s own graph (not its children's)."""
        mg = self.graph(module, caller)
        return self.in_graph(mg).gates if mg is not None else []

    def in_graph(self, mg: ModuleGraph) -> GraphGates:
        key = id(mg.graph)
        if key not in self._found:
            self._found[key] = GraphReader(self, mg).read()
        return self._found[key]

    def holds(self, module: nn.Module, caller: fx.Node | None = None) -> bool:
        """``module`` or a module under it gates channels (by its graph, or by class: the fallback)."""
        def read() -> bool:
            mg = self.graph(module, caller)
            callers = {n.target: n for n in mg.graph.nodes if n.op == "call_module"} if mg is not None else {}
            return (ops.is_gate(module) or bool(self.gates_of(module, caller))
                    or any(self.holds(c, callers.get(name)) for name, c in module.named_children()))
        return _memo(self._holds, module, read)

    def gates_input(self, module: nn.Module, caller: fx.Node | None = None) -> bool:
        """``module`` gates the map it is given before anything else (an SE module; CBAM, its channel
        half first): a site whose output goes straight into it is already gated."""
        def read() -> bool:
            if ops.is_gate(module):
                return True
            mg = self.graph(module, caller)
            if mg is None:
                return False
            if any(g.on_input for g in self.in_graph(mg).gates):
                return True
            # its input goes first into a child that gates it
            inputs = [n for n in mg.graph.nodes if n.op == "placeholder"][:1]
            users = [u for i in inputs for u in i.users if not is_shape_query(u)]
            return (len(users) == 1 and users[0].op == "call_module"
                    and self.gates_input(mg.module.get_submodule(users[0].target), users[0]))
        return _memo(self._gates_input, module, read)

    def outputs_gate(self, module: nn.Module, caller: fx.Node | None = None) -> bool:
        """``module`` returns a gate's output (an SE's excitation without the product: SK's attention,
        transformers' ``attention`` Sequential ending in a Sigmoid)."""
        if ops.GATE_ACTS(module):
            return True
        def read() -> bool:
            mg = self.graph(module, caller)
            if mg is None:
                return False
            out = next((n for n in mg.graph.nodes if n.op == "output"), None)
            start = out.args[0] if out is not None and out.args else None
            return isinstance(start, fx.Node) and GraphReader(self, mg).factor_chain(start)[1] is not None
        return _memo(self._outputs_gate, module, read)

    def pools(self, module: nn.Module, caller: fx.Node | None = None) -> bool:
        """``module`` pools (a pooling layer, or a graph with a pooling in it: a child that squeezes)."""
        if ops.POOLS(module):
            return True
        if ops.is_learned(module) and not any(True for _ in module.children()):
            return False
        def read() -> bool:
            mg = self.graph(module, caller)
            if mg is None:
                return False
            reader = GraphReader(self, mg)
            return any(reader.is_pool(n) for n in mg.graph.nodes)
        return _memo(self._pools, module, read)

    # ---- across an owner's boundary: its caller's graph
    def caller(self, path: str) -> tuple[ModuleGraph, fx.Node] | None:
        """The traced graph that calls the module at ``path`` and the call node (its parent's, or a
        grandparent's that calls it by a dotted name); None for the root or an untraced caller."""
        parts = path.split(".") if path else []
        for i in range(len(parts) - 1, -1, -1):
            mg = self._by_path.get(".".join(parts[:i]))
            if mg is None:
                continue
            target = ".".join(parts[i:])
            node = next((n for n in mg.graph.nodes if n.op == "call_module" and n.target == target), None)
            if node is not None:
                return mg, node
        return None

    def gated_next(self, mg: ModuleGraph, n: fx.Node, depth: int = 0, learned: int = 0) -> bool:
        """What ``n`` computes is gated next: it (or a view of it, past drop-path) is the map a gate of
        ``mg``'s graph multiplies, or goes straight into a module that gates its input; where it is the
        owner's output, the same is asked of the owner's call in its caller's graph. ``learned``: how
        many learned layers (with their norm and activation) may come between (a dense block's concat,
        then VoVNet's aggregation conv, then its ESE)."""
        found, reader = self.in_graph(mg), GraphReader(self, mg)
        gated = set(found.products.values())
        cur: fx.Node | None = n
        passed = 0
        while cur is not None:
            if cur in gated:
                return True
            users = [u for u in cur.users if not is_shape_query(u)]
            if len(users) != 1:
                return False
            user = users[0]
            if user.op == "output":
                out = user.args[0] if user.args else None
                if isinstance(out, (list, tuple)) and len(out) == 1:
                    out = out[0]  # fx's pytree code generator returns a flat list of the outputs
                up = self.caller(mg.path) if depth < 4 and out is cur else None
                return up is not None and self.gated_next(up[0], up[1], depth + 1, learned - passed)
            m = reader.submodule(user)
            if m is not None and self.gates_input(m, user):
                return True
            kind, prev = reader._step(user)
            if kind in ("view", "transparent", "affine") and prev is cur:
                cur = user
            elif passed < learned and m is not None and ops.learned_layers(m) and user.args and user.args[0] is cur:
                passed, cur = passed + 1, user  # a conv unit (conv, norm, act in one module, or the conv alone)
            elif passed and m is not None and (ops.is_norm(m) or ops.is_act(m) or ops.is_norm_act(m)):
                cur = user  # the norm and activation after that conv
            else:
                cur = None
        return False

    def gated_upstream(self, mg: ModuleGraph, branch: Iterable[str], shortcut: Iterable[str], depth: int = 0) -> bool:
        """A residual branch that began in the caller: the add is ``mg``'s, its branch fed by the inputs
        named ``branch`` and its shortcut by those named ``shortcut`` (transformers' EfficientNet passes the
        block's input and its SE output to a child that adds them). Whether the branch's part in the
        caller, what the caller computes for the branch alone, holds a gate."""
        up = self.caller(mg.path) if depth < 4 else None
        if up is None:
            return False
        cmg, call = up
        try:
            bound = inspect.signature(mg.module.forward).bind(*call.args, **call.kwargs).arguments
        except TypeError:
            return False
        b_nodes = [bound[p] for p in branch if isinstance(bound.get(p), fx.Node)]
        s_nodes = [bound[p] for p in shortcut if isinstance(bound.get(p), fx.Node)]
        if not b_nodes:
            return False
        reader = GraphReader(self, cmg)
        own = set().union(*(reader.ancestors(b) for b in b_nodes)) - set().union(*(reader.ancestors(s) for s in s_nodes))
        found = self.in_graph(cmg)
        for r in own:
            m = reader.submodule(r)
            if r in found.products or (m is not None and self.holds(m, r)):
                return True
        inputs = [r.target for r in own if r.op == "placeholder"]
        shared = [r.target for s in s_nodes for r in reader.ancestors(s) if r.op == "placeholder"]
        return bool(inputs) and self.gated_upstream(cmg, inputs, shared, depth + 1)

    def inside(self, path: str) -> bool:
        """``path`` computes a gate's factor, or lies in a module that is a gate as a whole: no site there
        (EfficientNet's SE convs, RegNetY's ``attention``)."""
        if self._inside is None:
            inside: list[str] = []
            for p, m in self._root.named_modules():
                full = ".".join(x for x in (self._prefix, p) if x)
                if ops.is_gate(m):
                    inside.append(full)
                mg = self._owners.get(id(m))
                if mg is not None:
                    found = self.in_graph(mg)
                    inside += [q for g in found.gates for q in g.modules]
                    if found.output_gated:
                        inside.append(full)
            self._inside = inside
        return any(q == "" or path == q or path.startswith(f"{q}.") for q in self._inside)
