"""The training batches of K stacked runs: ``(K, B, C, H, W)`` images and ``(K, B)`` targets, run *k*'s
slice being the batch its own loader would give it alone.

- :class:`DeviceBatches` (``data.on_device``): each run's epoch order and crop/flip draws are tables on
  the device, and the batch of step ``s`` is gathered from them by a device tensor ``s``: one gather
  for all runs, no host work, so it can sit inside the step's CUDA graph. Bit-identical to each run's
  :class:`~trainers.data.on_device.DeviceTrainLoader` (same order, same draws, same gather).
- :class:`HostBatches`: the runs' own loaders (DataLoader path) side by side, stacked per step.

    >>> import torch
    >>> from trainers.data.on_device import DeviceTrainLoader
    >>> from trainers.data.samplers import ResumableSampler, random_order
    >>> images, targets = torch.randint(0, 256, (32, 1, 6, 6), dtype=torch.uint8), torch.arange(32) % 10
    >>> loaders = [DeviceTrainLoader(images, targets, ResumableSampler(random_order(32), 32, 8, seed=s), pad=2,
    ...                              hflip=0.5, seed=s, mean=(0.5,), std=(0.25,)) for s in (0, 1)]
    >>> stacked = DeviceBatches(loaders, num_batches=4)
    >>> stacked.begin_epoch(3)
    >>> x, y = stacked.at(torch.tensor(2))
    >>> loaders[1].sampler.set_epoch(3); alone = list(loaders[1])[2]
    >>> x.shape, torch.equal(x[1], alone[0]), torch.equal(y[1], alone[1])
    (torch.Size([2, 8, 1, 6, 6]), True, True)
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..data.on_device import DeviceTrainLoader, draw_pad_crop_flip, normalise, pad_crop_flip
from ..errors import ConfigError

__all__ = ["DeviceBatches", "HostBatches", "stacked_channels_last"]


def stacked_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``(K, B, C, H, W)`` with the memory layout ``(B, H, W, K, C)``: under ``vmap`` a convolution folds the
    run dimension into its channels, ``(B, K * C, H, W)``, which this layout makes channels_last without a copy
    (the stacked form of ``x.contiguous(memory_format=torch.channels_last)``).

        >>> x = stacked_channels_last(torch.randn(2, 3, 4, 5, 5))
        >>> x.shape, x.movedim(0, 1).reshape(3, 8, 5, 5).is_contiguous(memory_format=torch.channels_last)
        (torch.Size([2, 3, 4, 5, 5]), True)
    """
    return x.permute(1, 3, 4, 0, 2).contiguous().permute(3, 0, 4, 1, 2)


def _same_data(a: DeviceTrainLoader, b: DeviceTrainLoader) -> bool:
    return a.padded is b.padded or (a.padded.shape == b.padded.shape and torch.equal(a.padded, b.padded)
                                    and torch.equal(a.targets, b.targets))


class DeviceBatches:
    """Batches of the runs whose :class:`DeviceTrainLoader` are ``loaders``, gathered on their device.

    The runs' data sets are kept once when equal (the same Fashion-MNIST for every seed); ``num_batches``
    is the steps of an epoch (``data.limit_train_batches`` applied)."""

    def __init__(self, loaders: Sequence[DeviceTrainLoader], num_batches: int) -> None:
        first = loaders[0]
        for lo in loaders[1:]:
            if (lo.pad, lo.hflip, lo.size, lo.sampler.batch_size, len(lo.targets)) != \
                    (first.pad, first.hflip, first.size, first.sampler.batch_size, len(first.targets)) \
                    or not torch.equal(lo.mean, first.mean) or not torch.equal(lo.std, first.std):
                raise ConfigError("stacked runs must share their data settings (size, pad, flip, batch size, mean, std)")
        self.loaders = list(loaders)
        self.k, self.batch, self.num_batches = len(loaders), first.sampler.batch_size, num_batches
        self.device = first.padded.device
        distinct: list[DeviceTrainLoader] = []  # the first loader of each distinct data set
        where: list[int] = []
        for lo in loaders:
            j = next((i for i, d in enumerate(distinct) if _same_data(d, lo)), None)
            if j is None:
                distinct.append(lo)
                j = len(distinct) - 1
            else:
                lo.padded, lo.targets = distinct[j].padded, distinct[j].targets  # one copy on the device, not K
            where.append(j)
        self.padded = torch.cat([d.padded for d in distinct]) if len(distinct) > 1 else first.padded
        self.targets = torch.cat([d.targets for d in distinct]) if len(distinct) > 1 else first.targets
        n = len(first.targets)
        self.base = torch.tensor([j * n for j in where], device=self.device).view(-1, 1)
        width = num_batches * self.batch
        self.order = torch.zeros(self.k, width, dtype=torch.long, device=self.device)
        self.y = torch.zeros(self.k, width, dtype=torch.long, device=self.device)
        self.draws = first.pad > 0 or first.hflip > 0
        if self.draws:
            self.top, self.left = torch.zeros_like(self.order), torch.zeros_like(self.order)
            self.flip = torch.zeros(self.k, width, dtype=torch.bool, device=self.device)
        self.columns = torch.arange(self.batch, device=self.device)

    def begin_epoch(self, epoch: int) -> None:
        """Fill the tables of ``epoch`` in place (a captured graph keeps reading them)."""
        width = self.num_batches * self.batch
        orders, tops, lefts, flips = [], [], [], []
        for lo in self.loaders:
            order = lo.sampler.shard(epoch)[:width]
            orders.append(order)
            if self.draws:
                d = draw_pad_crop_flip(len(lo.targets), lo.pad, lo.hflip, lo.seed, epoch)
                tops.append(d.top[order]), lefts.append(d.left[order]), flips.append(d.flip[order])
        order = torch.stack(orders).to(self.device) + self.base
        self.order.copy_(order)
        self.y.copy_(self.targets[order])
        if self.draws:
            self.top.copy_(torch.stack(tops)), self.left.copy_(torch.stack(lefts)), self.flip.copy_(torch.stack(flips))

    def at(self, step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch of step ``step`` (a 0-d device tensor: the batch index in the epoch) of every run."""
        cols = step * self.batch + self.columns
        index = self.order.index_select(1, cols).reshape(-1)
        if self.draws:
            x = pad_crop_flip(self.padded, index, self.top.index_select(1, cols).reshape(-1),
                              self.left.index_select(1, cols).reshape(-1), self.flip.index_select(1, cols).reshape(-1),
                              self.loaders[0].size)
        else:
            x = self.padded.index_select(0, index)
        first = self.loaders[0]
        x = normalise(x, first.mean, first.std)
        return x.view(self.k, self.batch, *x.shape[1:]), self.y.index_select(1, cols)

    def keep(self, runs: Sequence[int]) -> None:
        """Only ``runs`` from now on (a run left the group)."""
        index = torch.tensor(list(runs), dtype=torch.long, device=self.device)
        self.loaders = [self.loaders[i] for i in runs]
        self.k = len(runs)
        self.base, self.order, self.y = self.base[index], self.order[index], self.y[index]
        if self.draws:
            self.top, self.left, self.flip = self.top[index], self.left[index], self.flip[index]


class HostBatches:
    """The runs' own training loaders, one batch of each per step, stacked (the DataLoader path)."""

    def __init__(self, datas: Sequence[Any]) -> None:
        self.datas = list(datas)
        self.iters: list[Iterator] = []

    def begin_epoch(self, epoch: int, start_batch: int) -> None:
        for d in self.datas:
            d.train_sampler.set_epoch(epoch, start_batch=start_batch)
        self.iters = [iter(d.train_loader) for d in self.datas]

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [next(it) for it in self.iters]
        return torch.stack([x for x, _ in pairs]), torch.stack([y for _, y in pairs])

    def keep(self, runs: Sequence[int]) -> None:
        self.datas = [self.datas[i] for i in runs]
        self.iters = [self.iters[i] for i in runs] if self.iters else []
