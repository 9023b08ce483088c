"""Stage 2: find where an SE block can go, with networkx over each owner's traced graph.

Site kinds (paper §3.3):

- ``residual``: an add joining a shortcut and a branch with learned compute (conv/linear). The
  fork is the add's immediate dominator; the shortcut is the identity or the cheaper projection
  path. SE goes on the branch output, before the add (paper Fig. 3).
- ``multibranch``: an add of two or more equally deep learned branches (RepVGG-style train-time
  branches, ``conv_kxk(x) + conv_1x1(x) + bn(x)``): SE after the sum, so the branches can still be
  re-parameterised into one conv.
- ``inception``: a channel concat of parallel learned branches forking from one point (paper
  Fig. 2): SE after the concat. A concat on a residual branch (Inception-ResNet) is covered by
  that branch's residual site.
- ``split``: a channel-split unit (ShuffleNetV2): part of the input's channels carried as they
  are, the rest through a learned branch, concatenated back to the input's width: SE on the
  unit's output, after the concat (before ShuffleNet's channel shuffle). A split whose branch
  holds blocks with sites of their own (a CSPNet stage) is covered by those.
- ``concat``: a DenseNet-style concat that carries its input forward beside new features: the
  output of a dense block (gated when a net has no site of the kinds above).
- ``conv``: the end of a conv -> (norm) -> activation unit, for plain nets such as VGG.

Feature maps of 1 to 3 spatial dims count alike (``(N, C, L)``, ``(N, C, H, W)``, ``(N, C, T, H, W)``).
A site's ``stage`` is ``log2`` of the input's height over the map's (the paper's ``SE_<stage>_<block>``);
where a backbone trades stride for dilation (DeepLab's dilated ResNet), a run of residual blocks
whose branches are dilated by ``d`` counts ``log2(d)`` stages further, as the undilated net would.

    >>> import timm
    >>> from se_inject.tracing import trace_model
    >>> sites = find_sites(trace_model(timm.create_model("resnet50")))
    >>> s = next(s for s in sites if s.kind == "residual")
    >>> s.path, s.node, s.channels, s.stage, s.fuse, s.detail
    ('layer1.0', 'bn3', 256, 2, 'add', 'shortcut: downsample')
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from . import operators as ops
from .block import SqueezeExcite
from .codes import Code
from .gated_layer import gates_own_output
from .gates import GateIndex
from .graph_facts import GraphFacts
from .tracing import TracedModel, is_mode_dependent

__all__ = ["Site", "find_sites", "KINDS"]

#: every site kind, in the order a plan lists them.
KINDS = ("residual", "multibranch", "inception", "split", "concat", "conv")
#: why a join of attention tensors is not a site (``SiteFinder._attention_product``)
ATTENTION_REASON = "an attention tensor (B, heads, N, d) from a matrix product: dim 1 counts heads, not channels"


@dataclass(frozen=True)
class Site:
    """A place where an SE block can go: after node ``node`` of the module at ``path``.

    ``status`` is :attr:`Code.OK <se_inject.codes.Code.OK>` or why no SE can go here whatever the
    policy (``ALREADY_GATED``, ``UNSUPPORTED_LAYOUT``, ...), ``reason`` the same for a person; a
    policy then picks among the ``OK`` ones.
    """
    path: str                 # qualified name of the owner module ('' = the model itself)
    kind: str
    node: str                 # fx node in the owner's graph whose output the SE gates
    channels: int
    layout: str | None        # nchw (channels first) | nhwc (channels last) | nlc (tokens), None if unsupported
    spatial: tuple[int, ...]  # (L,), (H, W) or (T, H, W); (tokens,) for nlc
    stage: int | None         # log2 of the model input's height over this map's: paper's SE_<stage>_<block>
    order: tuple[int, int]    # (owner call order, node index): execution order
    status: Code = Code.OK
    reason: str = ""          # the status for people ("" when OK)
    fuse: str | None = None   # the add node the SE can absorb (shortcut + x * gate in one op)
    detail: str = ""
    covered_by: str | None = None  # a concat on a residual branch: that branch's SE input node
    dilation: int = 1         # a residual branch's smallest conv dilation (dilated backbones' stages)

    @property
    def where(self) -> str:
        return f"{self.path or '<model>'}:{self.node}"


class _Finder:
    """Runs the per-kind detectors over one owner and turns hits into :class:`Site` records."""

    def __init__(self, owner: GraphFacts, traced: TracedModel) -> None:
        self.o, self.traced = owner, traced
        self.sites: list[Site] = []
        self.covered: dict[fx.Node, str] = {}  # node on a residual branch -> that site's SE input
        self.branch_modules: dict[Site, set[str]] = {}  # split site -> modules its learned branch runs
        self._mode_checked: bool | None = None

    # ---- layout and site construction
    def _out_channels(self, n: fx.Node, shape: tuple[int, ...] = ()) -> tuple[int | None, bool]:
        """Output width of the nearest learned node upstream of ``n`` and whether it is a Linear
        (channels last) rather than a conv (channels first).

        Inside a module called as a leaf the graph does not say which layer ran last; registration
        order stands in for it, but a layer whose width is neither end dim of ``shape`` cannot have
        made the tensor (torchvision's ``ShiftedWindowAttentionV2`` registers its position MLP,
        ``Linear(512, heads)``, after the output projection), so the last registered layer of a
        fitting width is taken, and the last one only when none fits."""
        seen = set()
        stack = [n]
        while stack:
            cur = stack.pop()
            if cur in seen or not isinstance(cur, fx.Node):
                continue
            seen.add(cur)
            m = self.o.submodule(cur)
            if m is not None:
                leaves = ops.learned_layers(m)
                if leaves:
                    widths = [(leaf, next(p for p in leaf.parameters(recurse=False) if p.dim() >= 2))
                              for leaf in leaves]
                    fits = [lw for lw in widths if shape and int(lw[1].shape[0]) in (shape[1], shape[-1])]
                    last, w = (fits or widths)[-1]
                    return int(w.shape[0]), isinstance(last, nn.Linear) or w.dim() == 2
            elif cur.op == "call_function" and cur.target in (*ops.CONV_FUNCTIONS, F.linear):
                w = cur.args[1] if len(cur.args) > 1 else None
                ws = self.o.shape(w)
                if ws:
                    return int(ws[0]), cur.target is F.linear
            stack.extend(cur.all_input_nodes)
        return None, False

    def _layout(self, n: fx.Node, shape: tuple[int, ...], channel_dim: int | None = None
                ) -> tuple[str | None, int, tuple[int, ...], str]:
        """(layout, channels, spatial, reason) of the tensor produced by ``n``.

        Maps of rank 4 and 5 are channels-first (``nchw``: ``(N, C, H, W)``, ``(N, C, T, H, W)``)
        unless the nearest learned layer is a Linear whose width is the last dim (ConvNeXt/Swin blocks
        in channels-last: ``nhwc``). A rank-3 tensor is a 1-D map ``(N, C, L)`` only on positive
        evidence, a conv whose width is dim 1 (a Conv1d); anything else of rank 3 is a token sequence
        ``(N, L, C)`` (``nlc``, off by default): reading tokens as channels would gate the sequence
        positions (CoaT's ``(1, 3137, 128)`` as 3137 "channels").
        """
        rank = len(shape)
        if channel_dim is None and 3 <= rank <= 5:
            width, linear = self._out_channels(n, shape)
            if rank == 3:
                conv1d = not linear and width is not None and shape[1] == width
                channel_dim = 1 if conv1d else -1
            else:
                channel_dim = -1 if (linear and shape[-1] == width) else 1
        if not 3 <= rank <= 5:
            return None, shape[-1] if shape else 0, (), f"a rank-{rank} tensor has no spatial or token axis to squeeze"
        if channel_dim in (1, 1 - rank):
            return "nchw", shape[1], tuple(shape[2:]), ""
        if channel_dim not in (-1, rank - 1):
            return None, shape[channel_dim], (), f"channels on dim {channel_dim} of {shape}: neither first nor last"
        if rank == 3:
            return "nlc", shape[-1], (shape[1],), ""
        return "nhwc", shape[-1], tuple(shape[1:-1]), ""

    def _attention_product(self, n: fx.Node) -> bool:
        """``n``, followed back through nodes of its own shape that learn nothing (a scale, a bias,
        dropout, an activation), is a matrix product: an attention tensor ``(B, heads, N, d)``, whose
        dim 1 counts heads, not channels. CoaT adds its factorised attention to a conv position
        encoding of that shape; a map reshaped from attention (EfficientFormerV2) or convolved after
        it (non-local blocks) is not one: the walk stops at the reshape or the conv."""
        shape = self.o.shape(n)
        seen: set[fx.Node] = set()
        stack = [n]
        while stack:
            cur = stack.pop()
            if not isinstance(cur, fx.Node) or cur in seen or self.o.shape(cur) != shape:
                continue
            seen.add(cur)
            if self.o.is_matrix_product(cur):
                return True
            if not self.o.convs(cur):  # nothing learned: follow it back
                stack.extend(cur.all_input_nodes)
        return False

    def _stage(self, layout: str | None, spatial: tuple[int, ...]) -> int | None:
        if layout not in ("nchw", "nhwc") or not spatial or min(spatial) <= 0:
            return None
        # the height (the length of a 1-D map): a video's frames may be strided on their own
        inp = self.traced.input_size[1:] or spatial
        height = spatial[-2] if len(spatial) > 1 else spatial[-1]
        h_in = inp[-2] if len(inp) > 1 else inp[-1]
        return max(0, round(math.log2(h_in / height)))

    def add_site(self, kind: str, n: fx.Node, *, fuse: fx.Node | None = None, gated: bool = False,
                 detail: str = "", channel_dim: int | None = None, covered_by: str | None = None,
                 dilation: int = 1, not_a_map: str = "") -> Site | None:
        shape = self.o.shape(n)
        if shape is None:
            return None
        layout, channels, spatial, why = self._layout(n, shape, channel_dim)
        if not_a_map:
            layout, spatial, why = None, (), not_a_map
        held = self.o.submodule(n)
        gated = gated or (held is not None and gates_own_output(held))  # a block inside the layer (holders)
        status, reason = (Code.ALREADY_GATED, Code.ALREADY_GATED.message) if gated else (Code.OK, "")
        if status is Code.OK and layout is None:
            status, reason = Code.UNSUPPORTED_LAYOUT, f"unsupported layout: {why}"
        if status is Code.OK and layout in ("nchw", "nhwc") and spatial and math.prod(spatial) == 1:
            status, reason = Code.NOTHING_TO_SQUEEZE, Code.NOTHING_TO_SQUEEZE.message
        if status is Code.OK and not self.o.mg.path:
            status, reason = Code.MODEL_FORWARD, Code.MODEL_FORWARD.message
        if status is Code.OK and self._mode_dependent():
            status, reason = Code.MODE_DEPENDENT, f"{type(self.o.mg.module).__name__}.{Code.MODE_DEPENDENT.message}"
        site = Site(
            path=self.o.mg.path, kind=kind, node=n.name, channels=int(channels), layout=layout,
            spatial=tuple(int(s) for s in spatial), stage=self._stage(layout, spatial),
            order=(self.o.mg.call.order, self.o.index[n]), status=status, reason=reason,
            fuse=fuse.name if fuse is not None else None, detail=detail, covered_by=covered_by, dilation=dilation)
        self.sites.append(site)
        return site

    def _mode_dependent(self) -> bool:
        if self._mode_checked is None:
            try:
                self._mode_checked = is_mode_dependent(self.o.mg)
            except Exception:
                self._mode_checked = True
        return self._mode_checked

    # ---- detectors
    def _terms(self, add: fx.Node) -> list[fx.Node]:
        """Operands of an add chain ``a + b + c`` (through drop-path), as the add sees them."""
        terms: list[fx.Node] = []
        for a in add.args[:2]:
            if not isinstance(a, fx.Node):
                continue
            inner = self.o.skip_back(a)
            if (self.o.is_add(inner) and len(inner.users) == 1 and self.o.shape(inner) == self.o.shape(add)
                    and not self._is_chain_member(add)):
                terms += self._terms(inner)
            else:
                terms.append(a)
        return terms

    def _is_chain_member(self, add: fx.Node) -> bool:
        """An add whose only consumer (through drop-path) is another add of the same shape."""
        end = self.o.skip_forward(add)
        user = self.o.single_user(end)
        return (user is not None and self.o.is_add(user) and len(add.users) == 1
                and self.o.shape(user) == self.o.shape(add))

    def residuals(self) -> None:
        o = self.o
        for n in o.mg.graph.nodes:
            if not o.is_add(n) or self._is_chain_member(n) or o.in_gate(n):
                continue
            terms = self._terms(n)
            shape = o.shape(n)
            if len(terms) < 2 or any(o.shape(t) != shape for t in terms) or not all(o.data_fed(t) for t in terms):
                continue  # x + pos_embed, a broadcast bias, a scalar: not a residual join
            fork = o.idom[n]
            depths = o.own_depths(fork, terms)
            deepest = max(depths)
            if deepest == 0:
                continue
            attention = len(shape) >= 4 and any(self._attention_product(t) for t in terms)
            not_a_map = ATTENTION_REASON if attention else ""
            tops = [t for t, d in zip(terms, depths) if d == deepest]
            if len(tops) == 1:
                branch = tops[0]
                core = o.skip_back(branch)
                region = o.region(fork, branch)
                self.covered.update(dict.fromkeys(region, core.name))
                direct = (len(terms) == 2 and n.op == "call_function" and n.args[0] in terms and n.args[1] in terms
                          and all(o.is_identity(t) for t in o.tail(core, branch)))
                shortcut = [t for t in terms if t is not branch]
                gated = any(o.holds_gate(r) for r in region) or o.branch_gated_upstream(region, shortcut)
                detail = "shortcut: " + ", ".join("identity" if t is fork or o.depth(fork, t) == 0 else t.name for t in shortcut)
                self.add_site("residual", core, fuse=n if direct else None,
                              gated=gated, detail=detail, dilation=o.dilation(region), not_a_map=not_a_map)
            else:
                for t in terms:
                    self.covered.update(dict.fromkeys(o.region(fork, t), n.name))
                gated = o.gates_output(n)
                self.add_site("multibranch", n, gated=gated,
                              detail=f"{len(terms)} terms, {len(tops)} learned branches", not_a_map=not_a_map)
        # our own fused SE (se(x, shortcut)) replaced an add: report it as gated, do not add again
        for n in o.mg.graph.nodes:
            m = o.submodule(n)
            if isinstance(m, SqueezeExcite) and len(n.args) + len(n.kwargs) >= 2:
                x = n.args[0]
                if isinstance(x, fx.Node):
                    self.add_site("residual", x, gated=True, detail=f"by {n.target}")

    def concats(self) -> None:
        o = self.o
        for n in o.mg.graph.nodes:
            if not (n.op == "call_function" and n.target in ops.CAT_FUNCTIONS) or o.in_gate(n):
                continue
            shape = o.shape(n)
            dim = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else 0)
            inputs = n.args[0] if n.args else n.kwargs.get("tensors")
            if shape is None or not isinstance(inputs, (list, tuple)) or len(inputs) < 2 or not isinstance(dim, int):
                continue
            rank = len(shape)
            if rank == 3 and dim in (1, -2):
                continue  # a concat of token sequences (a class token): not channels
            if not 3 <= rank <= 5 or dim not in (1, 1 - rank, -1, rank - 1):
                continue  # not the channel axis of a map
            user = o.single_user(n)
            if user is not None and user.op == "call_function" and user.target in ops.CAT_FUNCTIONS:
                continue  # an inner concat (InceptionE's 3x3 pair): the outer one is the module's
            inputs = [i for i in inputs if isinstance(i, fx.Node)]
            fork = o.idom[n]
            depths = [o.depth(fork, i) for i in inputs]
            carried = any(d == 0 and o.is_carried(fork, i) for i, d in zip(inputs, depths))
            learned = sum(d > 0 for d in depths)
            parallel = sum(d > 0 for d in o.own_depths(fork, inputs))
            gated = o.gates_output(n)
            covered_by = self.covered.get(n)  # on a residual branch (Inception-ResNet): that site may gate it
            if carried and learned >= 1:
                # a unit that carries part of its input and whose learned part holds a gate is gated: a
                # CSPNet stage of SE blocks, an RDNet dense stage of ESE blocks
                gated = gated or any(o.holds_gate(r) for i, d in zip(inputs, depths) if d > 0 for r in o.region(fork, i))
            if carried and learned >= 1 and self._splits(fork, n, inputs):
                site = self.add_site("split", n, gated=gated, detail=f"{len(inputs)} parts, {learned} learned",
                                     channel_dim=dim, covered_by=covered_by)
                if site is not None:
                    self.branch_modules[site] = {
                        f"{o.mg.path}.{r.target}" if o.mg.path else r.target
                        for i, d in zip(inputs, depths) if d > 0 for r in o.region(fork, i) if r.op == "call_module"}
            elif carried and learned >= 1:
                # a dense block's output is gated too when a gate follows its aggregation conv (VoVNet's ESE)
                gated = gated or o.gates_output(n, learned=1)
                self.add_site("concat", n, gated=gated, detail=f"{len(inputs)} inputs, input carried forward",
                              channel_dim=dim, covered_by=covered_by)
            elif parallel >= 2:
                self.add_site("inception", n, gated=gated, detail=f"{len(inputs)} branches, {parallel} learned",
                              channel_dim=dim, covered_by=covered_by)

    def _splits(self, fork: object, n: fx.Node, inputs: list[fx.Node]) -> bool:
        """A channel split: the carried parts are slices of the fork and the concat gives back the
        fork's width (ShuffleNetV2, CSPNet), not a dense block's growing one."""
        sliced = any(any(self.o.is_slice(r) for r in self.o.region(fork, i)) for i in inputs)
        whole = fork
        while isinstance(whole, fx.Node) and self.o.is_slice(whole) and whole.all_input_nodes:
            whole = whole.all_input_nodes[0]  # x.chunk(2, 1) forks: its input is the unit's
        return sliced and isinstance(whole, fx.Node) and self.o.shape(whole) == self.o.shape(n)

    def convs(self) -> None:
        o = self.o
        for n in o.mg.graph.nodes:
            if not o.is_act(n) or not n.all_input_nodes or o.in_gate(n):
                continue
            prev = n.args[0] if n.args and isinstance(n.args[0], fx.Node) else n.all_input_nodes[0]
            m = o.submodule(n)
            fused_norm_act = m is not None and ops.is_norm_act(m)
            steps, norms = 0, int(fused_norm_act)
            while not o.is_conv(prev) and steps < 3:
                if o.is_norm(prev):
                    norms += 1
                elif not o.is_transparent(prev):
                    break
                if len(prev.users) != 1 or o.through(prev) is None:
                    break
                prev = o.through(prev)
                steps += 1
            if not o.is_conv(prev) or norms > 1 or len(prev.users) != 1:
                continue
            end = o.skip_forward(n)
            gated = o.gates_output(end)
            self.add_site("conv", end, gated=gated,
                          detail=f"{prev.name} -> {n.name}")


def find_sites(traced: TracedModel) -> list[Site]:
    """Every candidate site of every kind, in execution order (policy-free)."""
    sites: list[Site] = []
    branches: dict[Site, set[str]] = {}
    gates = GateIndex.of(traced)
    for mg in traced.owners():
        if gates.inside(mg.path):
            continue  # the inside of an existing gate (EfficientNet's SE convs) is no place for another
        finder = _Finder(GraphFacts(mg, gates), traced)
        finder.residuals()
        finder.concats()
        finder.convs()
        sites += finder.sites
        branches.update(finder.branch_modules)
    sites.sort(key=lambda s: s.order)
    return _dilated_stages(_cover_splits(sites, branches))


def _cover_splits(sites: list[Site], branches: dict[Site, set[str]]) -> list[Site]:
    """A split whose learned branch runs modules that own sites of their own (CSPNet: a stage of
    residual blocks between split and concat) is covered by those, as a concat on a residual branch is."""
    inner = [s for s in sites if s.kind in ("residual", "multibranch", "inception") and s.status is Code.OK]
    out = []
    for site in sites:
        modules = branches.get(site)
        if modules and site.covered_by is None:
            covering = next((s for s in inner if any(s.path == m or s.path.startswith(f"{m}.") for m in modules)), None)
            if covering is not None:
                site = dataclasses.replace(site, covered_by=covering.where)
        out.append(site)
    return out


def _dilated_stages(sites: list[Site]) -> list[Site]:
    """Stages that follow a dilated backbone's (DeepLab): each run of residual sites of one width
    and map size counts ``log2`` of its largest branch dilation as stages (an undilated net
    would have strided there). Nets without dilated branches are unchanged."""
    if all(s.dilation == 1 for s in sites):
        return sites
    out = list(sites)
    run: list[int] = []

    def close() -> None:
        extra = round(math.log2(max(out[i].dilation for i in run))) if run else 0
        for i in run:
            if extra and out[i].stage is not None:
                out[i] = dataclasses.replace(out[i], stage=out[i].stage + extra)
        run.clear()

    for i, s in enumerate(sites):
        if s.kind != "residual":
            continue
        if run and (sites[run[-1]].channels, sites[run[-1]].spatial) != (s.channels, s.spatial):
            close()
        run.append(i)
    close()
    return out
