"""SE blocks for Torch-Pruning: how a :class:`~se_inject.block.SqueezeExcite` couples its channels.

The block runs its FCs as ``F.linear`` on ``fc1``/``fc2``'s weights (faster than a 1x1 conv on the
CPU, and what its fused GPU kernels take), so Torch-Pruning's dependency graph, which records module
calls, sees no layer inside it and leaves ``fc1``/``fc2`` at their old width. Registered as a
customised pruner, the block is one node of that graph: the channels it gates are its input and its
output channels at once (the residual add it performs couples them with the shortcut), and pruning
them prunes ``fc1``'s input and ``fc2``'s output with Torch-Pruning's own conv/linear functions. The
bottleneck (``reduced``) keeps its width.

    >>> import torch, timm, torch_pruning as tp, se_inject
    >>> from se_inject.compress import customized_pruners
    >>> model = se_inject.apply(timm.create_model("resnet18", num_classes=10))
    >>> pruner = tp.pruner.MetaPruner(model, torch.randn(1, 3, 64, 64), tp.importance.MagnitudeImportance(p=1),
    ...                               pruning_ratio=0.5, ignored_layers=[model.fc],
    ...                               customized_pruners=customized_pruners())
    >>> pruner.step()
    >>> model.layer1[0].se
    SqueezeExcite(
      label=SE_2_1, channels=32, reduced=4, layout=nchw, squeeze=avg, gate=sigmoid, init=default, post_act=relu
      (fc1): Conv2d(32, 4, kernel_size=(1, 1), stride=(1, 1))
      (act): ReLU(inplace=True)
      (fc2): Conv2d(4, 32, kernel_size=(1, 1), stride=(1, 1))
      (gate): Sigmoid()
    )
    >>> model(torch.randn(2, 3, 64, 64)).shape
    torch.Size([2, 10])
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .._extras import require

require("prune", for_=__name__)
import torch_pruning as tp  # noqa: E402

from ..block import SqueezeExcite

__all__ = ["SqueezeExcitePruner", "customized_pruners"]


class SqueezeExcitePruner(tp.pruner.BasePruningFunc):
    """Prunes the channels an SE block gates: ``fc1``'s inputs and ``fc2``'s outputs (and biases)."""

    TARGET_MODULES = (SqueezeExcite,)

    def prune_out_channels(self, layer: SqueezeExcite, idxs: Sequence[int]) -> SqueezeExcite:
        idxs = sorted(set(int(i) for i in idxs))
        if isinstance(layer.fc1, nn.Conv2d):
            tp.prune_conv_in_channels(layer.fc1, idxs)
            tp.prune_conv_out_channels(layer.fc2, idxs)
        else:
            tp.prune_linear_in_channels(layer.fc1, idxs)
            tp.prune_linear_out_channels(layer.fc2, idxs)
        layer.channels -= len(idxs)
        return layer

    # The gated channels are the block's input and output: one set of indices (Torch-Pruning's
    # intra-layer dependency is declared by making the two functions the same).
    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: SqueezeExcite) -> int:
        return layer.channels

    def get_in_channels(self, layer: SqueezeExcite) -> int:
        return layer.channels


def customized_pruners() -> dict[type, tp.pruner.BasePruningFunc]:
    """``customized_pruners=`` for any Torch-Pruning pruner or ``DependencyGraph.build_dependency``."""
    return {SqueezeExcite: SqueezeExcitePruner()}
