"""Per-sample seeded augmentation and the tensor transforms used for small (28-32 px) images.

``SeededDataset`` draws sample i's augmentation in epoch e from an RNG seeded by ``(seed, e, i)``:
augmentation no longer depends on which worker loads the sample or where the run was resumed, and
the trainer's own RNG stream (dropout, mixup) is untouched. Transforms with a ``generator`` argument
(ours) get a private ``torch.Generator``; others (timm's, which draw from ``random`` and the global
torch RNG) run with the process RNGs seeded and then restored.

    >>> import torch
    >>> from trainers.data.synthetic import SyntheticImages
    >>> ds = SeededDataset(SyntheticImages(4), PadCropFlip(4), seed=0)
    >>> torch.equal(ds[(1, 2)][0], ds[(1, 2)][0]), torch.equal(ds[(1, 2)][0], ds[(2, 2)][0])
    (True, False)
"""
from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .samplers import mix_seed

__all__ = ["SeededDataset", "PadCropFlip", "TensorResizedCropFlip"]


class SeededDataset(Dataset):
    """``dataset`` (returning untransformed ``(image, target)``) with ``transform`` applied.

    Keys are ``(epoch, index)`` from :class:`~trainers.data.samplers.ResumableSampler` (seeded
    augmentation) or a plain ``index`` (no seeding: evaluation transforms are deterministic).
    """

    def __init__(self, dataset: Any, transform: Callable | None, seed: int) -> None:
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, int]:
        if isinstance(key, tuple):
            epoch, index = key
        else:
            epoch, index = None, key
        img, target = self.dataset[index]
        if self.transform is None:
            return img, target
        if epoch is None:
            return self.transform(img), target
        s = mix_seed(self.seed, epoch, index)
        if getattr(self.transform, "takes_generator", False):
            return self.transform(img, generator=torch.Generator().manual_seed(s)), target
        py, np_state, torch_state = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
        try:
            random.seed(s)
            np.random.seed(s % 2 ** 32)
            torch.random.default_generator.manual_seed(s)  # CPU only: never touches a CUDA generator
            img = self.transform(img)
        finally:
            random.setstate(py)
            np.random.set_state(np_state)
            torch.random.set_rng_state(torch_state)
        return img, target


class PadCropFlip:
    """Zero-pad by ``pad`` pixels, crop back to the original size at a random offset, flip with ``hflip``."""

    takes_generator = True

    def __init__(self, pad: int = 4, hflip: float = 0.5) -> None:
        self.pad, self.hflip = pad, hflip

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        h, w = img.shape[-2:]
        draws = torch.rand(3, generator=generator).tolist()
        if self.pad:
            i, j = (min(int(d * (2 * self.pad + 1)), 2 * self.pad) for d in draws[:2])
            out = img.new_zeros(img.shape)
            # the crop of the zero-padded image, without building the padded one
            top, left = i - self.pad, j - self.pad
            src = img[..., max(top, 0):h + min(top, 0), max(left, 0):w + min(left, 0)]
            out[..., max(-top, 0):max(-top, 0) + src.shape[-2], max(-left, 0):max(-left, 0) + src.shape[-1]] = src
            img = out
        if draws[2] < self.hflip:
            img = img.flip(-1)
        return img

    def __repr__(self) -> str:
        return f"PadCropFlip(pad={self.pad}, hflip={self.hflip})"


class TensorResizedCropFlip:
    """RandomResizedCrop (torchvision's parameters) + flip on uint8 tensors, for fixed-size images."""

    def __init__(self, size: tuple[int, int], scale: tuple[float, float], ratio: tuple[float, float],
                 hflip: float = 0.5) -> None:
        from torchvision.transforms import RandomResizedCrop
        self.rrc = RandomResizedCrop(size, scale=scale, ratio=ratio, antialias=True)
        self.hflip = hflip

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        img = self.rrc(img)  # draws from the global torch RNG, which SeededDataset seeds and restores
        if self.hflip and torch.rand(()) < self.hflip:
            img = img.flip(-1)
        return img.contiguous()
