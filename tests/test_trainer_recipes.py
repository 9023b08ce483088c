"""trainers/recipes: the SE paper's ImageNet recipe (§5) as a preset, checked value by value."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from trainers.config import load_config
from trainers.factory import build_backbone, build_optimizer, build_scheduler, scaled_lr


@pytest.fixture
def paper():
    return load_config("senet-paper", ["data.root=/data/imagenet"])


def test_paper_values(paper):
    assert paper.run.epochs == 100
    assert (paper.optim.opt, paper.optim.momentum, paper.optim.lr, paper.optim.lr_base_batch) == ("momentum", 0.9, 0.6, 1024)
    assert (paper.data.input_size, paper.data.crop_pct, paper.data.std) == ((3, 224, 224), 0.875, (1.0, 1.0, 1.0))
    assert (paper.data.aug.crop, paper.data.aug.hflip, paper.data.sampler) == ("rrc", 0.5, "class-balanced")
    assert paper.model.init == "he" and paper.model.se.policy == "paper" and paper.model.se.overrides == {"r": 16}
    assert round(224 / paper.data.crop_pct) == 256  # evaluation: resize 256, centre crop 224


def test_lr_scales_linearly_with_the_global_batch(paper):
    assert scaled_lr(paper, 1024) == pytest.approx(0.6)
    assert scaled_lr(paper, 256) == pytest.approx(0.15)
    assert scaled_lr(paper, 2048) == pytest.approx(1.2)


def test_step_schedule_divides_by_ten_every_30_epochs(paper):
    model = nn.Linear(4, 2)
    opt = build_optimizer(paper, model, global_batch=1024)
    assert type(opt).__name__ == "SGD" and opt.defaults["nesterov"] is False and opt.defaults["momentum"] == 0.9
    sched = build_scheduler(paper, opt, updates_per_epoch=1251)
    lrs = {}
    for epoch in range(100):
        sched.step(epoch)
        lrs[epoch] = opt.param_groups[0]["lr"]
    for epoch, expected in ((0, 0.6), (29, 0.6), (30, 0.06), (59, 0.06), (60, 0.006), (90, 0.0006), (99, 0.0006)):
        assert lrs[epoch] == pytest.approx(expected), epoch


def test_he_init_applies_to_the_backbone(paper):
    torch.manual_seed(0)
    model = build_backbone(load_config("senet-paper", ["data.root=/x", "model.name=cifar_resnet20"]), 10, 3)
    w = model.layer3[1].conv1.weight
    assert w.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.05)
