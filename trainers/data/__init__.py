"""Data for the trainer: Fashion-MNIST (default), ImageFolder (ImageNet layout), synthetic; resumable samplers.

    >>> from trainers.data import build_data
    >>> from trainers.config import load_config
    >>> data = build_data(load_config(None, ["data.dataset=synthetic"]), rank=0, world_size=1)
    >>> data.num_classes, data.input_size, len(data.train_sampler)
    (10, (3, 32, 32), 1024)

Nothing here downloads: Fashion-MNIST is read from its idx files, ImageFolder from disk.
"""
from .build import Data, RawData, build_data, load_datasets, make_loaders, resolve_input
from .fashion_mnist import FashionMNIST, read_idx
from .samplers import EvalSampler, ResumableSampler, class_balanced_order, random_order
from .synthetic import SyntheticImages

__all__ = ["Data", "RawData", "build_data", "load_datasets", "make_loaders", "resolve_input", "FashionMNIST", "read_idx", "SyntheticImages", "ResumableSampler", "EvalSampler",
           "random_order", "class_balanced_order"]
