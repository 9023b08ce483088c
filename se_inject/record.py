"""What :func:`se_inject.apply` did to a model, kept on the model: where its base came from, and every
SE block placed, as built. :func:`se_inject.save_pretrained` writes this record to ``config.json``;
:func:`se_inject.load_pretrained` rebuilds the net from it (:mod:`se_inject.replay`) without planning
again, so a later change of placement rules cannot change a saved net.

    >>> import timm, se_inject
    >>> model = se_inject.apply(timm.create_model("resnet18"), r=8, input_size=(3, 64, 64))
    >>> block = applications(model)[0].blocks[0]
    >>> block.module_path, block.node, block.channels, block.reduced, block.fused, block.post_act
    ('layer1.0.se', 'bn2', 64, 8, True, 'relu')
    >>> origin_of(model)
    Origin(source='timm', name='resnet18', kwargs={'in_chans': 3, 'num_classes': 1000, 'global_pool': 'avg'}, model_class='timm.models.resnet.ResNet')

The record is plain data on the model object (``copy.deepcopy``, ``pickle`` and ``torch.save`` keep it);
the state dict is untouched.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch.fx as fx
from torch import nn

from .block import SqueezeExcite
from .errors import PretrainedError
from .schema import Number

if TYPE_CHECKING:
    from .planner import Plan

__all__ = ["Origin", "BlockRecord", "Application", "set_origin", "adopt_origin", "origin_of", "record_application",
           "applications", "add_application", "block_fields", "node_target", "check_recorded", "STRUCTURE"]

_ORIGIN = "_se_inject_origin"
_APPLIED = "_se_inject_applied"
#: block settings that fix its parameters or its numbers: a saved block must still have them, a rebuilt one gets them
STRUCTURE = ("channels", "reduced", "layout", "spatial_dims", "squeeze", "gate", "init", "post_act")


@dataclass(frozen=True)
class Origin:
    """How to build the plain base model: ``backbones.create_backbone(f"{source}:{name}", **kwargs)``.
    ``source`` is ``None`` for a class se-inject cannot build by name (a user's own)."""
    _what = "base"
    source: str | None
    name: str | None
    kwargs: dict[str, Any] = field(default_factory=dict)  # constructor arguments, never ``pretrained``
    model_class: str = ""                                  # module.qualname of the model's class, for people and messages

    @property
    def spec(self) -> str | None:
        """``timm:resnet50``, ``tv:resnet50``, ``own:cifar_resnet20``, or None."""
        return f"{self.source}:{self.name}" if self.source else None

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.spec}({args})" if self.spec else self.model_class


@dataclass(frozen=True)
class BlockRecord:
    """One SE block as placed and built: where (owner, graph node, the add it absorbs) and what."""
    _what = "block"
    module_path: str          # <owner>.<attribute>, e.g. layer1.0.se
    label: str                # SE_<stage>_<block> (paper §6.3)
    kind: str                 # the site kind (residual, inception, ...)
    node: str                 # the fx node of the owner's graph whose output the block gates
    node_op: str              # that node's op and target: the rebuilt graph must have the same
    node_target: str
    fuse: str | None          # the residual add node the block may absorb
    fused: bool               # it does: shortcut + x * gate in one op
    stage: int | None
    r: Number
    channels: int
    reduced: int
    layout: str
    spatial_dims: int
    squeeze: str
    gate: str
    init: str
    post_act: str | None
    kernels: str
    holder: str = ""          # the owner's layer that runs the block on its output ("2": VGG's features.2.se), or ""

    @property
    def owner(self) -> str:
        """The module whose graph has :attr:`node` (the holder's parent when the block sits inside a layer)."""
        path = self.module_path.rpartition(".")[0]
        if self.holder and (path == self.holder or path.endswith("." + self.holder)):
            return path[:-len(self.holder)].rstrip(".")
        return path

    @property
    def name(self) -> str:
        return self.module_path.rpartition(".")[2]


@dataclass(frozen=True)
class Application:
    """One :func:`se_inject.apply` call: the resolved policy (for people; the blocks say what was built),
    the input size it planned at, the traced root ('' = the model, ``backbone`` for a detector)."""
    _what = "application"
    policy: dict[str, Any]
    policy_source: str
    input_size: tuple[int, ...]
    root: str
    blocks: tuple[BlockRecord, ...]


def set_origin(model: nn.Module, source: str, name: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """Record that ``model`` is ``create_backbone(f"{source}:{name}", **kwargs)`` (``backbones`` calls it)."""
    kept = {k: v for k, v in kwargs.items() if k != "pretrained"}
    model.__dict__[_ORIGIN] = Origin(source, name, kept, _class_name(model))
    return model


def adopt_origin(model: nn.Module, origin: Origin) -> None:
    """Record ``origin`` as ``model``'s (a model rebuilt from a saved config)."""
    model.__dict__[_ORIGIN] = origin


def origin_of(model: nn.Module) -> Origin | None:
    """How ``model``'s base was built: as ``backbones.create_backbone`` recorded it, else, for a model of
    ``timm.create_model``, its architecture and reconstruction arguments; None when unknown."""
    recorded = model.__dict__.get(_ORIGIN)
    return recorded if recorded is not None else _timm_origin(model)


def _class_name(model: nn.Module) -> str:
    cls = type(model)
    return f"{cls.__module__}.{cls.__qualname__}"


def _timm_origin(model: nn.Module) -> Origin | None:
    cfg = getattr(model, "pretrained_cfg", None)
    if not type(model).__module__.startswith("timm.") or not isinstance(cfg, Mapping) or not cfg.get("architecture"):
        return None
    try:  # timm >= 1.0.30: the factory's arguments, with the current classes, channels and pooling
        from timm.models._input import get_model_args
        kwargs = get_model_args(model)
    except (ImportError, AttributeError, ValueError):
        kwargs = {k: v for k, v in getattr(model, "_model_args", {}).items() if "drop" not in k}
        if isinstance(getattr(model, "num_classes", None), int):
            kwargs["num_classes"] = model.num_classes
        first = cfg.get("first_conv")  # older timm: the input channels from the stem the config names
        if "in_chans" not in kwargs and isinstance(first, str):
            try:
                kwargs["in_chans"] = int(model.get_submodule(first).in_channels)
            except (AttributeError, TypeError):
                pass
    return Origin("timm", cfg["architecture"], dict(kwargs), _class_name(model))


def node_target(node: fx.Node) -> str:
    """A node's target as text: a module path or method name, else the function's name (``add``)."""
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", repr(t))


def block_fields(block: SqueezeExcite) -> dict[str, Any]:
    """The settings of a built block that a :class:`BlockRecord` holds."""
    return {"channels": block.channels, "reduced": block.reduced, "layout": block.layout,
            "spatial_dims": block.spatial_dims, "squeeze": block.squeeze, "gate": block.gate_name, "init": block.init,
            "post_act": block.post_act, "kernels": block.kernels}


def applications(model: nn.Module) -> tuple[Application, ...]:
    """Every recorded :func:`se_inject.apply` of ``model``, in order (empty for a plain model)."""
    return model.__dict__.get(_APPLIED, ())


def add_application(model: nn.Module, app: Application) -> None:
    model.__dict__[_APPLIED] = (*applications(model), app)


def record_application(model: nn.Module, plan: "Plan") -> None:
    """Note on ``model`` (rewritten by :func:`se_inject.rewrite.rewrite`) the blocks ``plan`` placed."""
    if not plan.placements:
        return
    blocks = []
    for p in plan.placements:
        node = next(n for n in plan.traced.graphs[p.site.path].graph.nodes if n.name == p.site.node)
        blocks.append(BlockRecord(
            module_path=p.module_path, label=p.label, kind=p.site.kind, node=p.site.node, node_op=node.op,
            node_target=node_target(node), fuse=p.site.fuse, fused=p.fused, stage=p.site.stage, r=p.r,
            holder=p.holder, **block_fields(model.get_submodule(p.module_path))))
    add_application(model, Application(policy=plan.policy.to_dict(), policy_source=plan.policy.source,
                                       input_size=tuple(plan.input_size), root=plan.traced.root, blocks=tuple(blocks)))


def check_recorded(model: nn.Module, caller: str = "se_inject.save_pretrained") -> tuple[Application, ...]:
    """``model``'s applications, each block checked against the module now at its path (the block's
    ``kernels`` taken from it): the model must hold exactly the SE blocks apply built, unchanged."""
    recorded: set[int] = set()
    apps = []
    for app in applications(model):
        blocks = []
        for b in app.blocks:
            try:
                block = model.get_submodule(b.module_path)
            except AttributeError:
                block = None
            if not isinstance(block, SqueezeExcite):
                now = "is gone" if block is None else f"is a {type(block).__name__} now"
                raise PretrainedError(f"{caller}: the SE block apply placed at {b.module_path} {now} (folded?): "
                                      "the model cannot be rebuilt from its record; save it whole with torch.save(model)")
            now = block_fields(block)
            changed = [k for k in STRUCTURE if now[k] != getattr(b, k)]
            if changed:
                k = changed[0]
                raise PretrainedError(f"{caller}: the SE block {b.module_path} has {k}={now[k]!r}, apply built it with "
                                      f"{k}={getattr(b, k)!r} (pruned?): the model cannot be rebuilt from its record; "
                                      "save it whole with torch.save(model)")
            recorded.add(id(block))
            blocks.append(dataclasses.replace(b, kernels=now["kernels"]))
        apps.append(dataclasses.replace(app, blocks=tuple(blocks)))
    unknown = [path for path, m in model.named_modules() if isinstance(m, SqueezeExcite) and id(m) not in recorded]
    if unknown:
        more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
        raise PretrainedError(f"{caller}: the SqueezeExcite at {unknown[0]}{more} was not placed by a recorded "
                              "se_inject.apply (inserted by hand, or the model was pickled by an older se-inject): apply "
                              "SE to the plain model with se_inject.apply, or save it whole with torch.save(model)")
    return tuple(apps)
