"""Channel importance for Torch-Pruning from the excitations (paper §7: "the feature importance values
induced by SE blocks may be helpful for ... network pruning").

Torch-Pruning ranks the channels of one *group* at a time (channels that must go together: a conv's
outputs, the BN after it, the next layer's inputs, and across residual adds every block of a stage).
:class:`ExcitationImportance` scores them by what the SE blocks learned:

- **gated channels** (an SE block multiplies them: in a ResNet, every channel of a stage's trunk,
  which the residual adds couple to each block's SE): the channel's mean gate over the calibration
  set, averaged over the SE blocks of its group. The network itself turned a low-gate channel down.
- **channels inside a branch** (a residual branch's hidden channels, which no SE block gates): their
  L1 magnitude as Torch-Pruning's ``MagnitudeImportance(p=1)`` computes it (the producing conv's
  rows, the BN's scales, the consuming layer's columns), except that each column of the consuming
  layer is weighted by the mean gate of the output channel it writes: a hidden channel that only
  feeds channels the SE block turns down counts for little.
- channels no SE block reaches at all: plain ``MagnitudeImportance(p=1)``.

    >>> import torch, timm, se_inject
    >>> from se_inject.compress import ExcitationImportance, excitation_stats
    >>> model = se_inject.apply(timm.create_model("resnet18", num_classes=2))
    >>> stats = excitation_stats(model, [(torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 0, 1]))])
    >>> importance = ExcitationImportance(stats, model)   # for tp.pruner.MetaPruner(..., importance=...)

The statistics are read by channel index, so the importance serves one pruning step of the model
they were recorded on (:func:`se_inject.prune` does exactly that).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .._extras import require

require("prune", for_=__name__)
import torch_pruning as tp  # noqa: E402
from torch_pruning.pruner import function  # noqa: E402

from ..block import SqueezeExcite
from ..errors import CompressError
from .stats import ExcitationStats

__all__ = ["ExcitationImportance", "SeededRandomImportance", "IMPORTANCES"]

_OUT = (function.prune_conv_out_channels, function.prune_linear_out_channels,
        function.prune_depthwise_conv_out_channels)
_IN = (function.prune_conv_in_channels, function.prune_linear_in_channels)


def _roots(group: Any, i: int) -> torch.Tensor | None:
    roots = group[i].root_idxs
    return None if any(r is None for r in roots) else torch.as_tensor(roots, dtype=torch.long)


class ExcitationImportance(tp.importance.Importance):
    """Mean gate for gated channels, gate-weighted L1 magnitude for the channels inside a branch."""

    def __init__(self, stats: ExcitationStats, model: nn.Module) -> None:
        self.stats = stats
        self.names = {m: n for n, m in model.named_modules()}
        self._consumer_gates: dict[nn.Module, torch.Tensor | None] = {}

    @torch.no_grad()
    def __call__(self, group: Any) -> torch.Tensor | None:
        gates = self.gates(group)
        return gates if gates is not None else self._weighted_magnitude(group)

    def gates(self, group: Any) -> torch.Tensor | None:
        """Per root channel of ``group``: its mean gate, averaged over the group's SE blocks (1 for a
        channel of the group no block gates), or None when no SE block is in the group."""
        n = len(group[0].idxs)
        total, count = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
        for i, (dep, idxs) in enumerate(group):
            if not isinstance(dep.layer, SqueezeExcite):
                continue
            name, roots = self.names.get(dep.layer), _roots(group, i)
            if roots is None:
                continue
            if name not in self.stats.mean or dep.layer.channels != self.stats.channels[name]:
                raise CompressError(f"the excitation statistics do not describe {name} as it is now (pruned since?): "
                                    "prune in one step from the model they were recorded on")
            total.index_add_(0, roots, self.stats.mean[name][list(idxs)].double())
            count.index_add_(0, roots, torch.ones(len(roots), dtype=torch.float64))
        if count.sum() == 0:
            return None
        return torch.where(count > 0, total / count.clamp(min=1), torch.ones_like(total)).float()

    def _gates_of_outputs(self, layer: nn.Module, graph: Any) -> torch.Tensor | None:
        """The mean gate of each output channel of ``layer`` (None: no SE block reaches them)."""
        if layer not in self._consumer_gates:
            pruner = graph.get_pruner_of_module(layer)
            n = pruner.get_out_channels(layer)
            group = graph.get_pruning_group(layer, pruner.prune_out_channels, list(range(n)))
            self._consumer_gates[layer] = self.gates(group)
        return self._consumer_gates[layer]

    def _weighted_magnitude(self, group: Any) -> torch.Tensor | None:
        # Torch-Pruning's MagnitudeImportance(p=1) (mean over the group's layers, normalised by the
        # mean), with the consuming layers' columns weighted by the gates of what they write.
        n = len(group[0].idxs)
        reduced, terms = torch.zeros(n), 0
        for i, (dep, idxs) in enumerate(group):
            layer, fn, roots = dep.layer, dep.pruning_fn, _roots(group, i)
            if roots is None:
                continue
            idxs = list(idxs)
            if fn in _OUT and isinstance(layer, (nn.modules.conv._ConvNd, nn.Linear)):
                w = layer.weight.detach()
                w = w.transpose(0, 1) if getattr(layer, "transposed", False) else w
                local = w[idxs].flatten(1).abs().sum(1)
            elif fn in _IN and isinstance(layer, (nn.modules.conv._ConvNd, nn.Linear)):
                w = layer.weight.detach()
                per_out = (w.transpose(0, 1) if getattr(layer, "transposed", False) else w).abs().flatten(2).sum(2) \
                    if w.dim() > 2 else w.abs()                                 # (out, in / groups)
                gates = self._gates_of_outputs(layer, group._DG)
                if gates is not None and len(gates) == per_out.shape[0]:
                    per_out = per_out * gates[:, None].to(per_out)
                local = per_out.sum(0)
                groups = getattr(layer, "groups", 1)
                if fn == function.prune_conv_in_channels and groups not in (1, layer.in_channels):
                    local = local.repeat(groups)                                # as Torch-Pruning does
                local = local[idxs]
            elif fn == function.prune_batchnorm_out_channels and layer.affine:
                local = layer.weight.detach()[idxs].abs()
            else:
                continue
            reduced.scatter_add_(0, roots, local.float())
            terms += 1
        if terms == 0:
            return None
        reduced /= terms
        return reduced / reduced.mean()


class SeededRandomImportance(tp.importance.Importance):
    """Uniform random scores from a seeded generator (the control of the study): same seed, same channels."""

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(int(seed))

    def __call__(self, group: Any) -> torch.Tensor:
        return torch.rand(len(group[0].idxs), generator=self.generator)


#: criterion name -> factory(stats, model, seed) of the Torch-Pruning importance.
IMPORTANCES: dict[str, Callable[[ExcitationStats | None, nn.Module, int], tp.importance.Importance]] = {
    "excitation": lambda stats, model, seed: ExcitationImportance(stats, model),
    "magnitude": lambda stats, model, seed: tp.importance.MagnitudeImportance(p=1),
    "random": lambda stats, model, seed: SeededRandomImportance(seed),
}
