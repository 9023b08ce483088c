"""What the excitations do (paper §6.3, Fig. 8): SE gate activations per class and per block.

    >>> import torch, timm, se_inject
    >>> from se_inject.analysis import record_excitations
    >>> model = se_inject.apply(timm.create_model("resnet18", num_classes=3), r=16).eval()
    >>> data = [(torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 0]))]
    >>> exc = record_excitations(model, data)
    >>> exc.blocks[:2], tuple(exc.per_class["layer1.0.se"].shape)
    (['layer1.0.se', 'layer1.1.se'], (3, 64))

The paper's finding, to look for on your own model: early blocks are class-agnostic (every class
has nearly the same activation profile), later blocks become class-specific, and the last stage
saturates (activations near 0 or 1, similar for all classes). :meth:`Excitations.summary` gives a
number per block for each of the three (spread across classes, saturation), and
:func:`plot_excitations` draws Fig. 8's layout.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ._extras import require
from .compress.stats import excitation_stats, se_blocks

__all__ = ["Excitations", "record_excitations", "plot_excitations", "se_blocks"]


@dataclass
class Excitations:
    """Mean gate activation per class (``per_class[block]``: ``(classes, C)``) and over all inputs."""
    blocks: list[str]
    labels: dict[str, str]
    num_classes: int
    counts: torch.Tensor                      # inputs seen per class
    per_class: dict[str, torch.Tensor]        # block -> (num_classes, C)
    overall: dict[str, torch.Tensor]          # block -> (C,)
    class_names: list[str] = field(default_factory=list)

    def spread(self, block: str, classes: Sequence[int] | None = None) -> float:
        """Class specificity of a block: mean over channels of (max - min) of the per-class means."""
        rows = self._rows(block, classes)
        return float((rows.max(0).values - rows.min(0).values).mean()) if len(rows) > 1 else 0.0

    def saturation(self, block: str) -> float:
        """Share of channels whose mean activation is below 0.1 or above 0.9 (§6.3, SE_5_2)."""
        a = self.overall[block]
        return float(((a < 0.1) | (a > 0.9)).float().mean())

    def _rows(self, block: str, classes: Sequence[int] | None) -> torch.Tensor:
        seen = self.counts > 0
        idx = [c for c in (classes if classes is not None else range(self.num_classes)) if seen[c]]
        return self.per_class[block][idx]

    def summary(self, classes: Sequence[int] | None = None) -> str:
        """One line per block: label, channels, spread across classes, saturation, mean."""
        lines = ["block                 label     C     spread  saturated  mean"]
        for b in self.blocks:
            lines.append(f"{b:21s} {self.labels.get(b, '-'):9s} {self.overall[b].numel():5d}  "
                         f"{self.spread(b, classes):.3f}   {100 * self.saturation(b):5.1f}%    {float(self.overall[b].mean()):.3f}")
        return "\n".join(lines)

    def save(self, path: str | Path) -> None:
        torch.save({k: getattr(self, k) for k in self.__dataclass_fields__}, path)

    @classmethod
    def load(cls, path: str | Path) -> "Excitations":
        return cls(**torch.load(path, weights_only=True))


def record_excitations(model: nn.Module, data: Iterable, *, blocks: Sequence[str] | None = None,
                       num_classes: int | None = None, max_batches: int | None = None,
                       device: str | torch.device | None = None) -> Excitations:
    """Run ``model`` (eval, no grad) over ``data`` (``(images, labels)`` batches) and average each
    SE block's gate activations per class (in ``[0, 1]``: an ``init="identity"`` block's ``2·sigmoid``
    is halved). The pass is :func:`se_inject.excitation_stats`; the model's mode is restored afterwards."""
    stats = excitation_stats(model, data, blocks=blocks, num_classes=num_classes, max_batches=max_batches,
                             device=device, min_classes=1)
    per_class = {b: stats.class_mean[b] / stats.gate_scale[b] for b in stats.blocks}
    overall = {b: stats.mean[b] / stats.gate_scale[b] for b in stats.blocks}
    return Excitations(stats.blocks, dict(stats.labels), stats.num_classes, stats.counts, per_class, overall)


def plot_excitations(exc: Excitations, path: str | Path, *, blocks: Sequence[str] | None = None,
                     classes: Sequence[int] | None = None, class_names: Sequence[str] | None = None) -> Path:
    """Fig. 8's layout: one panel per block, mean activation per channel for the chosen classes and
    for all classes, with the block's spread across classes in its title."""
    require("train", for_="se_inject.analysis.plot_excitations")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    blocks = list(blocks) if blocks else _default_blocks(exc)
    classes = list(classes) if classes is not None else list(range(min(exc.num_classes, 4)))
    names = list(class_names or exc.class_names or [str(c) for c in range(exc.num_classes)])
    cols = min(3, len(blocks))
    rows = (len(blocks) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
    for ax, b in zip(axes.flat, blocks):
        for c in classes:
            ax.plot(exc.per_class[b][c].numpy(), lw=0.8, label=names[c] if c < len(names) else str(c))
        ax.plot(exc.overall[b].numpy(), lw=1.2, color="black", ls="--", label="all")
        ax.set_title(f"{exc.labels.get(b, b)} ({b})  spread {exc.spread(b, classes):.3f}", fontsize=9)
        ax.set_xlabel("channel index")
        ax.set_ylabel("activation")
        ax.set_ylim(0, 1.05 if exc.overall[b].max() <= 1 else None)
    for ax in list(axes.flat)[len(blocks):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _default_blocks(exc: Excitations) -> list[str]:
    """The paper's choice in spirit: blocks spread from early to last, at most six."""
    n = len(exc.blocks)
    if n <= 6:
        return list(exc.blocks)
    picks = sorted({round(i * (n - 1) / 5) for i in range(6)})
    return [exc.blocks[i] for i in picks]
