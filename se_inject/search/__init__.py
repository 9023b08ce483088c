"""Where should SE go, and how wide? A search space over SE placements, for Optuna.

The model-specific part of an architecture search is the space: :func:`space` reads it from one plan
of the model (one dimension per stage, each ``off`` or an r), prices every point without tracing
again (:meth:`SearchSpace.cost`: exactly ``se_inject.plan``'s totals) and draws points from an Optuna
trial (:meth:`SearchSpace.suggest`), so the study, its sampler, pruner, storage and workers stay
Optuna's and the training loop stays yours::

    import optuna, se_inject
    from se_inject.search import space

    s = space(base, r_choices=(4, 8, 16, 32), max_params_added=500_000)

    def objective(trial):
        policy = s.suggest(trial)                 # infeasible points are pruned here, not trained
        model = se_inject.apply(base, policy)
        return train_and_eval(model)

    sampler = optuna.samplers.TPESampler(constraints_func=s.constraints_func)
    optuna.create_study(sampler=sampler).optimize(objective, n_trials=50)

``examples/search_optuna.py`` runs that loop end to end; ``se-inject search CONFIG.yaml`` runs a whole
search on the bundled trainer (``trainers.search``). Optuna is imported only by ``suggest``.

    >>> from backbones import create_backbone
    >>> s = space(create_backbone("cifar_resnet20"), r_choices=(8, 16))
    >>> s.names, len(s), s.cost({"stage0": 8, "stage1": "off", "stage2": 16}).params_added
    (['stage0', 'stage1', 'stage2'], 27, 1986)
"""
from __future__ import annotations

from .space import BY, OFF, Cost, Dimension, SearchSpace, space

__all__ = ["space", "SearchSpace", "Dimension", "Cost", "OFF", "BY"]
