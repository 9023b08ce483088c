"""K runs of one architecture trained as one model: ``vmap`` over runs stacked along a leading dimension.

Runs that differ only in their seed (and in SE settings that build blocks of the same shapes) are
stacked: their parameters, BatchNorm statistics and momentum carry a leading run dimension, one
forward (``torch.func.vmap`` of ``functional_call``) and one backward train them all, and each run
keeps its own data order, augmentation draws, BatchNorm statistics, learning-rate schedule, metrics,
checkpoints and final weights, as if trained alone (to float rounding). On a GPU the whole step
(data, forward, backward, optimizer, schedule, metrics) is one CUDA graph (``run.cuda_graphs``).

    $ python -m trainers.stack --config fashion-mnist --set run.epochs=30 \\
          --member run.seed=0 run.out_dir=runs/s0 --member run.seed=1 run.out_dir=runs/s1

``se-inject compare`` stacks the seeds of each variant by itself on CUDA (``launch.stack: auto``).

    >>> from trainers.stack import stack_blockers
    >>> from trainers.config import load_config
    >>> stack_blockers(load_config("fashion-mnist", []))   # the recipe's runs stack
    []

Modules: :mod:`.plan` (what can stack, ``launch.stack``), :mod:`.flat` (the stacked tensors), :mod:`.member` (a run),
:mod:`.sgd` (the optimizer), :mod:`.batches` (the runs' batches), :mod:`.step` (the step and its
CUDA graph), :mod:`.group` (the runs' life cycle), :mod:`.cli` (``python -m trainers.stack``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .plan import PER_RUN_KEYS, parse_stack, stack_blockers

if TYPE_CHECKING:
    from .group import MemberOutcome, train_group

__all__ = ["train_group", "MemberOutcome", "stack_blockers", "parse_stack", "PER_RUN_KEYS"]


def __getattr__(name: str) -> Any:
    """``train_group`` and ``MemberOutcome`` load torch and the trainer on first use."""
    if name in ("train_group", "MemberOutcome"):
        from . import group
        return getattr(group, name)
    raise AttributeError(f"module 'trainers.stack' has no attribute {name!r}")
