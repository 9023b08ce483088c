"""Samplers that shard one global order across ranks and can start mid-epoch.

Every rank computes the same global order for an epoch from ``(seed, epoch)`` alone, takes the
positions ``rank, rank + world_size, ...`` (disjoint shards, like ``DistributedSampler``), trims it to
whole batches, and can skip the batches a resumed run has already trained on. So a run killed at
batch k of epoch e and resumed continues with batch k: nothing skipped, nothing repeated.

    >>> s = ResumableSampler(random_order(10), num_samples=10, batch_size=2, seed=0, rank=0, world_size=1)
    >>> s.set_epoch(3); full = [i for _, i in s]
    >>> s.set_epoch(3, start_batch=2); [i for _, i in s] == full[4:]
    True

Each yielded item is ``(epoch, index)`` so the dataset can seed that sample's augmentation from
``(seed, epoch, index)`` (see ``transforms.SeededDataset``), whichever worker loads it.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["ResumableSampler", "EvalSampler", "random_order", "class_balanced_order", "mix_seed"]

#: (epoch generator) -> global order of dataset indices for that epoch.
OrderFn = Callable[[torch.Generator], torch.Tensor]


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (seed, epoch, index, ...), the same on every machine."""
    digest = hashlib.blake2b(b":".join(str(int(p)).encode() for p in parts), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2 ** 63 - 1)


def random_order(n: int) -> OrderFn:
    """A fresh permutation of ``range(n)`` each epoch."""
    return lambda g: torch.randperm(n, generator=g)


def class_balanced_order(targets: torch.Tensor, n: int | None = None, world_size: int = 1) -> OrderFn:
    """Class-aware sampling (Shen et al. 2016, cited by the SE paper §5): classes in shuffled rounds.

    The epoch is ``n`` draws (default: the data set size). Each rank's positions (``rank::world_size``
    of the global order) run through shuffled rounds of all classes, and each draw takes the next image
    of its class from that class's own shuffled list (reshuffled whenever it runs out). Every class is
    drawn equally often whatever its size, and every rank's batch of B images holds each of the C
    classes ``B // C`` or ``B // C + 1`` times.

        >>> labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 2])
        >>> order = class_balanced_order(labels)(torch.Generator().manual_seed(0))
        >>> sorted(torch.bincount(labels[order]).tolist())  # 8 draws over 3 classes, whatever their sizes
        [2, 3, 3]
    """
    targets = torch.as_tensor(targets).long()
    classes, counts = torch.unique(targets, return_counts=True)
    members = torch.argsort(targets, stable=True).split(counts.tolist())
    n = len(targets) if n is None else n

    def order(g: torch.Generator) -> torch.Tensor:
        k = len(classes)
        per_rank = math.ceil(n / world_size)
        rounds = math.ceil(per_rank / k)
        # (world_size, per_rank) class sequences, interleaved so rank r owns positions r, r + world_size, ...
        seqs = torch.stack([torch.randperm(k, generator=g) for _ in range(world_size * rounds)])
        class_seq = seqs.reshape(world_size, rounds * k)[:, :per_rank].t().flatten()[:n]
        out = torch.empty(n, dtype=torch.long)
        by_class = torch.argsort(class_seq, stable=True).split(torch.bincount(class_seq, minlength=k).tolist())
        for c, positions in enumerate(by_class):
            pool = members[c]
            reps = math.ceil(len(positions) / len(pool))
            if reps:
                picks = torch.cat([torch.randperm(len(pool), generator=g) for _ in range(reps)])[:len(positions)]
                out[positions] = pool[picks]
        return out

    return order


class ResumableSampler(Sampler[tuple[int, int]]):
    """This rank's shard of the epoch's global order, whole batches only, from batch ``start_batch`` on."""

    def __init__(self, order: OrderFn, num_samples: int, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1) -> None:
        self.order, self.num_samples, self.batch_size = order, num_samples, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.start_batch = 0, 0
        self.batches_per_epoch = num_samples // (batch_size * world_size)
        if self.batches_per_epoch == 0:
            raise ValueError(f"{num_samples} samples cannot fill one batch of {batch_size} on each of {world_size} ranks")

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Iterate epoch ``epoch``, skipping its first ``start_batch`` batches (a resumed run's position)."""
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch {start_batch} outside 0..{self.batches_per_epoch}")
        self.epoch, self.start_batch = epoch, start_batch

    def shard(self, epoch: int) -> torch.Tensor:
        """All of this rank's indices for ``epoch`` (before skipping)."""
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        order = self.order(g)
        used = self.batches_per_epoch * self.batch_size * self.world_size
        return order[:used][self.rank::self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = self.shard(self.epoch)[self.start_batch * self.batch_size:]
        epoch = self.epoch
        return iter([(epoch, int(i)) for i in indices])

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


class EvalSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, ...``: disjoint, no padding, so summed metrics count each image once."""

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = range(rank, num_samples, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
