"""The two calls most users need: :func:`plan` (look) and :func:`apply` (do)."""
from __future__ import annotations

import copy
from typing import Any

from torch import nn

from .planner import Plan, make_plan
from .policy import Policy
from .rewrite import rewrite

__all__ = ["apply", "plan"]


def plan(model: nn.Module, policy: Policy | str | None = None, *, input_size: tuple[int, ...] | None = None,
         count_flops: bool = True, **overrides: Any) -> Plan:
    """Where SE blocks would go in ``model``, and what they cost, without changing anything.

    ``policy`` is a :class:`~se_inject.policy.Policy`, a preset (``paper``, ``paper-no-last-stage``,
    ``every-conv``, ``inception``) or a YAML path; keyword ``overrides`` change single keys.
    ``input_size`` is ``(C, H, W)``; the default is the model's ``pretrained_cfg`` size or 3x224x224.

        >>> import timm, se_inject
        >>> p = se_inject.plan(timm.create_model("resnet50"), "paper-no-last-stage")
        >>> len(p.placements), p.params_added
        (13, 951600)
        >>> p.placements[0].label, p.placements[0].module_path, p.placements[0].reduced
        ('SE_2_1', 'layer1.0.se', 16)
    """
    return make_plan(model, policy, input_size=input_size, count_flops=count_flops, **overrides)


def apply(model: nn.Module, policy: Policy | str | None = None, *, inplace: bool = False,
          input_size: tuple[int, ...] | None = None, **overrides: Any) -> nn.Module:
    """``model`` with SE blocks where ``policy`` puts them (paper placement by default).

    Returns a new model and leaves ``model`` untouched, unless ``inplace=True``. The result keeps the
    model's class and every parameter name; the new parameters are ``<owner>.se.*``.

        >>> import timm, se_inject
        >>> model = se_inject.apply(timm.create_model("resnet50"), r=16)   # timm's seresnet50
        >>> type(model).__name__, type(model.layer1[0]).__name__, model.layer1[0].se.fc1.weight.shape
        ('ResNet', 'Bottleneck', torch.Size([16, 256, 1, 1]))
        >>> se_inject.apply(model).layer1[0].se is not None                # applying twice adds nothing
        True
    """
    target = model if inplace else copy.deepcopy(model)
    the_plan = make_plan(target, policy, input_size=input_size, count_flops=False, **overrides)
    return rewrite(target, the_plan)
