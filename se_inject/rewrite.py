"""Stage 4: rewrite the owners of planned sites, keeping the model object, its class and its names.

Each owner (a timm ``Bottleneck``, an ``InceptionA``) is replaced by an
:class:`~se_inject.graph_module.OwnerGraphModule` running its traced graph with the SE blocks
inserted; every original parameter and buffer keeps its name, the new ones are ``<owner>.se.*``.
A block the plan puts inside the layer it gates (a container's child: :mod:`se_inject.holders`)
replaces that layer by a :func:`~se_inject.gated_layer.gate_layer` of it, at the same position, its
block ``<layer>.se``; its owner is then left as it is, or rewritten for its other blocks.
All replacements are built before the first is swapped in, and the rewritten model is checked by a
meta forward: on any failure every swap is undone, so the model is never left half-rewritten.
"""
from __future__ import annotations

import copy
import warnings
from collections import OrderedDict
from collections.abc import Set as AbstractSet

import torch
import torch.fx as fx
from torch import nn

from .block import SqueezeExcite
from .errors import TraceError
from .gated_layer import gate_layer
from .graph_module import OwnerGraphModule
from .operators import fresh_output
from .planner import Placement, Plan
from .preserve import preserved
from .shapes import forward_shapes
from .tracing import ModuleGraph

__all__ = ["rewrite", "BlocksNotRun"]


class BlocksNotRun(UserWarning):
    """``apply``'s check forward (eval mode) ran the rewritten model without some of the SE blocks it inserted
    (the message names them): the model calls those modules through a reference the rewrite cannot see (a
    plain list or attribute holding the original module), or they sit on a branch that runs only in training."""


def _copy_graph(graph: fx.Graph) -> tuple[fx.Graph, dict[str, fx.Node]]:
    new = fx.Graph()
    val_map: dict[fx.Node, fx.Node] = {}
    out = new.graph_copy(graph, val_map)
    new.output(out)
    new._codegen = copy.deepcopy(graph._codegen)
    return new, {n.name: n for n in new.nodes}


def _restore_argument_names(graph: fx.Graph, module: nn.Module) -> None:
    """fx names a specialised argument ``mask_1``; callers pass ``mask=``: give it its name back."""
    if type(graph._codegen) is not fx.graph.CodeGen:
        return  # pytree inputs: the generated signature already uses the original names
    import inspect
    params = inspect.signature(module.forward).parameters
    for n in graph.find_nodes(op="placeholder"):
        base = n.target.rsplit("_", 1)[0]
        if n.target.endswith("_1") and base in params and not any(p.target == base for p in graph.find_nodes(op="placeholder")):
            n.target = base


def _reference_tensor(module: nn.Module) -> torch.Tensor | None:
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            return t
    return None


def _make_block(p: Placement, plan: Plan, owner: nn.Module, like: torch.Tensor | None) -> SqueezeExcite:
    policy = plan.policy
    se = SqueezeExcite(p.site.channels, p.r, reduced=p.reduced, gate=policy.gate, squeeze=policy.squeeze,
                       layout=p.site.layout, init=policy.init, spatial_dims=len(p.site.spatial) or None,
                       kernels=policy.kernels)
    if like is not None:
        se = se.to(device=like.device, dtype=like.dtype)
    se.label = p.label
    return se.train(owner.training)  # an eval-mode model gets eval-mode blocks


def _branch_user(graph_nodes: dict[str, fx.Node], x: fx.Node, add: fx.Node) -> fx.Node:
    """The node right after ``x`` on the way to ``add`` (the first drop-path, or the add itself)."""
    for user in x.users:
        cur = user
        while cur is not add and len(cur.users) == 1:
            cur = next(iter(cur.users))
        if cur is add:
            return user
    return add


def _fresh(owner: nn.Module, x: fx.Node) -> bool:
    """Whether the fused add may overwrite ``x`` in inference: a new tensor that only the SE reads."""
    return x.op == "call_module" and len(x.users) == 1 and fresh_output(owner.get_submodule(x.target))


def _insert(graph: fx.Graph, nodes: dict[str, fx.Node], p: Placement, owner: nn.Module,
            block: SqueezeExcite) -> None:
    x = nodes[p.site.node]
    add = nodes.get(p.site.fuse) if p.site.fuse else None
    if p.fused and add is not None:
        branch = next(a for a in add.args[:2] if isinstance(a, fx.Node) and (a is x or x in _chain(a)))
        shortcut = add.args[1] if add.args[0] is branch else add.args[0]
        with graph.inserting_before(add):
            se_node = graph.call_module(p.name, (x, shortcut))
        act = _only_relu_user(owner, add)
        add.replace_all_uses_with(se_node)
        graph.erase_node(add)
        if act is not None:  # the block applies it: one pass over the map for add and ReLU (issue 11)
            act.replace_all_uses_with(se_node)
            graph.erase_node(act)
            block.post_act = "relu"
        for dead in _chain(branch) if branch is not x else ():  # identity tail (DropPath(0.), Identity)
            if not dead.users and dead is not x:
                graph.erase_node(dead)
        block.reuse_input = _fresh(owner, x)
        return
    with graph.inserting_after(x):
        se_node = graph.call_module(p.name, (x,))
    if p.site.kind == "residual" and add is not None:
        # only the branch's way to the add gets the gated tensor; other users keep x
        _branch_user(nodes, x, add).replace_input_with(x, se_node)
    elif p.site.kind == "residual":
        users = [u for u in x.users if u is not se_node]
        if len(users) != 1:
            raise TraceError(f"{p.site.where}: the residual branch output has {len(users)} users; cannot place SE")
        users[0].replace_input_with(x, se_node)
    else:
        x.replace_all_uses_with(se_node, delete_user_cb=lambda u: u is not se_node)


def _only_relu_user(owner: nn.Module, add: fx.Node) -> fx.Node | None:
    """The ReLU that is the add's only user and reads nothing else (ResNet's ``act3``), if any."""
    if len(add.users) != 1:
        return None
    user = next(iter(add.users))
    if user.all_input_nodes != [add] or any(isinstance(v, fx.Node) for v in user.kwargs.values()):
        return None
    if user.op == "call_module":
        return user if type(owner.get_submodule(user.target)) is nn.ReLU else None
    if user.op == "call_function" and user.target in (torch.relu, torch.relu_, torch.nn.functional.relu):
        return user
    return user if user.op == "call_method" and user.target in ("relu", "relu_") else None


def _chain(n: fx.Node) -> list[fx.Node]:
    """``n`` and the single-input nodes before it (a transparent tail), nearest first."""
    out = [n]
    while n.all_input_nodes and n.op == "call_module" and len(n.all_input_nodes) == 1:
        n = n.all_input_nodes[0]
        out.append(n)
    return out


def _children(owner: nn.Module, blocks: dict[str, SqueezeExcite], after: dict[str, str | None]
              ) -> "OrderedDict[str, nn.Module | None]":
    """The owner's children in their order, each SE right after the child that feeds it (timm's
    ``seresnet`` order: ``bn3``, ``se``, ``act3``); in a container (``nn.Sequential``,
    ``nn.ModuleList``), whose children count by position, after all of them."""
    out: OrderedDict[str, nn.Module | None] = OrderedDict()
    pending = dict(blocks)
    indexed = isinstance(owner, (nn.Sequential, nn.ModuleList))
    for name, child in owner._modules.items():
        if name in pending:
            continue  # a None placeholder (timm's `self.se = None`) is taken by the SE block
        out[name] = child
        for se_name, anchor in after.items():
            if anchor == name and se_name in pending and not indexed:
                out[se_name] = pending.pop(se_name)
    out.update(pending)
    return out


def _build_owner(owner: nn.Module, mg: ModuleGraph, placements: list[Placement], plan: Plan,
                 constants: dict[str, torch.Tensor]) -> nn.Module:
    """The replacement of ``owner`` (the module at ``mg.path`` of the model being rewritten: the one
    planned, or a copy of it) running ``mg``'s graph with the planned blocks inserted."""
    graph, nodes = _copy_graph(mg.graph)
    _restore_argument_names(graph, owner)
    like = _reference_tensor(owner)
    blocks: dict[str, SqueezeExcite] = {}
    after: dict[str, str | None] = {}
    for p in sorted(placements, key=lambda p: p.site.order):
        blocks[p.name] = _make_block(p, plan, owner, like)
        src = nodes[p.site.node]
        after[p.name] = src.target.split(".")[0] if src.op == "call_module" else None
        _insert(graph, nodes, p, owner, blocks[p.name])
    graph.lint()
    return OwnerGraphModule.build(owner, graph, _children(owner, blocks, after), constants)


def _build_gated(model: nn.Module, p: Placement, plan: Plan) -> nn.Module:
    """The layer ``p.holder`` of the owner, running its SE block on its own output (:mod:`se_inject.holders`)."""
    layer = model.get_submodule(p.module_path.rpartition(".")[0])
    like = _reference_tensor(layer)
    if like is None:  # a ReLU: the block takes the device and dtype of the owner's weights
        like = _reference_tensor(model.get_submodule(p.site.path))
    return gate_layer(layer, _make_block(p, plan, layer, like))


def _structure(model: nn.Module) -> list[tuple[str, type]]:
    return [(name, type(m)) for name, m in model.named_modules()]


def rewrite(model: nn.Module, plan: Plan, *, check: bool = True) -> nn.Module:
    """Insert ``plan``'s SE blocks into ``model`` in place and return it.

    ``model`` is the model ``plan`` was made for (:func:`se_inject.plan`) or a copy of it
    (``copy.deepcopy``): the plan's graphs are applied to the modules at the same paths.
    """
    traced = plan.traced
    if traced is None:
        raise TraceError("this plan has no traced graphs (made by hand?); make it with se_inject.plan(model)")
    copied = traced.model is not model
    if copied and _structure(traced.model) != _structure(model):
        raise TraceError("this plan was made for another model (or the model changed since); make the plan "
                         "from the model you rewrite")
    by_owner: dict[str, list[Placement]] = {}
    held: dict[str, Placement] = {}
    for p in plan.placements:
        if p.holder:
            held[p.module_path.rpartition(".")[0]] = p
        else:
            by_owner.setdefault(p.site.path, []).append(p)
    try:
        built = {path: _build_gated(model, p, plan) for path, p in held.items()}
        for path, ps in by_owner.items():
            constants = traced.graphs[path].constants
            if copied:  # a tensor fx made a constant belongs to one rewritten owner, not to two
                constants = {k: v.clone() for k, v in constants.items()}
            built[path] = _build_owner(model.get_submodule(path), traced.graphs[path], ps, plan, constants)
    except TraceError:
        raise
    except Exception as e:
        raise TraceError(f"rewriting failed before any change to the model: {type(e).__name__}: {e}") from e

    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    replaced: dict[int, tuple[nn.Module, nn.Module]] = {}  # id(original) -> (original, rewritten)
    # Shallow owners first: a deeper owner is then set inside its (already rewritten) parent.
    for path in sorted(built, key=lambda p: p.count(".")):
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        original = parent._modules[name]
        swapped.append((parent, name, original))
        parent._modules[name] = built[path]
        replaced[id(original)] = (original, built[path])
    # A module held by several parents (CoaT's cpe/crpe: by the model and by each block that runs
    # them) is planned once, at its first path; every other holder gets the rewritten one too, or
    # those blocks would go on running it without its SE blocks.
    for holder in list(model.modules()):
        for key, child in list(holder._modules.items()):
            pair = replaced.get(id(child))
            if pair is not None and pair[0] is child:
                swapped.append((holder, key, child))
                holder._modules[key] = pair[1]
    if check:
        inserted = {id(m) for owner in built.values() for m in owner.modules() if isinstance(m, SqueezeExcite)}
        try:
            with preserved(model):  # the check's forward leaves no trace (issue 10: cached anchors)
                idle = _check_forward(model.get_submodule(traced.root), plan, inserted)
        except Exception as e:
            for parent, name, original in reversed(swapped):
                parent._modules[name] = original
            raise TraceError(f"the rewritten model fails its forward ({type(e).__name__}: {e}); the model was restored") from e
        if idle:
            shown = ", ".join(idle[:3]) + (f" and {len(idle) - 3} more" if len(idle) > 3 else "")
            warnings.warn(f"se_inject.apply: {len(idle)} of {len(inserted)} SE blocks did not run in the check's "
                          f"forward (eval mode): {shown}; the model may call those modules through a plain list or "
                          "attribute that still holds the originals, or they sit on a branch that runs only in "
                          "training", BlocksNotRun, stacklevel=3)
    return model


def _check_forward(module: nn.Module, plan: Plan, inserted: AbstractSet[int] = frozenset()) -> list[str]:
    """One forward of the rewritten ``module`` (the traced part of the model) on stand-in tensors:
    it runs and its output shapes are unchanged. Returns the paths of the blocks in ``inserted`` (ids)
    that did not run."""
    blocks = {path: m for path, m in module.named_modules() if id(m) in inserted}
    ran: set[int] = set()
    hooks = [m.register_forward_pre_hook(lambda block, args: ran.add(id(block))) for m in blocks.values()]
    try:
        after = forward_shapes(module, plan.input_size, plan.traced.backend)
    finally:
        for hook in hooks:
            hook.remove()
    if plan.traced.output_shapes is not None and after != plan.traced.output_shapes:
        raise TraceError(f"output shapes changed from {plan.traced.output_shapes} to {after}")
    return [path for path, m in blocks.items() if id(m) not in ran]
