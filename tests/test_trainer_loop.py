"""trainers.loop: accumulation, clipping, AMP, channels_last, EMA and exact top-k counts."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from trainers.loop import EpochProgress, StepContext, evaluate, topk_correct, train_one_epoch


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
