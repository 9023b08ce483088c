"""``se_inject.prune``: structured channel pruning to a MAC target, with Torch-Pruning doing the surgery.

    >>> import torch, timm, se_inject
    >>> from se_inject.accounting import count_macs
    >>> model = se_inject.apply(timm.create_model("resnet18", num_classes=2))
    >>> stats = se_inject.excitation_stats(model, [(torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 0, 1]))])
    >>> small = se_inject.prune(model, stats, amount=0.5)                      # half the MACs, by excitation
    >>> round(1 - count_macs(small, (3, 64, 64)) / count_macs(model, (3, 64, 64)), 2)
    0.5
    >>> small.layer1[0].se.channels, model.layer1[0].se.channels               # the user's model is untouched
    (44, 64)
    >>> small(torch.randn(2, 3, 64, 64)).shape
    torch.Size([2, 2])

``amount`` is the share of multiply-adds to remove (at ``input_size``, by default the calibration
images' size). Every group of coupled channels (Torch-Pruning's dependency groups: a stage's trunk
across its residual adds, each branch's hidden channels) loses the same share of its channels; that
share is searched (bisection, on meta-device copies) until the model's MACs drop by ``amount``. The
criterion only decides *which* channels of each group go, so the excitation, L1-magnitude and
random criteria give models of the same shape and cost. The layer that produces the model's output
(the classifier) keeps its outputs.
"""
from __future__ import annotations

import copy
import math
from numbers import Real

import torch
from torch import nn

from .._extras import require

require("prune", for_="se_inject.prune")   # se_inject.prune loads this module on first use
import torch_pruning as tp  # noqa: E402

from ..accounting import count_macs
from ..errors import CompressError, did_you_mean
from ..modes import eval_mode
from ..shapes import check_input_size, default_input_size, model_device
from .importance import IMPORTANCES, SeededRandomImportance
from .prunable import customized_pruners
from .stats import ExcitationStats, se_blocks

__all__ = ["prune", "pruning_ratio_for", "check_amount"]

#: the largest share of a group's channels the search tries (every group keeps at least one channel)
MAX_RATIO = 0.9
#: stop the search when the MAC reduction is this close to ``amount``
MAC_TOLERANCE = 0.005
SEARCH_STEPS = 12
_RATIO_CACHE: dict[tuple, float] = {}


def check_amount(amount: object) -> float:
    """``amount`` as a float in [0, 1), or a one-line :class:`CompressError`."""
    if isinstance(amount, bool) or not isinstance(amount, Real) or not math.isfinite(amount) or not 0 <= amount < 1:
        raise CompressError(f"amount={amount!r} is not a share of MACs to remove: pass a number in [0, 1), "
                            "e.g. 0.5 for half the multiply-adds")
    return float(amount)


def prune(model: nn.Module, stats: ExcitationStats | None = None, amount: float = 0.5, *,
          importance: str | tp.importance.Importance = "excitation", input_size: tuple[int, ...] | None = None,
          inplace: bool = False, seed: int = 0) -> nn.Module:
    """``model`` with ``amount`` of its MACs pruned away, channels chosen by ``importance``.

    ``importance``: ``"excitation"`` (the default: :class:`~se_inject.compress.ExcitationImportance`,
    needs ``stats``), ``"magnitude"`` (Torch-Pruning's L1 ``MagnitudeImportance(p=1)``), ``"random"``
    (seeded by ``seed``), or any Torch-Pruning importance object. A new model unless ``inplace=True``.
    """
    amount = check_amount(amount)
    if isinstance(importance, str) and importance not in IMPORTANCES:
        raise CompressError(f"importance={importance!r} is not a criterion{did_you_mean(importance, IMPORTANCES)}; "
                            f"use one of {', '.join(IMPORTANCES)} or a torch_pruning importance")
    if not se_blocks(model):
        raise CompressError(f"{type(model).__name__} has no SqueezeExcite block: se_inject.prune compresses SE models; "
                            "apply se_inject first (se_inject.apply(model)) and train it")
    if stats is not None:
        stats.check(model)
    elif importance == "excitation":
        raise CompressError("the excitation criterion needs statistics: "
                            "stats = se_inject.excitation_stats(model, calibration_batches), then prune(model, stats, ...)")
    size = check_input_size(input_size or (stats.input_size if stats is not None else None) or default_input_size(model),
                            model)
    target = model if inplace else copy.deepcopy(model)
    if amount == 0:
        return target
    ratio = pruning_ratio_for(model, amount, size)
    scorer = IMPORTANCES[importance](stats, target, seed) if isinstance(importance, str) else importance
    _prune_step(target, ratio, scorer, size)
    try:
        with eval_mode(target), torch.no_grad():
            target(torch.zeros(1, *size, device=model_device(target)))
    except Exception as e:  # Torch-Pruning left a layer it could not see at its old width
        raise CompressError(f"the pruned {type(model).__name__} does not run ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200]}); a layer Torch-Pruning cannot trace needs a "
                            "customized pruner") from None
    return target


def _prune_step(model: nn.Module, ratio: float, importance: tp.importance.Importance, size: tuple[int, ...]) -> None:
    """One Torch-Pruning step: every group loses ``ratio`` of its channels (local ranking)."""
    example = torch.randn(1, *size, device=model_device(model))
    with eval_mode(model), torch.enable_grad():  # the dependency graph is traced through autograd
        pruner = tp.pruner.MetaPruner(model, example, importance, pruning_ratio=ratio,
                                      customized_pruners=customized_pruners())
        # a documented constructor argument, set once the graph shows which layers make the output
        pruner.ignored_layers.extend(_output_layers(pruner.DG))
        pruner.step()


def _output_layers(graph: tp.DependencyGraph) -> list[nn.Module]:
    """The convs/linears that produce the model's outputs (their output channels are the task's): the
    graph's sinks, or the layers reached walking back from a sink that is an op."""
    found: list[nn.Module] = []
    stack = [n for n in graph.module2node.values() if not n.outputs]
    seen: set = set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if isinstance(n.module, (nn.modules.conv._ConvNd, nn.Linear)):
            found.append(n.module)
        else:
            stack.extend(n.inputs)
    return found


def _signature(model: nn.Module) -> tuple:
    return tuple((name, tuple(p.shape)) for name, p in model.named_parameters())


def pruning_ratio_for(model: nn.Module, amount: float, input_size: tuple[int, ...]) -> float:
    """The per-group channel share that removes ``amount`` of ``model``'s MACs (cached per architecture)."""
    key = (type(model).__qualname__, _signature(model), tuple(input_size), round(amount, 6))
    if key in _RATIO_CACHE:
        return _RATIO_CACHE[key]
    shell = copy.deepcopy(model).to("meta")   # shapes only: the search computes nothing
    base = count_macs(shell, input_size)
    if not base:
        raise CompressError(f"cannot count the MACs of {type(model).__name__} at input size {input_size}; "
                            "pass the input_size it takes")

    def reduction(ratio: float) -> float:
        trial = copy.deepcopy(shell)
        _prune_step(trial, ratio, SeededRandomImportance(0), input_size)
        return 1 - count_macs(trial, input_size) / base

    most = reduction(MAX_RATIO)
    if most < amount - MAC_TOLERANCE:
        raise CompressError(f"channel pruning removes at most {most:.0%} of {type(model).__name__}'s MACs "
                            f"(every group keeps {1 - MAX_RATIO:.0%} of its channels); ask for amount <= {most:.2f}")
    lo, hi, best = 0.0, MAX_RATIO, (abs(most - amount), MAX_RATIO)
    for _ in range(SEARCH_STEPS):
        mid = (lo + hi) / 2
        got = reduction(mid)
        best = min(best, (abs(got - amount), mid))
        if abs(got - amount) <= MAC_TOLERANCE:
            break
        lo, hi = (mid, hi) if got < amount else (lo, mid)
    _RATIO_CACHE[key] = best[1]
    return best[1]
