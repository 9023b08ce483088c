"""Config -> model, optimizer, scheduler, loss, mixup, EMA: timm's factories, wired to our config.

    >>> from trainers.config import load_config
    >>> cfg = load_config(None, ["model.name=cifar_resnet8"])
    >>> model = build_model(cfg, num_classes=10, input_size=(1, 28, 28))
    >>> opt = build_optimizer(cfg, model, global_batch=128)
    >>> type(opt).__name__, opt.param_groups[0]["lr"]
    ('SGD', 0.1)
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import TrainConfig

__all__ = ["build_backbone", "add_se", "build_model", "scaled_lr", "build_optimizer", "build_scheduler", "build_loss", "build_mixup",
           "build_ema", "wrap_model"]


def build_backbone(cfg: TrainConfig, num_classes: int, in_chans: int) -> nn.Module:
    """The plain backbone of ``model.name`` (He-initialised when ``model.init: he``); a transformers
    classifier (``hf:``) inside :class:`backbones.hf.Logits`, which returns the logits tensor the loss takes."""
    from backbones import create_backbone, he_init_, resolve_backbone

    m = cfg.model
    kwargs = dict(m.kwargs)
    kwargs.setdefault("pretrained", False)  # nothing may download at run time
    model = create_backbone(m.name, num_classes=m.num_classes or num_classes, in_chans=m.in_chans or in_chans, **kwargs)
    if m.init == "he":
        he_init_(model)
    if resolve_backbone(m.name)[0] == "hf":
        from backbones.hf import Logits
        model = Logits(model)
    return model


def add_se(cfg: TrainConfig, model: nn.Module, input_size: tuple[int, int, int]) -> nn.Module:
    """``se_inject.apply(model, model.se.policy, **overrides)`` when ``model.se`` is set, else ``model``."""
    se = cfg.model.se
    if se is None:
        return model
    import se_inject  # the engine is only needed for SE variants
    return se_inject.apply(model, se.policy, input_size=tuple(input_size), **se.overrides)


def build_model(cfg: TrainConfig, num_classes: int, input_size: tuple[int, int, int]) -> nn.Module:
    """The backbone, plain or with SE (``model.se``)."""
    return add_se(cfg, build_backbone(cfg, num_classes, input_size[0]), input_size)


def scaled_lr(cfg: TrainConfig, global_batch: int) -> float:
    """``optim.lr`` scaled linearly from ``optim.lr_base_batch`` to ``global_batch`` (Goyal et al. 2017).

    The paper's 0.6 at 1024 images becomes 0.15 at 256.
    """
    if cfg.optim.lr_base_batch is None:
        return cfg.optim.lr
    return cfg.optim.lr * global_batch / cfg.optim.lr_base_batch


def build_optimizer(cfg: TrainConfig, model: nn.Module, global_batch: int) -> torch.optim.Optimizer:
    """timm's ``create_optimizer_v2`` (biases and norms without weight decay unless told otherwise)."""
    from timm.optim import create_optimizer_v2

    o = cfg.optim
    return create_optimizer_v2(model, opt=o.opt, lr=scaled_lr(cfg, global_batch), weight_decay=o.weight_decay,
                               momentum=o.momentum, filter_bias_and_bn=o.filter_bias_and_bn)


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, updates_per_epoch: int) -> Any:
    """timm's ``create_scheduler_v2``; None for ``sched.name: none``."""
    from timm.scheduler import create_scheduler_v2

    s = cfg.sched
    if s.name == "none":
        return None
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=s.name, num_epochs=cfg.run.epochs, decay_epochs=s.decay_epochs,
        decay_milestones=list(s.decay_milestones), decay_rate=s.decay_rate, min_lr=s.min_lr, warmup_lr=s.warmup_lr,
        warmup_epochs=s.warmup_epochs, step_on_epochs=not s.per_step, updates_per_epoch=updates_per_epoch)
    return scheduler


def build_mixup(cfg: TrainConfig, num_classes: int) -> Any:
    """timm's ``Mixup`` (mixup / cutmix with label smoothing folded in), or None when both are off."""
    loss = cfg.loss
    if loss.mixup <= 0 and loss.cutmix <= 0:
        return None
    from timm.data import Mixup
    return Mixup(mixup_alpha=loss.mixup, cutmix_alpha=loss.cutmix, prob=loss.mixup_prob,
                 label_smoothing=loss.label_smoothing, num_classes=num_classes)


def build_loss(cfg: TrainConfig, mixup: Any) -> nn.Module:
    """The training loss: soft-target CE under mixup (smoothing is in the targets), label-smoothed CE, or CE.

    Evaluation always uses plain cross-entropy.
    """
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if mixup is not None:
        return SoftTargetCrossEntropy()
    if cfg.loss.label_smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg.loss.label_smoothing)
    return nn.CrossEntropyLoss()


def build_ema(cfg: TrainConfig, model: nn.Module) -> Any:
    """timm's ``ModelEmaV3`` of the (unwrapped) model, or None."""
    if cfg.ema is None:
        return None
    from timm.utils import ModelEmaV3
    return ModelEmaV3(model, decay=cfg.ema.decay, use_warmup=cfg.ema.warmup)


def wrap_model(cfg: TrainConfig, model: nn.Module, device: torch.device, distributed: bool
               ) -> tuple[nn.Module, bool, str | None]:
    """What the training step calls: DDP around ``model`` on several ranks, then ``torch.compile``
    (``run.compile``), in mode ``reduce-overhead`` (CUDA graphs of forward and backward) under
    ``run.cuda_graphs`` on a GPU. Returns ``(wrapped, cuda_graphs_on, note)``; ``note`` says why
    ``run.cuda_graphs`` was ignored (a run on the CPU: ``run.device: auto`` found no GPU).

        >>> from trainers.config import load_config
        >>> cfg = load_config(None, ["model.name=cifar_resnet8", "run.cuda_graphs=true"])
        >>> wrapped, graphs, note = wrap_model(cfg, build_model(cfg, 10, (1, 28, 28)), torch.device("cpu"), False)
        >>> graphs, note
        (False, 'run.cuda_graphs ignored: this run is on the CPU (CUDA graphs need a GPU); the step runs as run.compile says')
    """
    wrapped: nn.Module = model
    if distributed:
        ids = [device.index] if device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    graphs, note = cfg.run.cuda_graphs, None
    if graphs and device.type != "cuda":
        graphs, note = False, ("run.cuda_graphs ignored: this run is on the CPU (CUDA graphs need a GPU); the step runs "
                               "as run.compile says")
    if graphs:
        # cudagraph trees: static shapes (drop_last keeps the batch fixed); a step that cannot be captured (a CPU
        # tensor, a dynamic shape) falls back to the compiled kernels without graphs, with torch's own warning.
        wrapped = torch.compile(wrapped, mode="reduce-overhead")
    elif cfg.run.compile:
        wrapped = torch.compile(wrapped)
    return wrapped, graphs, note
