"""The whole data set on the run's device: batches gathered and augmented there, no DataLoader, no workers.

For data sets that fit in memory at a fixed size (Fashion-MNIST's 60,000 28x28 images are 47 MB of
uint8), ``data.on_device: true`` copies the images once to the device and makes each training batch
with a handful of tensor ops: one gather that indexes the batch's images, crops them out of the
zero-padded data set and flips them (the pad-crop + flip of :class:`~trainers.data.transforms.PadCropFlip`,
same semantics, batched), then the normalisation of timm's ``PrefetchLoader``. On a GPU a ResNet-20
step is bound by kernel launches and the CPU data pipeline; this takes the data pipeline away.

    >>> import torch
    >>> from trainers.data.samplers import ResumableSampler, random_order
    >>> images, targets = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8), torch.arange(64) % 10
    >>> sampler = ResumableSampler(random_order(64), 64, batch_size=16, seed=0)
    >>> loader = DeviceTrainLoader(images, targets, sampler, pad=2, hflip=0.5, seed=0, mean=(0.5,), std=(0.25,))
    >>> sampler.set_epoch(3)
    >>> x, y = next(iter(loader))
    >>> x.shape, x.dtype, len(loader)
    (torch.Size([16, 1, 8, 8]), torch.float32, 4)

Randomness, and why a resumed run is bit-identical: the sampler's order is a function of
``(seed, epoch)`` (:class:`~trainers.data.samplers.ResumableSampler`, shared with the DataLoader path,
so every rank gets the same shard either way), and the crop offsets and flips of epoch *e* are one
table over the whole data set drawn from a private generator seeded by ``(seed, e)``: sample *i*'s
augmentation depends on ``(seed, e, i)`` only, not on its rank, batch or where a run resumed. The
trainer's RNG streams (dropout, mixup, random erasing) are never drawn from, so nothing needs saving
beyond the epoch and batch the checkpoint already holds.

    >>> sampler.set_epoch(3); batches = list(loader)                  # the whole epoch
    >>> sampler.set_epoch(3, start_batch=2); x2, y2 = next(iter(loader))  # a run resumed at batch 2
    >>> torch.equal(x2, batches[2][0]), torch.equal(y2, batches[2][1])
    (True, True)
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from .samplers import ResumableSampler, mix_seed

__all__ = ["AugmentDraws", "draw_pad_crop_flip", "pad_crop_flip", "DeviceTrainLoader", "DeviceEvalLoader",
           "normalise"]

#: The third part of the augmentation table's seed ``(seed, epoch, AUG_STREAM)``: distinct from the per-sample
#: seeds ``(seed, epoch, index >= 0)`` of the DataLoader path, so the two never share a stream.
AUG_STREAM = -1


class AugmentDraws:
    """Per-sample crop offsets and flips of one epoch: ``top``, ``left`` in ``0..2 * pad``, ``flip`` bool."""

    def __init__(self, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor) -> None:
        self.top, self.left, self.flip = top, left, flip

    def to(self, device: torch.device) -> "AugmentDraws":
        return AugmentDraws(self.top.to(device), self.left.to(device), self.flip.to(device))


def draw_pad_crop_flip(num_samples: int, pad: int, hflip: float, seed: int, epoch: int) -> AugmentDraws:
    """Epoch ``epoch``'s augmentation of every sample, from a CPU generator seeded by ``(seed, epoch)``.

    The same distribution as :class:`~trainers.data.transforms.PadCropFlip`: offsets uniform over
    ``0..2 * pad``, a flip with probability ``hflip``. Drawn on the CPU, so a run on a GPU and one on
    the CPU augment alike.

        >>> d = draw_pad_crop_flip(6, pad=2, hflip=0.5, seed=0, epoch=0)
        >>> d.top.tolist() == draw_pad_crop_flip(6, 2, 0.5, seed=0, epoch=0).top.tolist(), int(d.top.max()) <= 4
        (True, True)
    """
    g = torch.Generator().manual_seed(mix_seed(seed, epoch, AUG_STREAM))
    offsets = torch.randint(0, 2 * pad + 1, (2, num_samples), generator=g)
    flip = torch.rand(num_samples, generator=g) < hflip
    return AugmentDraws(offsets[0], offsets[1], flip)


def pad_crop_flip(padded: torch.Tensor, index: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
                  flip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Images ``index`` of ``padded`` (the data set zero-padded by ``pad`` on each side), each cropped to
    ``size`` at its own ``(top, left)`` and mirrored where ``flip``: one gather, any device.

    Image *b* of the result is ``PadCropFlip`` of image ``index[b]`` with offsets ``top[b], left[b]``
    and its flip: ``out[b, c, r, w] = padded[index[b], c, top[b] + r, left[b] + w']`` with ``w' = W - 1 - w``
    when flipped (the flip folded into the column index).

        >>> x = torch.arange(4, dtype=torch.uint8).view(1, 1, 2, 2) + 1            # [[1, 2], [3, 4]]
        >>> p = torch.nn.functional.pad(x, (1, 1, 1, 1))
        >>> one = torch.tensor([0])
        >>> pad_crop_flip(p, one, torch.tensor([1]), torch.tensor([1]), torch.tensor([False]), (2, 2)).tolist()
        [[[[1, 2], [3, 4]]]]
        >>> pad_crop_flip(p, one, torch.tensor([0]), torch.tensor([2]), torch.tensor([True]), (2, 2)).tolist()
        [[[[0, 0], [0, 2]]]]
    """
    n, c, hp, wp = padded.shape
    h, w = size
    dev = padded.device
    rows = top[:, None] + torch.arange(h, device=dev)                                   # (B, H)
    step = torch.arange(w, device=dev)
    cols = left[:, None] + torch.where(flip[:, None], (w - 1) - step, step)             # (B, W)
    pixel = rows[:, :, None] * wp + cols[:, None, :]                                    # (B, H, W)
    base = index[:, None] * (c * hp * wp) + torch.arange(c, device=dev)[None, :] * (hp * wp)  # (B, C)
    flat = (base[:, :, None, None] + pixel[:, None, :, :]).reshape(-1)
    return padded.reshape(-1).index_select(0, flat).view(len(index), c, h, w)  # index_select: ~6x faster than [] on CPU


def normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 -> float, ``(x - 255 mean) / (255 std)``: the ops of timm's ``PrefetchLoader``, so a batch is
    bit-identical to the DataLoader path's for the same pixels."""
    return x.to(torch.float32).sub_(mean).div_(std)


def _stats(values: Sequence[float], device: torch.device) -> torch.Tensor:
    return torch.tensor([v * 255 for v in values], device=device, dtype=torch.float32).view(1, -1, 1, 1)


class DeviceTrainLoader:
    """Training batches of this rank's shard (``sampler``), gathered from ``images`` on their device.

    ``images`` (N, C, H, W) uint8 and ``targets`` (N,) are moved to ``device`` once; ``pad`` / ``hflip``
    are ``data.aug.pad`` (0: no crop) and ``data.aug.hflip``. Iterating follows ``sampler.set_epoch``
    (epoch and start batch), as the DataLoader path does.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, sampler: ResumableSampler, *, pad: int,
                 hflip: float, seed: int, mean: Sequence[float], std: Sequence[float],
                 device: torch.device | None = None) -> None:
        device = device or torch.device("cpu")
        self.size = tuple(images.shape[-2:])
        self.padded = torch.nn.functional.pad(images.to(device), (pad, pad, pad, pad)) if pad else images.to(device)
        self.targets = targets.to(device)
        self.sampler, self.pad, self.hflip, self.seed, self.device = sampler, pad, hflip, seed, device
        self.mean, self.std = _stats(mean, device), _stats(std, device)

    def __len__(self) -> int:
        return self.sampler.batches_per_epoch - self.sampler.start_batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        s = self.sampler
        epoch, batch = s.epoch, s.batch_size
        order = s.shard(epoch)[s.start_batch * batch:].to(self.device)
        targets = self.targets.index_select(0, order)  # the epoch's targets, draws in batch order: each batch slices
        draws = None
        if self.pad or self.hflip:
            d = draw_pad_crop_flip(len(self.targets), self.pad, self.hflip, self.seed, epoch).to(self.device)
            draws = AugmentDraws(d.top.index_select(0, order), d.left.index_select(0, order), d.flip.index_select(0, order))
        for start in range(0, len(order) - batch + 1, batch):
            end = start + batch
            index = order[start:end]
            if draws is None:
                x = self.padded.index_select(0, index)
            else:
                x = pad_crop_flip(self.padded, index, draws.top[start:end], draws.left[start:end], draws.flip[start:end],
                                  self.size)
            yield normalise(x, self.mean, self.std), targets[start:end]


class DeviceEvalLoader:
    """Evaluation batches (no augmentation) of the images ``rank, rank + world_size, ...``, as
    :class:`~trainers.data.samplers.EvalSampler` gives the DataLoader path."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, batch_size: int, *, mean: Sequence[float],
                 std: Sequence[float], rank: int = 0, world_size: int = 1, device: torch.device | None = None) -> None:
        device = device or torch.device("cpu")
        self.images = images[rank::world_size].to(device)
        self.targets = targets[rank::world_size].to(device)
        self.batch_size = batch_size
        self.mean, self.std = _stats(mean, device), _stats(std, device)

    def __len__(self) -> int:
        return -(-len(self.targets) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.targets), self.batch_size):
            end = start + self.batch_size
            yield normalise(self.images[start:end], self.mean, self.std), self.targets[start:end]
