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

With ``nonfinite`` set, a step whose loss or gradient is NaN/inf on any rank is dropped on every rank
(``"skip"``) or ends the epoch early with the progress rolled back to the last good step (``"stop"``):

    >>> ctx.nonfinite = "skip"
    >>> bad = [(torch.full((8, 4), float("nan")), torch.zeros(8, dtype=torch.long))]
    >>> progress = EpochProgress(epoch=0)
    >>> train_one_epoch(ctx, bad + batches, progress, num_batches=2)
    >>> progress.batch, progress.num_updates, progress.skipped_steps, progress.samples
    (2, 2, 1, 8)
    >>> ctx.nonfinite = "stop"
    >>> progress = EpochProgress(epoch=0)
    >>> halt = train_one_epoch(ctx, batches[:1] + bad, progress, num_batches=2)
    >>> halt.reason, halt.step, halt.detail, progress.batch, progress.num_updates
    (<Halt.NONFINITE: 'nonfinite'>, 2, 'non-finite loss on 1 of 1 rank and gradients on 1 of 1 rank', 1, 1)
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import all_reduce_sum
from .rng import capture_rng

__all__ = ["StepContext", "EpochProgress", "Halt", "Stopped", "train_one_epoch", "evaluate", "topk_correct"]


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
    # Checked once per optimizer step, in one all-reduce of three numbers (and one read of it on the host):
    nonfinite: Literal["stop", "skip"] | None = None  # NaN/inf loss or gradient on any rank; None: not checked
    stop_requested: Callable[[], bool] | None = None  # a preemption signal on any rank: stop after this step
    cuda_graphs: bool = False            # model compiled with mode reduce-overhead (accum_steps 1): each forward a new step


class Halt(StrEnum):
    """Why ``train_one_epoch`` returned before the end of its epoch."""
    PREEMPTED = "preempted"   # a rank was asked to stop: the step was finished, progress is after it
    NONFINITE = "nonfinite"   # nonfinite="stop": progress and buffers are rolled back to before the bad step


@dataclass
class Stopped:
    """What ``train_one_epoch`` returns when it stops early (``None`` at the end of the epoch)."""
    reason: Halt
    step: int                            # PREEMPTED: the last step done; NONFINITE: the bad step (not done)
    detail: str = ""                     # NONFINITE: "non-finite loss on 1 of 2 ranks"
    rng: dict[str, Any] | None = None    # NONFINITE: this rank's RNG states at the start of the bad step


@dataclass
class EpochProgress:
    """Where the run is, and this rank's running sums for the current epoch; saved in checkpoints."""
    epoch: int
    batch: int = 0                       # micro-batches done in this epoch
    num_updates: int = 0                 # optimizer steps since the start of the run
    loss_sum: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.float64))
    samples: int = 0                     # this rank's images this epoch (of steps taken)
    train_time: float = 0.0              # seconds in the step loop this epoch (over resumes)
    skipped_steps: int = 0               # steps dropped this epoch for a non-finite loss or gradient

    def to_state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch": self.batch, "num_updates": self.num_updates,
                "loss_sum": self.loss_sum.detach().cpu().clone(), "samples": self.samples, "train_time": self.train_time,
                "skipped_steps": self.skipped_steps}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> "EpochProgress":
        return cls(state["epoch"], state["batch"], state["num_updates"], state["loss_sum"].to(device),
                   state["samples"], state["train_time"], state.get("skipped_steps", 0))


def _autocast(ctx: StepContext) -> contextlib.AbstractContextManager:
    if ctx.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(ctx.device.type, dtype=ctx.amp_dtype)


def _nonfinite_detail(n_loss: float, n_grad: float, world_size: int) -> str:
    ranks = f"of {world_size} rank{'s' if world_size > 1 else ''}"
    parts = [f"{what} on {int(n)} {ranks}" for what, n in (("loss", n_loss), ("gradients", n_grad)) if n]
    return "non-finite " + " and ".join(parts)


def train_one_epoch(ctx: StepContext, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], progress: EpochProgress,
                    num_batches: int, *, on_update: Callable[[EpochProgress], None] | None = None,
                    on_skip: Callable[[EpochProgress, str], None] | None = None,
                    bar: Any = None, log_every: int = 20) -> Stopped | None:
    """Train on ``batches`` until ``progress.batch == num_batches`` (micro-batches of this epoch).

    ``on_update`` runs after every optimizer step (the trainer's mid-epoch checkpoint); its time is
    not counted in ``progress.train_time``. ``bar`` (tqdm) gets loss, lr and img/s every ``log_every``
    steps, the only points where the loop waits for the device, besides the per-step check when
    ``ctx.nonfinite`` or ``ctx.stop_requested`` is set. ``on_skip`` hears of each dropped step.
    Returns :class:`Stopped` when the check stops the epoch early.
    """
    from timm.utils import dispatch_clip_grad
    from torch.nn.utils import get_total_norm

    ctx.model.train()
    if progress.loss_sum.device != ctx.device:
        progress.loss_sum = progress.loss_sum.to(ctx.device)
    checking = ctx.nonfinite is not None or ctx.stop_requested is not None
    params = [p for p in ctx.module.parameters() if p.requires_grad]
    last_log_samples, last_log_time = progress.samples, time.perf_counter()
    start = time.perf_counter()
    step_loss = torch.zeros((), dtype=torch.float64, device=ctx.device)
    step_samples, step_start_batch, buffers, rng = 0, progress.batch, None, None
    stop = False

    def slot_passed() -> None:
        """An optimizer step's slot has passed (taken or dropped): the per-step schedule, then the
        caller's hook (checkpoints), outside the measured step time."""
        nonlocal start
        if ctx.scheduler is not None and ctx.per_step_schedule:
            ctx.scheduler.step_update(num_updates=progress.num_updates)
        if on_update is not None:
            progress.train_time += time.perf_counter() - start
            on_update(progress)
            start = time.perf_counter()

    for x, y in batches:
        if progress.batch >= num_batches:
            break
        if progress.batch % ctx.accum_steps == 0:
            # Before anything of this step draws from an RNG or runs a forward (which moves BN statistics):
            # what a dropped or rolled-back step restores.
            step_loss, step_samples, step_start_batch = torch.zeros_like(step_loss), 0, progress.batch
            if ctx.nonfinite is not None:
                buffers = [b.detach().clone() for b in ctx.module.buffers()]
            if ctx.nonfinite == "stop":
                rng = capture_rng()
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
        if ctx.cuda_graphs:  # the graphs' outputs of the last step (loss, logits) are read before this point
            torch.compiler.cudagraph_mark_step_begin()
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
        step_loss.add_(loss.detach(), alpha=x.shape[0])  # float64 sum: one op, no sync
        step_samples += x.shape[0]
        progress.batch += 1
        if bar is not None:
            bar.update(1)
        if not boundary:
            continue
        stop = False
        if checking:
            flags = torch.zeros(3, dtype=torch.float32, device=ctx.device)  # ranks with: bad loss, bad grads, stop asked
            if ctx.nonfinite is not None:
                flags[0] = step_loss.isfinite().logical_not()
                # fp16: overflowing gradients are the GradScaler's to skip (it lowers the scale); only the loss counts.
                grads = [p.grad for p in params if p.grad is not None] if ctx.scaler is None else []
                if grads:  # the max-abs norm: NaN/inf propagate, and it cannot overflow
                    flags[1] = get_total_norm(grads, norm_type=float("inf")).isfinite().logical_not()
            if ctx.stop_requested is not None and ctx.stop_requested():
                flags[2] = 1
            n_loss, n_grad, n_stop = all_reduce_sum(flags).tolist()
            stop = n_stop > 0
            if n_loss or n_grad:
                detail = _nonfinite_detail(n_loss, n_grad, ctx.world_size)
                for b, saved in zip(ctx.module.buffers(), buffers or []):
                    b.copy_(saved)
                if ctx.nonfinite == "stop":
                    progress.batch = step_start_batch
                    progress.train_time += time.perf_counter() - start
                    return Stopped(Halt.NONFINITE, progress.num_updates + 1, detail, rng)
                progress.num_updates += 1  # the step's slot passes (schedule, checkpoint cadence); nothing is learnt
                progress.skipped_steps += 1
                if on_skip is not None:
                    on_skip(progress, detail)
                slot_passed()
                if stop:
                    break
                continue
        progress.loss_sum.add_(step_loss)
        progress.samples += step_samples
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
        if bar is not None and progress.num_updates % log_every == 0:
            now = time.perf_counter()
            rate = (progress.samples - last_log_samples) * ctx.world_size / max(now - last_log_time, 1e-9)
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{ctx.optimizer.param_groups[0]['lr']:.4g}",
                            img_s=f"{rate:.0f}")  # refreshes the bar (the step's own lr): once per log_every steps
            last_log_samples, last_log_time = progress.samples, now
        slot_passed()
        if stop:
            break
    progress.train_time += time.perf_counter() - start
    if stop:
        return Stopped(Halt.PREEMPTED, progress.num_updates)
    return None


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
