"""trainers.loop: accumulation, clipping, AMP, channels_last, EMA and exact top-k counts."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from trainers.loop import EpochProgress, Halt, StepContext, evaluate, topk_correct, train_one_epoch


def _linear_ctx(accum=1, lr=0.1, **kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return StepContext(model=model, module=model, optimizer=opt, loss_fn=nn.CrossEntropyLoss(),
                       device=torch.device("cpu"), accum_steps=accum, **kw)


def _batches(n, size, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 2, 2, generator=g), torch.randint(0, 3, (size,), generator=g)) for _ in range(n)]


def test_accumulating_two_halves_equals_one_full_batch():
    big = _batches(1, 16)
    halves = [(big[0][0][:8], big[0][1][:8]), (big[0][0][8:], big[0][1][8:])]
    a, b = _linear_ctx(accum=1), _linear_ctx(accum=2)
    train_one_epoch(a, big, EpochProgress(0), num_batches=1)
    pb = EpochProgress(0)
    train_one_epoch(b, halves, pb, num_batches=2)
    assert pb.num_updates == 1 and pb.samples == 16
    for pa_, pb_ in zip(a.module.parameters(), b.module.parameters()):
        torch.testing.assert_close(pa_, pb_, rtol=0, atol=1e-6)


def test_clipping_bounds_the_update():
    ctx = _linear_ctx(lr=1.0, clip_grad=0.01)
    before = [p.detach().clone() for p in ctx.module.parameters()]
    train_one_epoch(ctx, _batches(1, 8), EpochProgress(0), num_batches=1)
    step = torch.cat([(p.detach() - q).flatten() for p, q in zip(ctx.module.parameters(), before)])
    assert step.norm() <= 0.01 + 1e-6


def test_stops_at_num_batches_and_hooks_each_update():
    seen = []
    ctx = _linear_ctx(accum=2)
    progress = EpochProgress(0, num_updates=10)
    train_one_epoch(ctx, _batches(9, 4), progress, num_batches=6, on_update=lambda p: seen.append((p.batch, p.num_updates)))
    assert seen == [(2, 11), (4, 12), (6, 13)]


def test_ema_and_per_step_schedule():
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3
    ctx = _linear_ctx()
    ctx.ema = ModelEmaV3(ctx.module, decay=0.5)
    ctx.scheduler, _ = create_scheduler_v2(ctx.optimizer, sched="cosine", num_epochs=1, step_on_epochs=False,
                                           updates_per_epoch=4)
    train_one_epoch(ctx, _batches(4, 4), EpochProgress(0), num_batches=4)
    assert ctx.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    ema_w, w = ctx.ema.module[1].weight, ctx.module[1].weight
    assert not torch.equal(ema_w, w)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_and_channels_last_on_cpu(amp):
    from backbones import create_backbone
    torch.manual_seed(0)
    model = create_backbone("cifar_resnet8", num_classes=3, in_chans=3).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    scaler = torch.amp.GradScaler("cpu") if amp == "fp16" else None
    ctx = StepContext(model=model, module=model, optimizer=opt, loss_fn=nn.CrossEntropyLoss(), device=torch.device("cpu"),
                      amp_dtype=dtype, scaler=scaler, channels_last=True)
    before = copy.deepcopy(model.state_dict())
    progress = EpochProgress(0)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(2)]
    train_one_epoch(ctx, batches, progress, num_batches=2)
    assert torch.isfinite(progress.loss_sum)
    assert not torch.equal(before["fc.weight"], model.state_dict()["fc.weight"])
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    metrics = evaluate(model, batches, torch.device("cpu"), amp_dtype=dtype, channels_last=True)
    assert metrics["val_images"] == 8


def test_topk_counts_and_evaluate_errors():
    logits = torch.tensor([[3.0, 2, 1, 0, -1, -2], [0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]])
    target = torch.tensor([0, 0, 1])
    assert [int(c) for c in topk_correct(logits, target, (1, 5))] == [1, 2]
    model = nn.Identity()
    m = evaluate(model, [(logits, target)], torch.device("cpu"))
    assert m["top1_err"] == pytest.approx(100 * 2 / 3) and m["top5_err"] == pytest.approx(100 / 3)
    assert m["val_images"] == 3


# -- the per-step check: non-finite losses and gradients, preemption -------------------------------------------

def _bn_ctx(dropout: float = 0.0, **kw):
    """A net with BatchNorm (whose running statistics a forward moves) and a momentum optimizer (which has state)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Flatten(), nn.Dropout(dropout), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return StepContext(model=model, module=model, optimizer=opt, loss_fn=nn.CrossEntropyLoss(),
                       device=torch.device("cpu"), **kw)


def _nan_batch(size=4):
    return torch.full((size, 3, 2, 2), float("nan")), torch.zeros(size, dtype=torch.long)


def _same_training_state(a: StepContext, b: StepContext) -> None:
    from trainer_runs import assert_identical
    assert_identical(a.module.state_dict(), b.module.state_dict(), "model")  # BN running statistics included
    assert_identical(a.optimizer.state_dict(), b.optimizer.state_dict(), "optimizer")


def test_skip_drops_exactly_the_bad_step():
    good = _batches(3, 4)
    skipped, clean = _bn_ctx(nonfinite="skip"), _bn_ctx()
    seen = []
    p = EpochProgress(0)
    train_one_epoch(skipped, [good[0], _nan_batch(), good[1], good[2]], p, num_batches=4,
                    on_skip=lambda p, detail: seen.append((p.num_updates, detail)))
    train_one_epoch(clean, good, EpochProgress(0), num_batches=3)
    _same_training_state(skipped, clean)  # as if the bad batch had never been there
    assert seen == [(2, "non-finite loss on 1 of 1 rank and gradients on 1 of 1 rank")]
    assert (p.batch, p.num_updates, p.skipped_steps, p.samples) == (4, 4, 1, 12)  # its slot in the schedule passes
    assert torch.isfinite(p.loss_sum)


def test_stop_rolls_back_to_before_the_bad_step():
    good = _batches(3, 4)
    stopped, clean = _bn_ctx(0.5, nonfinite="stop", accum_steps=2), _bn_ctx(0.5, accum_steps=2)
    torch.manual_seed(5)
    p = EpochProgress(0)
    halt = train_one_epoch(stopped, [good[0], good[1], good[2], _nan_batch()], p, num_batches=4)
    torch.manual_seed(5)
    train_one_epoch(clean, good[:2], EpochProgress(0), num_batches=2)
    _same_training_state(stopped, clean)
    assert (halt.reason, halt.step) == (Halt.NONFINITE, 2)
    assert (p.batch, p.num_updates, p.samples) == (2, 1, 8)  # micro-batches 2 and 3 are to be done again
    # the RNG states as the bad step found them (after step 1's dropout), not as it left them
    assert torch.equal(halt.rng["torch"], torch.random.get_rng_state())


def test_a_nonfinite_gradient_with_a_finite_loss_is_caught():
    ctx = _bn_ctx(nonfinite="stop")
    ctx.module[4].weight.register_hook(lambda g: torch.full_like(g, float("inf")))
    halt = train_one_epoch(ctx, _batches(1, 4), EpochProgress(0), num_batches=1)
    assert halt.detail == "non-finite gradients on 1 of 1 rank"


def test_fp16_overflow_is_left_to_the_grad_scaler():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 100)  # overflows fp16 gradients: the scaler skips, halves
    ctx = _bn_ctx(nonfinite="stop", scaler=scaler, amp_dtype=torch.float16)
    p = EpochProgress(0)
    assert train_one_epoch(ctx, _batches(2, 4), p, num_batches=2) is None
    assert p.skipped_steps == 0 and scaler.get_scale() < 2.0 ** 100


def test_a_stop_request_finishes_the_step_then_stops():
    asked = []
    ctx = _bn_ctx(stop_requested=lambda: bool(asked), accum_steps=2)
    p = EpochProgress(0)
    halt = train_one_epoch(ctx, _batches(8, 4), p, num_batches=8, on_update=lambda p: asked.append(p.num_updates))
    assert (halt.reason, halt.step, p.batch, p.num_updates) == (Halt.PREEMPTED, 2, 4, 2)
