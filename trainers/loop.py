"""The training step loop and evaluation: what runs between two checkpoints.

``train_one_epoch`` takes any iterable of ``(images, targets)`` already on the device (the trainer
passes timm's ``PrefetchLoader``, the throughput benchmark a list of in-memory batches), so the loop
measured is the loop that trains.

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    >>> ctx = StepContext(model=model, module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
    ...                   loss_fn=nn.CrossEntropyLoss(), device=torch.device("cpu"))
    >>> progress = EpochProgress(epoch=0)
    >>> batches = [(torch.randn(8, 4), torch.randint(0, 2, (8,)))] * 3
    >>> train_one_epoch(ctx, batches, progress, num_batches=3)
    >>> progress.batch, progress.num_updates, progress.samples
    (3, 3, 24)
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import all_reduce_sum

__all__ = ["StepContext", "EpochProgress", "train_one_epoch", "evaluate", "topk_correct"]


@dataclass
class StepContext:
    """Everything one optimizer step touches."""
    model: nn.Module                     # what forward calls: DDP- and/or compile-wrapped
    module: nn.Module                    # the bare model: EMA, checkpoints, evaluation
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    device: torch.device
    scheduler: Any = None                # timm scheduler, stepped per update when ``per_step_schedule``
    per_step_schedule: bool = True
    scaler: Any = None                   # torch.amp.GradScaler for fp16
    ema: Any = None                      # timm ModelEmaV3
    mixup: Any = None                    # timm Mixup
    random_erasing: Any = None           # timm RandomErasing, on the device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    accum_steps: int = 1
    clip_grad: float | None = None
    clip_mode: str = "norm"
    world_size: int = 1


@dataclass
class EpochProgress:
    """Where the run is, and this rank's running sums for the current epoch; saved in checkpoints."""
    epoch: int
    batch: int = 0                       # micro-batches done in this epoch
    num_updates: int = 0                 # optimizer steps since the start of the run
    loss_sum: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.float64))
    samples: int = 0                     # this rank's images this epoch
    train_time: float = 0.0              # seconds in the step loop this epoch (over resumes)

    def to_state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch": self.batch, "num_updates": self.num_updates,
                "loss_sum": self.loss_sum.detach().cpu().clone(), "samples": self.samples, "train_time": self.train_time}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> "EpochProgress":
        return cls(state["epoch"], state["batch"], state["num_updates"], state["loss_sum"].to(device),
                   state["samples"], state["train_time"])


def _autocast(ctx: StepContext) -> contextlib.AbstractContextManager:
    if ctx.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(ctx.device.type, dtype=ctx.amp_dtype)


def train_one_epoch(ctx: StepContext, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], progress: EpochProgress,
                    num_batches: int, *, on_update: Callable[[EpochProgress], None] | None = None,
                    bar: Any = None, log_every: int = 20) -> None:
    """Train on ``batches`` until ``progress.batch == num_batches`` (micro-batches of this epoch).

    ``on_update`` runs after every optimizer step (the trainer's mid-epoch checkpoint); its time is
    not counted in ``progress.train_time``. ``bar`` (tqdm) gets loss, lr and img/s every ``log_every``
    steps, the only points where the loop waits for the device.
    """
    from timm.utils import dispatch_clip_grad

    ctx.model.train()
    if progress.loss_sum.device != ctx.device:
        progress.loss_sum = progress.loss_sum.to(ctx.device)
    params = [p for p in ctx.module.parameters() if p.requires_grad] if ctx.clip_grad else []
    last_log_samples, last_log_time = progress.samples, time.perf_counter()
    start = time.perf_counter()
    for x, y in batches:
        if progress.batch >= num_batches:
            break
        if ctx.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if ctx.random_erasing is not None:
            x = ctx.random_erasing(x)
        target = y
        if ctx.mixup is not None:
            x, target = ctx.mixup(x, y)
        boundary = (progress.batch + 1) % ctx.accum_steps == 0
        # Between accumulation boundaries DDP must not all-reduce: gradients add up locally first.
        sync = contextlib.nullcontext() if boundary or not hasattr(ctx.model, "no_sync") else ctx.model.no_sync()
        with sync:
            with _autocast(ctx):
                loss = ctx.loss_fn(ctx.model(x), target)
            if progress.batch % ctx.accum_steps == 0:
                # Freed here, just before backward, rather than after the step: backward then gets the
                # blocks the old gradients held (after the step, the forward would take them and
                # backward would fault in fresh memory: 3-5 % slower on CPU).
                ctx.optimizer.zero_grad(set_to_none=True)
            scaled = loss / ctx.accum_steps if ctx.accum_steps > 1 else loss
            (ctx.scaler.scale(scaled) if ctx.scaler is not None else scaled).backward()
        progress.loss_sum.add_(loss.detach(), alpha=x.shape[0])  # float64 sum: one op, no sync
        progress.samples += x.shape[0]
        progress.batch += 1
        if bar is not None:
            bar.update(1)
        if not boundary:
            continue
        if ctx.clip_grad:
            if ctx.scaler is not None:
                ctx.scaler.unscale_(ctx.optimizer)
            dispatch_clip_grad(params, ctx.clip_grad, mode=ctx.clip_mode)
        if ctx.scaler is not None:
            ctx.scaler.step(ctx.optimizer)
            ctx.scaler.update()
        else:
            ctx.optimizer.step()
        progress.num_updates += 1
        if ctx.ema is not None:
            ctx.ema.update(ctx.module, step=progress.num_updates)
        if ctx.scheduler is not None and ctx.per_step_schedule:
            ctx.scheduler.step_update(num_updates=progress.num_updates)
        if bar is not None and progress.num_updates % log_every == 0:
            now = time.perf_counter()
            rate = (progress.samples - last_log_samples) * ctx.world_size / max(now - last_log_time, 1e-9)
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{ctx.optimizer.param_groups[0]['lr']:.4g}",
                            img_s=f"{rate:.0f}")  # refreshes the bar: once per log_every steps
            last_log_samples, last_log_time = progress.samples, now
        if on_update is not None:
            progress.train_time += time.perf_counter() - start
            on_update(progress)
            start = time.perf_counter()
    progress.train_time += time.perf_counter() - start


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...]) -> list[torch.Tensor]:
    """How many rows have the target among their top-k logits, for each k (exact counts, summable over ranks).

    timm's ``accuracy`` returns per-batch percentages; counts avoid re-weighting uneven last batches.
    """
    top = logits.topk(max(ks), dim=1).indices
    hits = top.eq(target.unsqueeze(1))
    return [hits[:, :k].any(dim=1).sum() for k in ks]


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
             amp_dtype: torch.dtype | None = None, channels_last: bool = False, limit: int | None = None,
             prefix: str = "") -> dict[str, float]:
    """Cross-entropy and top-1 / top-5 error (%) of ``model`` over every rank's shard of ``batches``."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top-1 hits, top-5 hits, images
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    for i, (x, y) in enumerate(batches):
        if limit is not None and i >= limit:
            break
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            logits = model(x)
        logits = logits.float()
        k5 = min(5, logits.shape[1])
        c1, c5 = topk_correct(logits, y, (1, k5))
        sums += torch.stack([F.cross_entropy(logits, y, reduction="sum").double(), c1.double(), c5.double(),
                             torch.tensor(float(len(y)), dtype=torch.float64, device=device)])
    all_reduce_sum(sums)
    loss, c1, c5, n = sums.tolist()
    n = max(n, 1.0)
    return {f"{prefix}val_loss": loss / n, f"{prefix}top1_err": 100.0 * (1 - c1 / n),
            f"{prefix}top5_err": 100.0 * (1 - c5 / n), f"{prefix}val_images": int(n)}
