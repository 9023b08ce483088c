"""What the nodes of one owner's graph are, and how they relate: the facts site detection reads.

:class:`GraphFacts`, the networkx view of an owner's fx graph with its dominators, branch regions and
learned-layer depths; what each node is comes from :mod:`se_inject.operators`. (The rewritten
module that runs a graph is another thing: :mod:`se_inject.graph_module`.)

    >>> import timm
    >>> from se_inject.tracing import trace_model
    >>> g = GraphFacts(trace_model(timm.create_model("resnet18")).graphs["layer2.0"])
    >>> add = next(n for n in g.mg.graph.nodes if g.is_add(n))
    >>> fork = g.idom[add]
    >>> fork.name, [g.depth(fork, t) for t in add.args]
    ('x', [2, 1])
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import networkx as nx
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from . import operators as ops
from .gates import GateIndex, GraphGates
from .tracing import ModuleGraph

__all__ = ["GraphFacts"]


@dataclass
class GraphFacts:
    """networkx view of one owner's graph, its dominator tree, and what each node is.

    A virtual root feeds every node without inputs (placeholders, constants), so that the immediate
    dominator of an add is its fork: the last node every path to it goes through. ``gates`` finds the
    channel gates (:mod:`se_inject.gates`) of this graph and of the modules it calls; by default, from
    this graph alone (its children traced on demand).
    """
    mg: ModuleGraph
    gates: GateIndex | None = None
    dag: nx.DiGraph = field(init=False)
    idom: dict[fx.Node | str, fx.Node | str] = field(init=False)
    index: dict[fx.Node, int] = field(init=False)

    ROOT = "<root>"

    def __post_init__(self) -> None:
        g = nx.DiGraph()
        nodes = list(self.mg.graph.nodes)
        self.index = {n: i for i, n in enumerate(nodes)}
        g.add_node(self.ROOT)
        for n in nodes:
            g.add_node(n)
            inputs = n.all_input_nodes
            if not inputs:
                g.add_edge(self.ROOT, n)
            for i in inputs:
                g.add_edge(i, n)
        self.dag = g
        self.idom = nx.immediate_dominators(g, self.ROOT)
        if self.gates is None:
            self.gates = GateIndex.of_graph(self.mg)
        self.own_gates: GraphGates = self.gates.in_graph(self.mg)
        self._placeholder_fed: set[fx.Node] = set()
        for n in nodes:  # nodes computed from the module's inputs (not from constants alone)
            if n.op == "placeholder" or any(i in self._placeholder_fed for i in n.all_input_nodes):
                self._placeholder_fed.add(n)

    # ---- facts about nodes
    def submodule(self, n: fx.Node) -> nn.Module | None:
        if n.op != "call_module":
            return None
        return self.mg.module.get_submodule(n.target)

    def convs(self, n: fx.Node) -> int:
        """Learned layers (weights of 2+ dims) the node runs: its depth in conv/linear units."""
        m = self.submodule(n)
        if m is not None:
            return len(ops.learned_layers(m))
        return int(n.op == "call_function" and n.target in ops.LEARNED_FUNCTIONS)

    def is_gate(self, n: fx.Node) -> bool:
        """The node runs a module that gates the map it is given (SE, ECA, CBAM, ...: :mod:`se_inject.gates`)."""
        m = self.submodule(n)
        return m is not None and self.gates.gates_input(m, n)

    def holds_gate(self, n: fx.Node) -> bool:
        """The node is a gate's product in this graph, or runs a module that gates channels somewhere
        inside (torchvision keeps its SE inside a ``Sequential``: MBConv's ``block``, RegNet's ``f``)."""
        if n in self.own_gates.products:
            return True
        m = self.submodule(n)
        return m is not None and self.gates.holds(m, n)

    def gates_output(self, n: fx.Node, learned: int = 0) -> bool:
        """What ``n`` computes is gated next: it (or a view of it, past drop-path) is the map a gate
        multiplies, or goes straight into a module that gates its input, here or, where it is this
        module's output, in the caller's graph (:meth:`GateIndex.gated_next`); ``learned`` layers may
        come between."""
        return self.gates.gated_next(self.mg, n, learned=learned)

    def branch_gated_upstream(self, region: "set[fx.Node]", shortcut: list[fx.Node]) -> bool:
        """A branch fed by an input of its own (the fork is in the caller) is gated in the caller."""
        own = {r for r in region if r.op == "placeholder"}
        shared = {a for t in shortcut for a in nx.ancestors(self.dag, t) | {t} if isinstance(a, fx.Node) and a.op == "placeholder"}
        if not own or own & shared:
            return False  # the branch starts from the shortcut's input here (another input is a side one: GC ViT's global query)
        return self.gates.gated_upstream(self.mg, [p.target for p in own - shared], [p.target for p in shared])

    def in_gate(self, n: fx.Node) -> bool:
        """``n`` computes a gate's factor (its pooling, bottleneck, gate): no site there."""
        return n in self.own_gates.factor



    def dilation(self, nodes: "set[fx.Node]") -> int:
        """The smallest dilation of the spatial convs the ``nodes`` run (1 when none is dilated)."""
        found = [d for n in nodes if (m := self.submodule(n)) is not None and (d := ops.conv_dilation(m)) is not None]
        return min(found) if found else 1

    def is_transparent(self, n: fx.Node) -> bool:
        m = self.submodule(n)
        if m is not None:
            return ops.is_transparent(m)
        if n.op == "call_function" and n.target in ops.TRANSPARENT_FUNCTIONS:
            return True
        if n.op == "call_function" and getattr(n.target, "__name__", "") == "drop_path":
            return True
        # multiplication by a scalar (NFNet's alpha, Inception-ResNet's scale), either side
        if (n.op == "call_function" and n.target in (operator.mul, torch.mul)) or (n.op == "call_method" and n.target == "mul"):
            return len(n.args) == 2 and any(self._is_scalar(a) for a in n.args) and self.through(n) is not None
        return False

    def through(self, n: fx.Node) -> fx.Node | None:
        """The tensor input a one-input op (or a scalar multiplication) passes on."""
        if len(n.args) == 2 and n.target in (operator.mul, torch.mul, "mul"):
            tensors = [a for a in n.args if isinstance(a, fx.Node) and not self._is_scalar(a)]
            return tensors[0] if len(tensors) == 1 else None
        if n.args and isinstance(n.args[0], fx.Node):
            return n.args[0]
        return n.all_input_nodes[0] if n.all_input_nodes else None

    def _is_scalar(self, a: object) -> bool:
        if isinstance(a, (int, float)):
            return True
        if isinstance(a, fx.Node):
            shape = a.meta.get("shape")
            return shape is not None and math.prod(shape) == 1
        return False

    def is_identity(self, n: fx.Node) -> bool:
        """An op that returns its input unchanged in every mode (``nn.Identity``, ``DropPath(0.)``)."""
        m = self.submodule(n)
        if m is None:
            return False
        if isinstance(m, nn.Identity):
            return True
        rate = getattr(m, "drop_prob", getattr(m, "p", None))
        return ops.is_transparent(m) and rate == 0

    def is_carried(self, fork: object, n: fx.Node) -> bool:
        """``n`` is the fork's tensor itself or a slice of it (DenseNet, DPN, ShuffleNetV2's channel
        split): no pooling, no maths."""
        region = self.region(fork, n)
        return all(r.op == "placeholder" or self.is_slice(r) or self.is_identity(r) for r in region)

    def is_slice(self, n: fx.Node) -> bool:
        """``x[i]``, ``x.chunk(2, 1)``, ``torch.split(x, c, 1)``: a part of a tensor, nothing computed."""
        return ((n.op == "call_function" and n.target in ops.SPLIT_FUNCTIONS)
                or (n.op == "call_method" and n.target in ops.SPLIT_METHODS))

    def is_add(self, n: fx.Node) -> bool:
        if n.op == "call_function" and n.target in ops.ADD_FUNCTIONS:
            return "alpha" not in n.kwargs
        return n.op == "call_method" and n.target in ops.ADD_METHODS and "alpha" not in n.kwargs

    def is_act(self, n: fx.Node) -> bool:
        """An activation, or a norm + activation module (timm's ``BatchNormAct2d``)."""
        m = self.submodule(n)
        if m is not None:
            return ops.is_act(m) or ops.is_norm_act(m)
        if n.op == "call_function":
            return n.target in ops.ACT_FUNCTIONS
        return n.op == "call_method" and n.target in ops.ACT_METHODS

    def is_matrix_product(self, n: fx.Node) -> bool:
        """``matmul``, ``@``, ``bmm``, ``einsum`` or SDPA: of rank 4, an attention tensor."""
        if n.op == "call_function":
            return n.target in ops.MATRIX_PRODUCT_FUNCTIONS
        return n.op == "call_method" and n.target in ops.MATRIX_PRODUCT_METHODS

    def is_norm(self, n: fx.Node) -> bool:
        m = self.submodule(n)
        if m is not None:
            return ops.is_norm(m)
        return n.op == "call_function" and n.target in (F.batch_norm, F.group_norm, F.layer_norm)

    def is_conv(self, n: fx.Node) -> bool:
        m = self.submodule(n)
        if m is not None:
            return ops.is_conv(m)
        return n.op == "call_function" and n.target in ops.CONV_FUNCTIONS

    def shape(self, n: object) -> tuple[int, ...] | None:
        return n.meta.get("shape") if isinstance(n, fx.Node) else None

    def data_fed(self, n: fx.Node) -> bool:
        return n in self._placeholder_fed

    def single_user(self, n: fx.Node) -> fx.Node | None:
        users = list(n.users)
        return users[0] if len(users) == 1 else None

    # ---- regions
    def region(self, fork: object, end: fx.Node) -> set[fx.Node]:
        """Nodes on some path fork -> end (end included, fork excluded)."""
        down = nx.descendants(self.dag, fork)
        up = nx.ancestors(self.dag, end)
        return {n for n in (down & up) if isinstance(n, fx.Node)} | {end}

    def depth(self, fork: object, end: fx.Node, shared: set[fx.Node] = frozenset()) -> int:
        """Most learned layers met on one path fork -> end, not counting the ``shared`` nodes."""
        region = self.region(fork, end)
        best: dict[fx.Node, int] = {}
        for n in sorted(region, key=self.index.__getitem__):
            preds = [best[p] for p in n.all_input_nodes if p in best]
            best[n] = (0 if n in shared else self.convs(n)) + (max(preds) if preds else 0)
        return best.get(end, 0)

    def own_depths(self, fork: object, ends: list[fx.Node]) -> list[int]:
        """Each branch's depth in learned layers of its own: compute that two branches share (the
        qkv projection feeding both terms of a rotary embedding) makes them no parallel branches."""
        regions = [self.region(fork, e) for e in ends]
        out = []
        for i, e in enumerate(ends):
            shared = set().union(*(r for j, r in enumerate(regions) if j != i)) if len(ends) > 1 else set()
            out.append(self.depth(fork, e, shared))
        return out

    def skip_back(self, n: fx.Node) -> fx.Node:
        """From a branch's output, step back over trailing drop-path / dropout / scalar scaling."""
        while self.is_transparent(n) and n.all_input_nodes:
            prev = self.through(n)
            if prev is None or len(prev.users) != 1:
                break
            n = prev
        return n

    def tail(self, core: fx.Node, end: fx.Node) -> list[fx.Node]:
        """The transparent nodes from ``core`` (excluded) to ``end`` (included)."""
        out = []
        while end is not core:
            out.append(end)
            end = self.through(end)
        return out

    def skip_forward(self, n: fx.Node) -> fx.Node:
        while True:
            user = self.single_user(n)
            if user is None or not self.is_transparent(user):
                return n
            n = user
