"""Excitation statistics: what each SE block's gate does over a calibration set (paper §6.3, Fig. 8).

One pass over a few batches of ``(images, labels)`` records, per SE block and channel, the mean and the
standard deviation of the scale the gate applies, its minimum and maximum, and the same mean and
spread per class. ``se-inject excitations`` draws them, :func:`se_inject.prune` ranks channels by them
and :func:`se_inject.fold` replaces the blocks whose gate hardly moves by their mean.

    >>> import torch, timm, se_inject
    >>> model = se_inject.apply(timm.create_model("resnet18", num_classes=3))
    >>> data = [(torch.randn(6, 3, 64, 64), torch.tensor([0, 1, 2, 0, 1, 2]))]
    >>> stats = se_inject.excitation_stats(model, data)
    >>> stats.blocks[:2], stats.images, stats.input_size, tuple(stats.class_mean["layer1.0.se"].shape)
    (['layer1.0.se', 'layer1.1.se'], 6, (3, 64, 64), (3, 64))
    >>> print(stats.summary().splitlines()[0])
    block                 label        C   mean  variation  class spread

The gate values are the scale each channel is multiplied by: ``sigmoid(z)``, or ``2·sigmoid(z)`` for
``init="identity"`` blocks. *variation* is the largest per-channel standard deviation over the
calibration images (what :func:`se_inject.fold` compares with its tolerance); *class spread* is
§6.3's class specificity, the mean over channels of the range of the per-class means.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn

from ..block import SqueezeExcite
from ..errors import CompressError
from ..modes import eval_mode

__all__ = ["ExcitationStats", "excitation_stats", "se_blocks"]


def se_blocks(model: nn.Module) -> dict[str, SqueezeExcite]:
    """Module path -> SE block, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, SqueezeExcite)}


def _fingerprint(block: SqueezeExcite) -> float:
    """A number that changes when the block's FC weights change (values or order), not when they move device."""
    total = 0.0
    for w in (block.fc1.weight, block.fc2.weight):
        flat = w.detach().double().flatten().cpu()
        total += float((flat * torch.linspace(1.0, 2.0, flat.numel(), dtype=torch.float64)).sum())
    return total


@dataclass
class ExcitationStats:
    """Per SE block (module path): per-channel gate statistics over the calibration images.

    ``mean``, ``std``, ``low``, ``high``: ``(C,)``; ``class_mean``, ``class_std``: ``(num_classes, C)``
    (rows of classes that had no image are zero); ``counts``: images per class.
    """
    blocks: list[str]
    labels: dict[str, str]
    channels: dict[str, int]
    gate_scale: dict[str, float]
    num_classes: int
    counts: torch.Tensor
    input_size: tuple[int, ...]
    mean: dict[str, torch.Tensor]
    std: dict[str, torch.Tensor]
    low: dict[str, torch.Tensor]
    high: dict[str, torch.Tensor]
    class_mean: dict[str, torch.Tensor]
    class_std: dict[str, torch.Tensor]
    fingerprints: dict[str, float]

    @property
    def images(self) -> int:
        """Calibration images seen."""
        return int(self.counts.sum())

    @property
    def classes_seen(self) -> int:
        return int((self.counts > 0).sum())

    def variation(self, block: str) -> float:
        """How much the block's gate moves across inputs: the largest per-channel standard deviation."""
        return float(self.std[block].max())

    def class_spread(self, block: str, classes: Sequence[int] | None = None) -> float:
        """Class specificity (§6.3): mean over channels of (max - min) of the per-class means."""
        seen = self.counts > 0
        idx = [c for c in (classes if classes is not None else range(self.num_classes)) if seen[c]]
        rows = self.class_mean[block][idx]
        return float((rows.max(0).values - rows.min(0).values).mean()) if len(rows) > 1 else 0.0

    def summary(self) -> str:
        """One line per block: label, channels, mean scale, variation, class spread."""
        lines = ["block                 label        C   mean  variation  class spread"]
        for b in self.blocks:
            lines.append(f"{b:21s} {self.labels.get(b, '-'):9s} {self.channels[b]:5d}  {float(self.mean[b].mean()):.3f}"
                         f"  {self.variation(b):9.4f}  {self.class_spread(b):12.3f}")
        return "\n".join(lines)

    def check(self, model: nn.Module) -> dict[str, SqueezeExcite]:
        """The model's SE blocks, or a :class:`CompressError` when these statistics were not recorded on it."""
        found = se_blocks(model)
        if not found:
            raise CompressError(f"{type(model).__name__} has no SqueezeExcite block: apply se_inject first "
                                "(se_inject.apply(model)) and train it")
        redo = "record them on this model: se_inject.excitation_stats(model, calibration_batches)"
        if list(found) != self.blocks:
            ours = ", ".join(list(found)[:3]) + ("..." if len(found) > 3 else "")
            theirs = ", ".join(self.blocks[:3]) + ("..." if len(self.blocks) > 3 else "")
            raise CompressError(f"the statistics are from another model (SE blocks {theirs}; this model has {ours}); {redo}")
        for b, block in found.items():
            if block.channels != self.channels[b]:
                raise CompressError(f"the statistics are from another model: {b} gates {self.channels[b]} channels there, "
                                    f"{block.channels} here (pruned since?); {redo}")
            if abs(_fingerprint(block) - self.fingerprints[b]) > 1e-6 * max(1.0, abs(self.fingerprints[b])):
                raise CompressError(f"the statistics are from other weights: {b}'s excitation weights changed since they "
                                    f"were recorded (trained or loaded since?); {redo}")
        return found

    def save(self, path: str | Path) -> None:
        torch.save({f.name: getattr(self, f.name) for f in fields(self)}, path)

    @classmethod
    def load(cls, path: str | Path) -> "ExcitationStats":
        data = torch.load(path, weights_only=True)
        data["input_size"] = tuple(data["input_size"])
        return cls(**data)


class _Sums:
    """Running per-class sums of each block's gate, in float64 (sums of squares for the spread)."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.counts = torch.zeros(0, dtype=torch.long)
        self.sum: dict[str, torch.Tensor] = {}
        self.sq: dict[str, torch.Tensor] = {}
        self.low: dict[str, torch.Tensor] = {}
        self.high: dict[str, torch.Tensor] = {}

    def _grow(self, classes: int, width: dict[str, int]) -> None:
        if classes <= self.counts.numel():
            return
        grown = torch.zeros(classes, dtype=torch.long)
        grown[: self.counts.numel()] = self.counts
        self.counts = grown
        for table in (self.sum, self.sq):
            for b in self.names:
                new = torch.zeros(classes, width[b], dtype=torch.float64)
                if b in table:
                    new[: table[b].shape[0]] = table[b]
                table[b] = new

    def add(self, gates: dict[str, torch.Tensor], y: torch.Tensor, classes: int) -> None:
        self._grow(classes, {b: g.shape[1] for b, g in gates.items()})
        self.counts += torch.bincount(y, minlength=self.counts.numel())
        for b in self.names:
            g = gates[b].double().cpu()
            self.sum[b].index_add_(0, y, g)
            self.sq[b].index_add_(0, y, g * g)
            lo, hi = g.min(0).values, g.max(0).values
            self.low[b] = torch.minimum(self.low[b], lo) if b in self.low else lo
            self.high[b] = torch.maximum(self.high[b], hi) if b in self.high else hi


def _std(sq: torch.Tensor, total: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    mean = total / n.clamp(min=1)
    return (sq / n.clamp(min=1) - mean * mean).clamp(min=0).sqrt()


def excitation_stats(model: nn.Module, data: Iterable, *, max_batches: int | None = None,
                     num_classes: int | None = None, blocks: Sequence[str] | None = None,
                     device: str | torch.device | None = None, min_classes: int = 2) -> ExcitationStats:
    """Run ``model`` (eval mode, no grad) over ``data``, batches of ``(images, labels)``, and collect
    each SE block's gate statistics. The model is not changed; every module's mode is restored.

    ``min_classes`` guards the calibration set: with fewer classes than that (a loader that was not
    shuffled, one class folder), channels that matter for the missing classes would look useless.
    """
    found = se_blocks(model)
    if not found:
        raise CompressError(f"{type(model).__name__} has no SqueezeExcite block: apply se_inject first "
                            "(se_inject.apply(model)) and train it")
    names = list(blocks) if blocks else list(found)
    for b in names:
        if b not in found:
            raise CompressError(f"no SE block at {b!r}; blocks are {', '.join(list(found)[:4])}, ...")
    if max_batches is not None and max_batches < 1:
        raise CompressError(f"max_batches={max_batches} must be >= 1 (or None: the whole loader)")
    params = next(model.parameters(), None)
    device = torch.device(device) if device is not None else (params.device if params is not None else torch.device("cpu"))
    sums, current = _Sums(names), {}
    input_size: tuple[int, ...] = ()

    def hook_for(b: str):
        def hook(module: SqueezeExcite, inputs: tuple) -> None:
            # from the block's input, before it runs, not read off its gate module: on CUDA the fused
            # kernels run the block without calling that module, and in inference the fused add may
            # write its output into that very input
            g = module.excitation(inputs[0])
            current[b] = g.detach().float().reshape(g.shape[0], -1)
        return hook

    handles = [found[b].register_forward_pre_hook(hook_for(b)) for b in names]
    try:
        with eval_mode(model), torch.no_grad():
            for i, batch in enumerate(data):
                if max_batches is not None and i >= max_batches:
                    break
                x, y = _split(batch)
                input_size = tuple(x.shape[1:])
                model(x.to(device))
                classes = num_classes or int(y.max()) + 1
                if int(y.min()) < 0 or int(y.max()) >= classes:
                    raise CompressError(f"calibration label {int(y.max()) if int(y.min()) >= 0 else int(y.min())} is "
                                        f"outside 0..{classes - 1}; pass num_classes= the model's number of classes")
                sums.add({b: current[b] for b in names}, y, classes)
    finally:
        for h in handles:
            h.remove()
    if sums.counts.sum() == 0:
        raise CompressError("the calibration data gave no batch: pass a few batches of (images, labels) from the training set")
    seen = int((sums.counts > 0).sum())
    if seen < min_classes:
        only = ", ".join(str(c) for c in torch.nonzero(sums.counts).flatten().tolist())
        raise CompressError(f"the calibration data holds only class {only}: use a few shuffled batches of the training "
                            f"set with at least {min_classes} classes (the gates differ by class, §6.3)")
    n, k = sums.counts.sum(), sums.counts.to(torch.float64)[:, None]
    mean = {b: (sums.sum[b].sum(0) / n).float() for b in names}
    std = {b: _std(sums.sq[b].sum(0), sums.sum[b].sum(0), n).float() for b in names}
    class_mean = {b: (sums.sum[b] / k.clamp(min=1)).float() for b in names}
    class_std = {b: _std(sums.sq[b], sums.sum[b], k).float() for b in names}
    return ExcitationStats(
        blocks=names, labels={b: found[b].label or b for b in names}, channels={b: found[b].channels for b in names},
        gate_scale={b: float(found[b].gate_scale) for b in names}, num_classes=sums.counts.numel(), counts=sums.counts,
        input_size=input_size, mean=mean, std=std, low={b: sums.low[b].float() for b in names},
        high={b: sums.high[b].float() for b in names}, class_mean=class_mean, class_std=class_std,
        fingerprints={b: _fingerprint(found[b]) for b in names})


def _split(batch: object) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[0], torch.Tensor):
        y = torch.as_tensor(batch[1]).to("cpu").long().flatten()
        if y.numel() == batch[0].shape[0]:
            return batch[0], y
    raise CompressError("calibration batches must be (images, labels) pairs with one integer label per image, "
                        f"got {type(batch).__name__}; pass a DataLoader over the labelled training set")
