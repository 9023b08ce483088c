"""Rebuild recorded SE blocks: :func:`se_inject.apply` with every decision taken from a record.

:func:`replay` traces the model only to find the graph nodes an
:class:`~se_inject.record.Application` names; which owner, which node, which residual add the block
absorbs, r, the bottleneck width, the layout and the gate all come from the record, and the planner is
never called: a later change of placement rules cannot change a saved net. A recorded node that the
rebuilt model's graph does not have (or has with another op, target or width) is an error, never a
reason to place the block elsewhere. The rewrite itself is :func:`se_inject.rewrite.rewrite`'s: every
owner built before the first swap, a checked forward, a full undo on failure.

    >>> import timm, se_inject
    >>> from se_inject.record import applications
    >>> applied = se_inject.apply(timm.create_model("resnet18"), r=8, input_size=(3, 64, 64))
    >>> rebuilt = replay(timm.create_model("resnet18"), applications(applied)[0])
    >>> def blocks(m): return [(n, b.reduced) for n, b in m.named_modules() if isinstance(b, se_inject.SqueezeExcite)]
    >>> blocks(rebuilt) == blocks(applied), blocks(rebuilt)[0]
    (True, ('layer1.0.se', 8))
"""
from __future__ import annotations

import math

from torch import nn

from .accounting import count_params, se_macs, se_params
from .errors import PolicyError, PretrainedError
from .planner import Placement, Plan
from .policy import Policy
from .preserve import preserved
from .record import STRUCTURE, Application, BlockRecord, add_application, block_fields, node_target
from .rewrite import rewrite
from .sites import Site
from .tracing import TracedModel, trace_model

__all__ = ["replay"]


def replay(model: nn.Module, app: Application) -> nn.Module:
    """Insert ``app``'s recorded blocks into ``model`` in place (the plain base, or the model after the
    applications before ``app``) and return it; the application is recorded on it as apply records.
    Raises :class:`PretrainedError` when a recorded site is not in ``model``."""
    with preserved(model):
        traced = trace_model(model, tuple(app.input_size), root=app.root)
    placements = [_placement(traced, b) for b in app.blocks]
    plan = Plan(model_name=type(model).__name__, policy=_block_policy(app), input_size=traced.input_size,
                placements=placements, skipped=[], notes=[], params_before=count_params(model), traced=traced)
    rewrite(model, plan)
    for b in app.blocks:
        block = model.get_submodule(b.module_path)
        built = block_fields(block)
        changed = [k for k in STRUCTURE if built[k] != getattr(b, k)]
        if changed:  # the rewrite decides post_act from the graph: it must decide as it did when saved
            k = changed[0]
            raise PretrainedError(f"recorded SE block {b.module_path}: rebuilt with {k}={built[k]!r}, the record says "
                                  f"{getattr(b, k)!r}")
        block.kernels = b.kernels
    add_application(model, app)
    return model


def _block_policy(app: Application) -> Policy:
    """What the rewrite reads from a policy when it builds a block: gate, squeeze, init (one per apply)."""
    first = app.blocks[0] if app.blocks else None
    if first is None:
        return Policy(source="config.json")
    for b in app.blocks:
        if (b.gate, b.squeeze, b.init) != (first.gate, first.squeeze, first.init):
            raise PretrainedError(f"recorded SE blocks {first.module_path} and {b.module_path} were placed by one apply "
                                  "but differ in gate, squeeze or init: the record was edited")
    try:
        return Policy(gate=first.gate, squeeze=first.squeeze, init=first.init, kernels=first.kernels, source="config.json")
    except PolicyError as e:
        raise PretrainedError(f"recorded SE block {first.module_path}: {str(e).split(': ', 1)[-1]}") from None


def _channels(shape: tuple[int, ...], layout: str) -> tuple[int, tuple[int, ...]]:
    if layout == "nchw":
        return shape[1], tuple(shape[2:])
    if layout == "nlc":
        return shape[-1], (shape[1],)
    return shape[-1], tuple(shape[1:-1])


def _placement(traced: TracedModel, b: BlockRecord) -> Placement:
    """``b`` as a placement in ``traced``: its node found by name and checked, nothing decided."""
    where = f"recorded SE block {b.module_path}"
    mg = traced.graphs.get(b.owner)
    if mg is None or not mg.ok:
        why = ("is not a module with learned children in the rebuilt model" if mg is None
               else f"cannot be traced ({mg.error})")
        raise PretrainedError(f"{where}: its owner {b.owner or '<model>'} {why}: the base model is not the one saved")
    owner = type(mg.module).__name__
    nodes = {n.name: (i, n) for i, n in enumerate(mg.graph.nodes)}
    if b.node not in nodes:
        raise PretrainedError(f"{where}: {b.owner} ({owner}) has no graph node {b.node!r} to gate: the base model is not "
                              "the one saved")
    index, x = nodes[b.node]
    if (x.op, node_target(x)) != (b.node_op, b.node_target):
        raise PretrainedError(f"{where}: node {b.node!r} of {b.owner} ({owner}) is {x.op} {node_target(x)}, the record "
                              f"says {b.node_op} {b.node_target}: the base model is not the one saved")
    if b.fuse is not None and b.fuse not in nodes:
        raise PretrainedError(f"{where}: {b.owner} ({owner}) has no residual add {b.fuse!r}: the base model is not the "
                              "one saved")
    shape = x.meta.get("shape")
    channels, spatial = _channels(shape, b.layout) if isinstance(shape, tuple) and len(shape) >= 3 else (None, ())
    if channels != b.channels or len(spatial) != b.spatial_dims:
        raise PretrainedError(f"{where}: node {b.node!r} of {b.owner} ({owner}) gives a {shape} tensor, the record says "
                              f"{b.channels} channels ({b.layout}, {b.spatial_dims} spatial dims)")
    try:
        parent = mg.module.get_submodule(b.holder)  # "" is the owner itself
    except AttributeError:
        raise PretrainedError(f"{where}: {b.owner} ({owner}) has no layer {b.holder!r} to hold it: the base model is not "
                              "the one saved") from None
    taken = parent._modules.get(b.name) is not None or b.name in parent._parameters or \
        parent.__dict__.get(b.name) is not None
    if taken:
        raise PretrainedError(f"{where}: {'.'.join(p for p in (b.owner, b.holder) if p) or '<model>'} already has an "
                              f"attribute {b.name!r}")
    site = Site(path=b.owner, kind=b.kind, node=b.node, channels=b.channels, layout=b.layout, spatial=spatial,
                stage=b.stage, order=(mg.call.order, index), fuse=b.fuse)
    return Placement(site=site, label=b.label, r=b.r, reduced=b.reduced, name=b.name,
                     params=se_params(b.channels, b.reduced), macs=se_macs(b.channels, b.reduced, math.prod(spatial)),
                     fused=b.fused, holder=b.holder)
