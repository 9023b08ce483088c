"""se_inject.compress.folding: near-constant SE blocks become their mean scale."""
import copy

import pytest
import torch
from torch import nn

import se_inject
from backbones import create_backbone
from backbones.cifar_resnet import BasicBlock
from se_inject.compress import ConstantScale, FoldAction, excitation_stats, fold, fold_plan
from tests.conftest import state_equal

SIZE = (1, 28, 28)


class Tanh(nn.Module):
    """A residual block whose branch ends in tanh: no layer can absorb a scale after it."""

    def __init__(self, chs: int) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(chs, chs, 3, padding=1, bias=False), nn.BatchNorm2d(chs)

    def forward(self, x):
        return x + torch.tanh(self.bn(self.conv(x)))


class Mixed(nn.Module):
    """Stem, a CIFAR BasicBlock (SE folds into its bn2), a Tanh block (SE stays a constant scale), head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.block1, self.block2 = BasicBlock(8, 8), Tanh(8)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))

    def forward(self, x):
        return self.head(self.block2(self.block1(self.stem(x))))


def constant_gates(model, seed=0):
    """fc2's weight zeroed: every gate is sigmoid(fc2.bias), a different constant per channel."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in se_inject.compress.se_blocks(model).values():
            block.fc2.weight.zero_()
            block.fc2.bias.copy_(torch.randn(block.channels, generator=g) * 2)
    return model


def calibration(n=1, size=SIZE):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, *size, generator=g), torch.arange(8) % 3) for _ in range(n)]


def same_outputs(a, b, size=SIZE):
    x = torch.randn(4, *size)
    with torch.no_grad():
        return torch.allclose(a.eval()(x), b.eval()(x), atol=1e-5, rtol=1e-4)


def test_resnet_blocks_fold_into_their_bn2():
    model = constant_gates(se_inject.apply(create_backbone("cifar_resnet8", num_classes=3, in_chans=1), input_size=SIZE))
    stats = excitation_stats(model, calibration())
    plan = fold_plan(model, stats, 0.0)
    assert [d.action for d in plan.decisions] == [FoldAction.FOLDED] * 3
    assert [s.path for s in plan.decisions[0].into] == ["layer1.0.bn2"]
    folded = fold(model, stats, 0.0)
    assert same_outputs(folded, model)
    assert type(folded) is type(model) and isinstance(folded.layer1[0].se, ConstantScale)
    kept = [k for k in model.state_dict() if ".se." not in k]
    assert list(folded.state_dict()) == kept                       # nothing left of the blocks, every other name kept
    assert "3 of 3 SE blocks folded" in str(plan)


def test_inception_blocks_fold_into_each_branch_through_the_concat():
    torch.manual_seed(0)
    model = constant_gates(se_inject.apply(create_backbone("cifar_inception_small", num_classes=3, in_chans=1),
                                           input_size=SIZE))
    stats = excitation_stats(model, calibration())
    first = fold_plan(model, stats, 0.0).decisions[0]
    assert first.action is FoldAction.FOLDED
    assert [(s.path, s.start, s.channels) for s in first.into] == [
        ("inception1a.branch1x1.bn", 0, 32), ("inception1a.branch3x3.bn", 32, 32)]
    assert same_outputs(fold(model, stats, 0.0), model)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_a_sequential_owner_folds_through_the_relu():
    torch.manual_seed(0)
    features = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU())
    net = nn.Sequential(features, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3)))
    model = constant_gates(se_inject.apply(net, input_size=SIZE, r=4))
    stats = excitation_stats(model, calibration())
    plan = fold_plan(model, stats, 0.0)
    assert [[s.path for s in d.into] for d in plan.decisions] == [["0.1"], ["0.3"]]   # the BN; the conv (bias too)
    folded = fold(model, stats, 0.0)
    assert same_outputs(folded, model)
    x = torch.randn(2, *SIZE)
    torch.testing.assert_close(torch.jit.script(folded)(x), folded(x))          # still scripts


def test_mixed_model_folds_keeps_a_constant_exports_and_trains(tmp_path):
    torch.manual_seed(0)
    model = constant_gates(se_inject.apply(Mixed(), input_size=SIZE, r=4))
    stats = excitation_stats(model, calibration())
    plan = fold_plan(model, stats, 0.0)
    assert [d.action for d in plan.decisions] == [FoldAction.FOLDED, FoldAction.CONSTANT]
    assert "tanh" in plan.decisions[1].reason
    folded = fold(model, stats, 0.0)
    assert same_outputs(folded, model)
    assert "block2.se.scale" in folded.state_dict() and "block1.se.scale" not in folded.state_dict()
    report = se_inject.export_onnx(folded, tmp_path / "folded.onnx", SIZE)   # checked against onnxruntime
    assert report.max_rel_diff <= 1e-4
    folded.train()
    optimizer = torch.optim.SGD(folded.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(folded(torch.randn(4, *SIZE)), torch.arange(4) % 3)
    loss.backward()
    optimizer.step()
    assert folded.block1.bn2.weight.grad is not None and torch.isfinite(loss)


def test_blocks_that_vary_are_kept_and_the_model_is_left_alone():
    model = se_inject.apply(create_backbone("cifar_resnet8", num_classes=3, in_chans=1), input_size=SIZE)
    before = copy.deepcopy(model)
    stats = excitation_stats(model, calibration(2))
    cut = sorted(stats.variation(b) for b in stats.blocks)[1]     # the two least varying fold
    folded = fold(model, stats, cut)
    actions = [isinstance(folded.get_submodule(b), ConstantScale) for b in stats.blocks]
    assert sum(actions) == 2 and state_equal(model, before)
    assert fold(model, stats, cut, inplace=True) is model and sum(
        isinstance(model.get_submodule(b), ConstantScale) for b in stats.blocks) == 2


@pytest.mark.parametrize("tolerance, model, message", [
    (-0.01, None, "tolerance=-0.01 is not a gate standard deviation: pass a number >= 0"),
    (float("nan"), None, "tolerance=nan"),
    ("0.1", None, "tolerance='0.1'"),
    (0.1, lambda: se_inject.apply(create_backbone("cifar_resnet20", num_classes=3, in_chans=1), input_size=SIZE),
     "the statistics are from another model"),
    (0.1, lambda: create_backbone("cifar_resnet8", num_classes=3, in_chans=1), "has no SqueezeExcite block"),
])
def test_bad_input_is_one_line(tolerance, model, message):
    recorded = se_inject.apply(create_backbone("cifar_resnet8", num_classes=3, in_chans=1), input_size=SIZE)
    stats = excitation_stats(recorded, calibration())
    target = model() if model else recorded
    before = copy.deepcopy(target)
    with pytest.raises(se_inject.CompressError, match=message) as e:
        fold(target, stats, tolerance)
    assert "\n" not in str(e.value) and state_equal(target, before)
