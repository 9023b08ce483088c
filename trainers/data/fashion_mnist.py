"""Fashion-MNIST from its four idx files (``.gz`` or raw), in memory as uint8 tensors.

    >>> ds = FashionMNIST("/usr/share/datasets/fashion-mnist", train=False)
    >>> len(ds), ds[0][0].shape, ds[0][0].dtype, ds[0][1]
    (10000, torch.Size([1, 28, 28]), torch.uint8, 9)

Installed by ``apt-get install dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``); any
directory holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` works. Never downloads.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError

__all__ = ["FashionMNIST", "read_idx", "DEFAULT_ROOT", "MEAN", "STD", "CLASSES"]

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
#: Per-channel statistics of the 60,000 training images (0-1 scale).
MEAN, STD = (0.2860,), (0.3530,)
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
#: idx type code -> numpy dtype (big-endian), from the MNIST file format description.
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise DataError(f"fashion-mnist: {root} has no {stem}[.gz]; install the data set with "
                    f"`apt-get install dataset-fashion-mnist` or set data.root to a directory holding the four idx files")


def read_idx(path: str | Path) -> torch.Tensor:
    """An idx file (gzip-compressed or not) as a tensor of its declared shape and type."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: not a readable gzip file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an idx file (bad magic number)")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count, offset = int(np.prod(dims)), 4 + 4 * ndim
    if len(raw) < offset + count * dtype.itemsize:
        raise DataError(f"{path}: truncated idx file (expected {count} values of shape {dims})")
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
    return torch.from_numpy(data.astype(dtype.newbyteorder("="))).reshape(dims)


class FashionMNIST(Dataset):
    """``(uint8 image (1, 28, 28), label)`` pairs; ``train=False`` is the 10,000-image test set."""

    def __init__(self, root: str | Path | None = None, train: bool = True) -> None:
        root = Path(root or DEFAULT_ROOT)
        if not root.is_dir():
            raise DataError(f"fashion-mnist: {root} is not a directory; install the data set with "
                            f"`apt-get install dataset-fashion-mnist` or set data.root")
        split = "train" if train else "t10k"
        self.images = read_idx(_find(root, f"{split}-images-idx3-ubyte")).unsqueeze(1).contiguous()
        self.targets = read_idx(_find(root, f"{split}-labels-idx1-ubyte")).long()
        if len(self.images) != len(self.targets):
            raise DataError(f"fashion-mnist: {root}: {len(self.images)} {split} images but {len(self.targets)} labels")
        self.classes = CLASSES

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.targets[index])
