"""The Optuna side of a search space: drawing a point from a trial, constraints for the samplers.

Optuna is an optional extra (``pip install 'se-inject[search]'``) imported here only, when a space
is asked to suggest: making a space and pricing its points never import it.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..schema import to_dict

if TYPE_CHECKING:
    from ..policy import Policy
    from .space import SearchSpace

__all__ = ["require_optuna", "suggest", "ConstraintsFunc", "CONSTRAINTS", "INFEASIBLE"]

#: the trial user attribute holding a point's constraint values (<= 0: met), and the one saying why it is infeasible
CONSTRAINTS, INFEASIBLE = "constraints", "infeasible"


def require_optuna(for_: str = "se_inject.search") -> Any:
    """The ``optuna`` module, or a one-line :class:`~se_inject.MissingExtraError` naming the extra to install."""
    from .._extras import require
    require("search", for_=for_)
    import optuna
    return optuna


def suggest(space: "SearchSpace", trial: Any, *, prune_infeasible: bool = True) -> "Policy":
    optuna = require_optuna("SearchSpace.suggest")
    point = {}
    for d in space.dims:
        if space.ordinal:
            point[d.name] = d.choices[trial.suggest_int(d.name, 0, len(d.choices) - 1)]
        else:
            point[d.name] = trial.suggest_categorical(d.name, list(d.choices))
    policy = space.policy(point)
    cost = space.cost_of(point)
    latency = space.latency(point) if space.max_latency_ms is not None else None
    for key, value in (("params_added", cost.params_added), ("macs_added", cost.macs_added), ("blocks", cost.blocks),
                       ("point", space.describe(point)), ("policy", to_dict(policy))):
        trial.set_user_attr(key, value)
    if latency is not None:
        trial.set_user_attr("latency_ms", latency)
    values = space.constraints(point, latency)
    trial.set_user_attr(CONSTRAINTS, values)
    if hasattr(trial, "set_constraint"):  # Optuna >= 5: samplers read the constraints a trial carries
        for key, value in zip(space.limit_names, values):
            trial.set_constraint(key, value)
    why = space.infeasible(point, latency)
    if why is not None:
        trial.set_user_attr(INFEASIBLE, why)
        if prune_infeasible:
            raise optuna.TrialPruned(f"infeasible: {why}")
    return policy


class ConstraintsFunc:
    """An Optuna ``constraints_func`` (Optuna < 5; from 5 on the samplers read what ``trial.set_constraint``
    stored): the values :func:`suggest` recorded (a trial that never drew a point counts as meeting them)."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __call__(self, trial: Any) -> Sequence[float]:
        return trial.user_attrs.get(CONSTRAINTS, [0.0] * self.count)
