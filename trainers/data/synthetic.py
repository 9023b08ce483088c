"""Synthetic images for smoke tests and throughput: deterministic, learnable, nothing on disk.

    >>> ds = SyntheticImages(8, num_classes=4, size=(3, 16, 16))
    >>> ds[5][0].shape, ds[5][1]
    (torch.Size([3, 16, 16]), 1)
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

__all__ = ["SyntheticImages"]


class SyntheticImages(Dataset):
    """Image ``i`` is class ``i % num_classes``: noise around a class-specific brightness, so loss can fall."""

    def __init__(self, num_samples: int, num_classes: int = 10, size: tuple[int, int, int] = (3, 32, 32),
                 seed: int = 0) -> None:
        self.num_samples, self.num_classes, self.size, self.seed = num_samples, num_classes, tuple(size), seed
        self.targets = torch.arange(num_samples) % num_classes

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        target = int(self.targets[index])
        level = 255.0 * (target + 0.5) / self.num_classes
        img = (level + 40.0 * torch.randn(self.size, generator=g)).clamp_(0, 255).to(torch.uint8)
        return img, target
