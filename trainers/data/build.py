"""Config -> datasets, transforms, samplers and loaders for one rank.

Training batches come out of timm's ``PrefetchLoader`` as float tensors on the device, normalised
there (``(x - mean) / std`` on uint8 input, timm's fast path); labels as int64.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from se_inject.errors import first_line

from ..config import TrainConfig
from ..errors import ConfigError, DataError
from . import fashion_mnist
from .samplers import EvalSampler, ResumableSampler, class_balanced_order, random_order
from .synthetic import SyntheticImages
from .transforms import PadCropFlip, SeededDataset, TensorResizedCropFlip

__all__ = ["Data", "RawData", "DATASETS", "load_datasets", "resolve_input", "make_loaders", "build_data"]


@dataclass
class RawData:
    """The untransformed datasets and what the model needs to know before it is built."""
    train: Any
    val: Any
    num_classes: int
    native_size: tuple[int, int, int] | None  # None: images differ in size (imagefolder)

    @property
    def in_chans(self) -> int | None:
        return None if self.native_size is None else self.native_size[0]


@dataclass
class Data:
    """What the loop needs from the data side (loaders yield ``(images, targets)`` on ``device``)."""
    train_loader: Any
    val_loader: Any
    train_sampler: ResumableSampler
    num_classes: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float | None
    num_train: int
    num_val: int

    @property
    def batches_per_epoch(self) -> int:
        return self.train_sampler.batches_per_epoch


def _fashion_mnist(cfg: TrainConfig) -> RawData:
    root = cfg.data.root or fashion_mnist.DEFAULT_ROOT
    return RawData(fashion_mnist.FashionMNIST(root, True), fashion_mnist.FashionMNIST(root, False), 10, (1, 28, 28))


def _synthetic(cfg: TrainConfig) -> RawData:
    s = cfg.data.synthetic
    return RawData(SyntheticImages(s.train_samples, s.num_classes, s.size, seed=cfg.run.seed),
                   SyntheticImages(s.val_samples, s.num_classes, s.size, seed=cfg.run.seed + 1), s.num_classes,
                   tuple(s.size))


def _imagefolder(cfg: TrainConfig) -> RawData:
    from timm.data import create_dataset
    d = cfg.data
    datasets = []
    for split in (d.train_split, d.val_split):
        try:
            ds = create_dataset("", root=d.root, split=split, search_split=True)
        except Exception as e:  # timm raises RuntimeError/FileNotFoundError/AssertionError for empty or missing folders
            raise DataError(f"imagefolder: cannot read split {split!r} under {d.root} ({first_line(e, with_type=False)}); "
                            f"expected {d.root}/{split}/<class>/<image>") from None
        if len(ds) == 0:
            raise DataError(f"imagefolder: {d.root}/{split} holds no images; expected {d.root}/{split}/<class>/<image>")
        datasets.append(ds)
    return RawData(datasets[0], datasets[1], len(datasets[0].reader.class_to_idx), None)


#: ``data.dataset`` -> loader of the (untransformed) training and validation sets.
DATASETS: dict[str, Callable[[TrainConfig], RawData]] = {
    "fashion-mnist": _fashion_mnist,
    "imagefolder": _imagefolder,
    "synthetic": _synthetic,
}


def load_datasets(cfg: TrainConfig) -> RawData:
    """The training and validation sets of ``cfg.data`` (read from disk or generated; never downloaded)."""
    return DATASETS[cfg.data.dataset](cfg)


def _targets(ds: Any) -> torch.Tensor:
    if hasattr(ds, "targets"):
        return torch.as_tensor(ds.targets)
    return torch.tensor([t for _, t in ds.reader.samples])


def _resolve(cfg: TrainConfig, native: tuple[int, int, int] | None, model: nn.Module | None) -> dict[str, Any]:
    d = cfg.data
    if native is not None:
        mean = fashion_mnist.MEAN if d.dataset == "fashion-mnist" else (0.5,) * native[0]
        std = fashion_mnist.STD if d.dataset == "fashion-mnist" else (0.25,) * native[0]
        return {"input_size": d.input_size or native, "mean": d.mean or mean, "std": d.std or std,
                "crop_pct": d.crop_pct, "interpolation": d.interpolation}
    from timm.data import resolve_data_config
    args = {"input_size": d.input_size, "mean": d.mean, "std": d.std, "crop_pct": d.crop_pct,
            "interpolation": d.interpolation, "in_chans": cfg.model.in_chans}
    return resolve_data_config(args={k: v for k, v in args.items() if v is not None}, model=model)


def _transforms(cfg: TrainConfig, native: tuple[int, int, int] | None, rc: dict[str, Any]) -> tuple[Any, Any]:
    """(train transform, eval transform), both ending in uint8 CHW tensors (timm's prefetcher contract)."""
    aug = cfg.data.aug
    size = tuple(rc["input_size"])
    crop = aug.crop if aug.crop != "auto" else ("pad" if native is not None else "rrc")
    if native is not None:
        resize = None
        if tuple(size[1:]) != tuple(native[1:]):
            if crop == "pad":
                raise ConfigError(f"data.input_size = {list(size)}: the pad crop keeps the images' size "
                                  f"{list(native)}; set data.aug.crop=rrc or data.input_size=null")
            from torchvision.transforms import Resize
            resize = Resize(size[1:], antialias=True)
        if crop == "rrc":
            train = TensorResizedCropFlip(size[1:], aug.scale, aug.ratio, aug.hflip)
        else:
            train = PadCropFlip(aug.pad if crop == "pad" else 0, aug.hflip)
            if resize is not None:
                from torchvision.transforms import Compose
                train = Compose([resize, train])
        return train, resize
    from timm.data import create_transform
    common = dict(interpolation=rc["interpolation"], mean=rc["mean"], std=rc["std"], use_prefetcher=True)
    val = create_transform(size, is_training=False, crop_pct=rc["crop_pct"], **common)
    if crop == "none":
        return val, val
    train = create_transform(size, is_training=True, scale=aug.scale, ratio=aug.ratio, hflip=aug.hflip,
                             color_jitter=aug.color_jitter, auto_augment=aug.auto_augment, **common)
    return train, val


def resolve_input(cfg: TrainConfig, raw: RawData, model: nn.Module | None = None) -> dict[str, Any]:
    """Input size, mean, std, crop_pct and interpolation: the config's, else the data set's, else the model's."""
    rc = _resolve(cfg, raw.native_size, model)
    if len(rc["mean"]) != rc["input_size"][0] or len(rc["std"]) != rc["input_size"][0]:
        raise ConfigError(f"data.mean / data.std have {len(rc['mean'])} / {len(rc['std'])} values for "
                          f"{rc['input_size'][0]}-channel input; give one per channel")
    return rc


def build_data(cfg: TrainConfig, rank: int, world_size: int, device: torch.device | None = None,
               model: nn.Module | None = None) -> Data:
    """Datasets, transforms, samplers and loaders of this rank; nothing is downloaded."""
    return make_loaders(cfg, load_datasets(cfg), rank, world_size, device, model)


def make_loaders(cfg: TrainConfig, raw: RawData, rank: int, world_size: int, device: torch.device | None = None,
                 model: nn.Module | None = None) -> Data:
    """Transforms, samplers and loaders of this rank over ``raw``.

    ``model`` only informs ImageFolder defaults (input size, mean, crop) through timm's
    ``resolve_data_config``.
    """
    from timm.data.loader import PrefetchLoader, fast_collate

    device = device or torch.device("cpu")
    train_raw, val_raw, num_classes, native = raw.train, raw.val, raw.num_classes, raw.native_size
    rc = resolve_input(cfg, raw, model)
    if cfg.data.on_device:
        return _on_device(cfg, raw, rc, rank, world_size, device)
    train_tf, val_tf = _transforms(cfg, native, rc)
    if hasattr(train_raw, "transform"):  # timm ImageDataset: we apply transforms ourselves, seeded per sample
        train_raw.transform = val_raw.transform = None
    train_ds = SeededDataset(train_raw, train_tf, cfg.run.seed)
    val_ds = SeededDataset(val_raw, val_tf, cfg.run.seed)

    sampler = _sampler(cfg, train_raw, rank, world_size)

    workers = cfg.data.workers
    loader_args = dict(num_workers=workers, collate_fn=fast_collate, pin_memory=device.type == "cuda",
                       persistent_workers=workers > 0, generator=torch.Generator())
    # generator=: the loader draws its worker base seed from its own RNG, not the global one, so
    # creating an iterator (fresh or resumed) leaves the training RNG stream unchanged.
    train_loader = DataLoader(train_ds, batch_size=cfg.data.batch_size, sampler=sampler, drop_last=True, **loader_args)
    val_loader = DataLoader(val_ds, batch_size=cfg.eval_batch_size, sampler=EvalSampler(len(val_raw), rank, world_size),
                            drop_last=False, **loader_args)
    channels = rc["input_size"][0]
    prefetch = dict(mean=rc["mean"], std=rc["std"], channels=channels, device=device)
    # Random erasing is left to the step loop: PrefetchLoader would draw it one batch ahead, out of
    # step with the RNG state a mid-epoch checkpoint captures.
    return Data(
        train_loader=PrefetchLoader(train_loader, **prefetch),
        val_loader=PrefetchLoader(val_loader, **prefetch),
        train_sampler=sampler, num_classes=num_classes, input_size=tuple(rc["input_size"]),
        mean=tuple(rc["mean"]), std=tuple(rc["std"]), crop_pct=rc.get("crop_pct"),
        num_train=len(train_raw), num_val=len(val_raw),
    )


def _sampler(cfg: TrainConfig, train_raw: Any, rank: int, world_size: int) -> ResumableSampler:
    """This rank's shard of each epoch's order: the same for the DataLoader and the on-device path."""
    if cfg.data.sampler == "class-balanced":
        order = class_balanced_order(_targets(train_raw), world_size=world_size)
    else:
        order = random_order(len(train_raw))
    try:
        return ResumableSampler(order, len(train_raw), cfg.data.batch_size, cfg.run.seed, rank, world_size)
    except ValueError as e:
        raise ConfigError(f"data.batch_size = {cfg.data.batch_size}: {e}") from None


def _in_memory(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images (N, C, H, W), int64 targets) of a fixed-size data set, read once."""
    if isinstance(getattr(ds, "images", None), torch.Tensor):
        return ds.images, torch.as_tensor(ds.targets).long()
    pairs = [ds[i] for i in range(len(ds))]
    return torch.stack([img for img, _ in pairs]), torch.tensor([t for _, t in pairs], dtype=torch.long)


def _on_device(cfg: TrainConfig, raw: RawData, rc: dict[str, Any], rank: int, world_size: int,
               device: torch.device) -> Data:
    """``data.on_device``: both splits held on ``device``, batches gathered and augmented there."""
    from .on_device import DeviceEvalLoader, DeviceTrainLoader

    aug, native, size = cfg.data.aug, raw.native_size, tuple(rc["input_size"])
    if native is None or tuple(size) != tuple(native):
        raise ConfigError(f"data.on_device keeps the images at their own size {list(native or ())}, but data.input_size "
                          f"= {list(size)}: set data.input_size=null or data.on_device=false")
    sampler = _sampler(cfg, raw.train, rank, world_size)
    images, targets = _in_memory(raw.train)
    val_images, val_targets = _in_memory(raw.val)
    stats = dict(mean=rc["mean"], std=rc["std"], device=device)
    train = DeviceTrainLoader(images, targets, sampler, pad=aug.pad if aug.crop in ("auto", "pad") else 0,
                              hflip=aug.hflip, seed=cfg.run.seed, **stats)
    val = DeviceEvalLoader(val_images, val_targets, cfg.eval_batch_size, rank=rank, world_size=world_size, **stats)
    return Data(train_loader=train, val_loader=val, train_sampler=sampler, num_classes=raw.num_classes,
                input_size=size, mean=tuple(rc["mean"]), std=tuple(rc["std"]), crop_pct=rc.get("crop_pct"),
                num_train=len(raw.train), num_val=len(raw.val))
