"""One graph's channel gates: the product nodes that pass the three tests of :mod:`se_inject.gates`.

:class:`GraphReader` reads one owner's traced graph (shapes in ``node.meta``); what it cannot see in
a node (a child module that pools, one whose output is a gate) it asks of the :class:`~se_inject.gates.GateIndex`
it belongs to, which reads that child's own graph. :class:`Gate` and :class:`GraphGates` are what it
finds, as plain data.

    >>> import torch
    >>> from torch import nn
    >>> from se_inject.gates import GateIndex
    >>> from se_inject.tracing import trace_model
    >>> class Eca(nn.Module):                       # ECA: a 1-D conv across the channels, no bottleneck
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.conv = nn.Conv1d(1, 1, 3, padding=1)
    ...     def forward(self, x):
    ...         y = self.conv(x.mean((2, 3)).unsqueeze(1)).sigmoid()
    ...         return x * y.transpose(1, 2).unsqueeze(-1)
    >>> traced = trace_model(Eca(), (8, 16, 16))
    >>> found = GraphReader(GateIndex.of(traced), traced.graphs[""]).read()
    >>> [(g.node, g.x, g.pool, g.gate, g.on_input) for g in found.gates], found.output_gated
    ([('mul', 'x', 'mean', 'sigmoid', True)], True)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
from torch import nn

from . import operators as ops
from ._torch_compat import ConvNd
from .tracing import ModuleGraph

if TYPE_CHECKING:
    from .gates import GateIndex

__all__ = ["Gate", "GraphGates", "GraphReader", "is_shape_query"]


@dataclass(frozen=True)
class Gate:
    """A channel gate found in the graph of the module at ``owner``: node ``node`` multiplies the map
    ``x`` by a factor from pooling ``pool`` and gate ``gate``, computed by the submodules ``modules``."""
    owner: str                    # path of the module whose graph multiplies ('' = the root)
    node: str                     # the product node
    x: str                        # the gated map's node
    pool: str                     # the pooling: an op name or a module class
    gate: str                     # the gate function: an op name or a module class
    modules: tuple[str, ...] = ()  # paths of the modules that compute the factor (the gate's own layers)
    on_input: bool = False        # x is the owner's input: the module gates what it is given (an SE module)


@dataclass
class GraphGates:
    """The gates of one graph, with the nodes they are made of (what site detection reads)."""
    gates: list[Gate] = field(default_factory=list)
    products: dict[fx.Node, fx.Node] = field(default_factory=dict)  # product node -> its gated map x
    factor: set[fx.Node] = field(default_factory=set)              # nodes that compute a factor: no site there
    output_gated: bool = False    # the graph's output is a gate product on its input (the module is an SE block)


def _name(n: fx.Node, module: nn.Module | None) -> str:
    if module is not None:
        return type(module).__name__
    return n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))


def _shape(n: Any) -> tuple[int, ...] | None:
    return n.meta.get("shape") if isinstance(n, fx.Node) else None


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape) if shape else 1


def is_shape_query(n: fx.Node) -> bool:
    """``x.shape``, ``x.size()``, ``x.dim()``: reads no values."""
    if n.op == "call_function" and getattr(n.target, "__name__", "") == "getattr":
        return len(n.args) > 1 and n.args[1] in ("shape", "dtype", "device", "ndim")
    return n.op == "call_method" and n.target in ("size", "dim", "numel")


class GraphReader:
    """Finds the gates of one graph (:class:`GraphGates`): the product nodes that pass the three tests."""

    def __init__(self, index: "GateIndex", mg: ModuleGraph) -> None:
        self.index, self.mg = index, mg
        self.module, self.path = mg.module, mg.path
        self.nodes = list(mg.graph.nodes)
        self.order = {n: i for i, n in enumerate(self.nodes)}
        self._ancestors: dict[fx.Node, set[fx.Node]] = {}
        self._fed: set[fx.Node] = set()
        for n in self.nodes:
            if n.op == "placeholder" or any(i in self._fed for i in n.all_input_nodes):
                self._fed.add(n)

    def submodule(self, n: fx.Node) -> nn.Module | None:
        if n.op != "call_module":
            return None
        try:
            return self.module.get_submodule(n.target)
        except AttributeError:
            return None

    def _qualified(self, target: str) -> str:
        return f"{self.path}.{target}" if self.path else target

    def ancestors(self, n: fx.Node) -> set[fx.Node]:
        """``n`` and every node it is computed from."""
        if n not in self._ancestors:
            seen, stack = set(), [n]
            while stack:
                cur = stack.pop()
                if cur not in seen:
                    seen.add(cur)
                    stack.extend(cur.all_input_nodes)
            self._ancestors[n] = seen
        return self._ancestors[n]

    # ---- kinds of node
    def _is(self, n: fx.Node, functions: frozenset, methods: frozenset) -> bool:
        if n.op == "call_function":
            return n.target in functions
        return n.op == "call_method" and n.target in methods

    def is_pool(self, n: fx.Node) -> bool:
        if self._is(n, ops.POOL_FUNCTIONS, ops.POOL_METHODS):
            return True
        m = self.submodule(n)
        return m is not None and self.index.pools(m, n)

    def is_gate(self, n: fx.Node) -> bool:
        if self._is(n, ops.GATE_FUNCTIONS, ops.GATE_METHODS):
            return True
        m = self.submodule(n)
        return m is not None and self.index.outputs_gate(m, n)

    def is_product(self, n: fx.Node) -> bool:
        return (self._is(n, ops.PRODUCT_FUNCTIONS, ops.PRODUCT_METHODS)
                and sum(isinstance(a, fx.Node) for a in n.args[:2]) == 2)

    def _constant(self, a: Any) -> bool:
        """A number, a parameter or a tensor not computed from the inputs (a learned scale)."""
        return not isinstance(a, fx.Node) or a not in self._fed

    def _step(self, n: fx.Node) -> tuple[str | None, fx.Node | None]:
        """``(kind, input)`` when ``n`` passes a factor on: ``view``, ``upsample``, ``gate``, ``affine``
        (with constants), ``transparent``; ``(None, None)`` otherwise."""
        data = [a for a in n.args if isinstance(a, fx.Node) and a in self._fed]
        first = data[0] if data else None
        m = self.submodule(n)
        if first is None:
            return None, None
        if self._is(n, ops.VIEW_FUNCTIONS, ops.VIEW_METHODS):
            # getitem on a tuple output (max's values) is no view of a tensor; x[:, :, None] is
            return ("view", first) if _shape(first) is not None else (None, None)
        if self._is(n, ops.UPSAMPLE_FUNCTIONS, frozenset()) or (m is not None and ops.UPSAMPLES(m)):
            return "upsample", first
        if self.is_gate(n):
            return "gate", first
        if m is not None and ops.is_transparent(m):
            return "transparent", first
        if n.op == "call_function" and n.target in ops.TRANSPARENT_FUNCTIONS:
            return "transparent", first
        if self._is(n, ops.AFFINE_FUNCTIONS, ops.AFFINE_METHODS) and len(data) == 1 \
                and all(self._constant(a) for a in (*n.args, *n.kwargs.values()) if a is not first):
            return "affine", first
        return None, None

    def factor_chain(self, f: fx.Node) -> tuple[list[fx.Node], str | None, bool]:
        """From a factor back through views, upsampling, gates and affines: ``(nodes, gate, upsampled)``,
        ``gate`` the name of the gate met (None if none), ``nodes`` ending at the first other node."""
        chain, gate, upsampled, cur = [], None, False, f
        while cur is not None and cur not in chain:
            chain.append(cur)
            kind, prev = self._step(cur)
            if kind == "gate" and gate is None:
                gate = _name(cur, self.submodule(cur))
            upsampled |= kind == "upsample"
            cur = prev
        return chain, gate, upsampled

    # ---- the three tests
    @staticmethod
    def _pooled_dims(x: tuple[int, ...], f: tuple[int, ...], upsampled: bool) -> tuple[int, ...] | None:
        """The dims of ``x`` the factor ``f`` (as broadcast to ``x``'s rank) spreads over (test 1),
        None if ``f`` is not per channel: those dims must be the last ones (channels first) or the first
        after the batch (channels last), all of a map's spatial dims (two at least for a 2-D or 3-D map);
        an upsampled factor may keep regions of 4 or more positions a side (gather-excite)."""
        r = len(x)
        if f[0] not in (1, x[0]):
            return None
        pooled, kept = [], []
        for d in range(1, r):
            if f[d] == x[d] and x[d] > 1:
                kept.append(d)
            elif f[d] == 1 or (upsampled and 4 * f[d] <= x[d]):
                # regions of 4 or more a side, upsampled back: gather-excite; a finer map (GhostNetV2's
                # DFC attention at half size) is spatial attention
                pooled.append(d)
            else:
                return None
        if not kept or not pooled or math.prod(x[d] for d in pooled) <= math.prod(f[d] for d in pooled):
            return None
        run = pooled == list(range(r - len(pooled), r)) or pooled == list(range(1, 1 + len(pooled)))
        return tuple(pooled) if run and len(pooled) >= (2 if r >= 4 else 1) else None

    def _pool_input(self, p: fx.Node) -> fx.Node | None:
        tensors = [a for a in p.all_input_nodes if _shape(a) is not None]
        return max(tensors, key=lambda a: _numel(_shape(a))) if tensors else None

    def _pool_output(self, p: fx.Node) -> tuple[int, ...] | None:
        shape = _shape(p)
        if shape is None:  # x.max(dim): a (values, indices) pair
            shape = next((_shape(u) for u in p.users if _shape(u) is not None), None)
        return shape

    def check(self, product: fx.Node, x: fx.Node, f: fx.Node) -> Gate | None:
        sx = _shape(x)
        if sx is None or not 3 <= len(sx) <= 5 or not isinstance(f, fx.Node):
            return None
        chain, gate, upsampled = self.factor_chain(f)
        if gate is None:
            return None  # test 2: no gate (a norm's rsqrt, a layer scale, a GLU's full-size factor)
        shapes = [(_numel(s), i, s) for i, n in enumerate(chain) if (s := _shape(n)) is not None]
        if not shapes:
            return None
        fshape = min(shapes)[2]
        if len(fshape) > len(sx):
            return None
        fshape = (1,) * (len(sx) - len(fshape)) + tuple(fshape)
        pooled = self._pooled_dims(sx, fshape, upsampled)
        if pooled is None:
            return None  # test 1: not per channel (a spatial attention map, a per-position gate)
        if len(sx) == 3 and pooled != ((2,) if self._conv_made(x) else (1,)):
            return None  # a rank-3 tensor is (N, L, C) tokens unless a conv made it (N, C, L): a weight per token is no channel gate
        need = math.prod(sx[d] for d in pooled) // math.prod(fshape[d] for d in pooled)
        x_from = self.ancestors(x)
        for p in sorted(self.ancestors(chain[-1]) | set(chain), key=self.order.__getitem__):
            if not self.is_pool(p):
                continue
            i, out = self._pool_input(p), self._pool_output(p)
            if i is None or out is None or _numel(_shape(i)) < need * _numel(out):
                continue
            if x not in self.ancestors(i) and i not in x_from:
                continue  # test 3: pools something else than x's branch (a FiLM-style condition)
            factor = (self.ancestors(f) - self.ancestors(i)) | {p}
            modules = tuple(self._qualified(n.target) for n in self.nodes
                            if n in factor and n.op == "call_module" and n is not product)
            return Gate(owner=self.path, node=product.name, x=x.name, pool=_name(p, self.submodule(p)), gate=gate,
                        modules=modules, on_input=self._is_input(x))
        return None

    def _conv_made(self, x: fx.Node) -> bool:
        """The nearest learned layer upstream of ``x`` is a convolution (a 1-D map ``(N, C, L)``), not a
        linear layer (tokens ``(N, L, C)``), as :mod:`se_inject.sites` reads rank-3 tensors."""
        seen, stack = set(), [x]
        while stack:
            cur = stack.pop(0)
            if cur in seen:
                continue
            seen.add(cur)
            m = self.submodule(cur)
            if m is not None and ops.learned_layers(m):
                return isinstance(ops.learned_layers(m)[-1], ConvNd)
            if cur.op == "call_function" and cur.target in (*ops.CONV_FUNCTIONS, torch.nn.functional.linear):
                return cur.target in ops.CONV_FUNCTIONS
            stack.extend(cur.all_input_nodes)
        return False

    def _is_input(self, x: fx.Node) -> bool:
        while x.op != "placeholder":
            kind, prev = self._step(x)
            if kind not in ("view", "transparent"):
                return False
            x = prev
        return True

    def read(self) -> GraphGates:
        found = GraphGates()
        for n in self.nodes:
            if not self.is_product(n):
                continue
            a, b = n.args[:2]
            gate = self.check(n, a, b) or self.check(n, b, a)
            if gate is None:
                continue
            x = a if gate.x == a.name else b
            found.gates.append(gate)
            found.products[n] = x
            found.factor |= (self.ancestors(n) - self.ancestors(x)) - {n}
        out = next((n for n in self.nodes if n.op == "output"), None)
        end = out.args[0] if out is not None and out.args else None
        while isinstance(end, fx.Node) and end not in found.products:
            kind, prev = self._step(end)
            end = prev if kind in ("view", "transparent") else None
        found.output_gated = isinstance(end, fx.Node) and self._is_input(found.products[end])
        return found
