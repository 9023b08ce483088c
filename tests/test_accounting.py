"""se_inject.accounting: parameters (Eq. 5 plus biases) and multiply-adds, planned and counted."""
import pytest
import torch
from torch import nn

import se_inject
from se_inject import SqueezeExcite
from se_inject.accounting import count_macs, count_params, se_macs, se_params


@pytest.mark.parametrize("channels,r", [(256, 16), (64, 4), (2048, 16)])
def test_se_params_is_eq5_plus_biases(channels, r):
    block = SqueezeExcite(channels, r=r)
    reduced = channels // r
    assert se_params(channels, reduced) == count_params(block) == 2 * channels * reduced + reduced + channels


def test_count_macs_of_a_conv_is_its_multiply_adds():
    conv = nn.Conv2d(8, 16, 3, padding=1, bias=False)
    assert count_macs(conv, (8, 10, 10)) == 16 * 8 * 9 * 10 * 10


def test_counted_se_macs_equal_the_planned_ones():
    """Pooling (one per input element), the two FCs, scaling (one per output element): what the plan
    adds up is what the flop counter sees in the rewritten model."""
    block = SqueezeExcite(32, r=4)
    assert count_macs(block, (32, 7, 7)) == se_macs(32, 8, 49)


def test_plan_macs_match_the_rewritten_model(timm_model):
    model = timm_model("resnet18")
    plan = se_inject.plan(model, input_size=(3, 64, 64))
    assert count_macs(se_inject.apply(model, plan), (3, 64, 64)) == plan.macs_after


def test_count_macs_leaves_modes_and_weights_alone(timm_model):
    model = timm_model("resnet18").train()
    before = [p.clone() for p in model.parameters()]
    count_macs(model, (3, 32, 32))
    assert all(m.training for m in model.modules())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
