"""The two calls most users need: :func:`plan` (look) and :func:`apply` (do)."""
from __future__ import annotations

import copy
import warnings
from typing import Any

from torch import nn

from .errors import PolicyError
from .planner import Plan, check_model, make_plan
from .policy import Policy
from .record import record_application
from .rewrite import BlocksNotRun, rewrite

__all__ = ["apply", "plan", "NothingInserted", "BlocksNotRun"]


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


def apply(model: nn.Module, policy: Policy | Plan | str | None = None, *, inplace: bool = False,
          input_size: tuple[int, ...] | None = None, **overrides: Any) -> nn.Module:
    """``model`` with SE blocks where ``policy`` puts them (paper placement by default).

    Returns a new model and leaves ``model`` untouched, unless ``inplace=True``. The result keeps the
    model's class and every parameter name; the new parameters are ``<owner>.se.*``. ``policy`` may
    also be a :class:`Plan` made for ``model`` by :func:`plan`: it is applied as it is, without
    tracing the model again (look first, then do).

        >>> import timm, se_inject
        >>> model = se_inject.apply(timm.create_model("resnet50"), r=16)   # timm's seresnet50
        >>> type(model).__name__, type(model.layer1[0]).__name__, model.layer1[0].se.fc1.weight.shape
        ('ResNet', 'Bottleneck', torch.Size([16, 256, 1, 1]))
        >>> resnet = timm.create_model("resnet18")
        >>> p = se_inject.plan(resnet, r=8)                                  # look...
        >>> se_inject.apply(resnet, p).layer1[0].se.reduced                  # ...then do, without tracing again
        8
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     _ = se_inject.apply(model)                                   # applying twice adds nothing...
        >>> print(caught[0].message)                                         # ...and says so
        se_inject.apply: no SE block inserted into ResNet: 16 sites skipped: already gated

    A detector (torchvision's Faster R-CNN, RetinaNet, FCOS, SSD) gets SE in its backbone; a model
    whose forward fails on an image batch but has a ``backbone`` too. New blocks are in the mode of
    the module that holds them (an ``eval()`` model gets eval-mode blocks). What was placed is recorded
    on the model (:mod:`se_inject.record`): :func:`se_inject.save_pretrained` saves it as a folder that
    :func:`se_inject.load_pretrained` rebuilds.

    Raises:
        SEInjectError: ``model`` is not a module instance (a class, a name, a state dict).
        PolicyError: a bad policy key or value, a glob or ``r_per_stage`` stage that matches nothing.
        TraceError: the model's forward fails at ``input_size``, or no part of it can be traced.
    Warns:
        NothingInserted: no site passed the policy (the message counts the reasons).
        BlocksNotRun: the check forward ran without some of the inserted blocks (the message names them).
    """
    check_model(model, "se_inject.apply")
    if isinstance(policy, Plan) and (overrides or input_size is not None):
        raise PolicyError("se_inject.apply: a plan is given, so the policy keys and input_size are decided "
                          f"({', '.join(sorted(overrides)) or 'input_size'} given): make a new plan with them")
    target = model if inplace else copy.deepcopy(model)
    if isinstance(policy, Plan):
        the_plan = policy
    else:
        the_plan = make_plan(target, policy, input_size=input_size, count_flops=False, **overrides)
    rewrite(target, _warn_if_empty(the_plan))
    record_application(target, the_plan)  # what save_pretrained writes, so load_pretrained rebuilds it as it is
    return target


def _warn_if_empty(the_plan: Plan) -> Plan:
    if not the_plan.placements and the_plan.policy.kinds:
        warnings.warn(f"se_inject.apply: no SE block inserted into {the_plan.model_name}: {the_plan.why_nothing()}",
                      NothingInserted, stacklevel=3)
    return the_plan


class NothingInserted(UserWarning):
    """``apply`` changed nothing: no site of the model passed the policy (the message says why)."""
