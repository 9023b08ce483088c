"""se_inject.compress: SE blocks under Torch-Pruning (prunable.py), the excitation importance
(importance.py) and se_inject.prune (pruning.py)."""
import copy
import functools

import pytest
import torch
import torch_pruning as tp
from torch import nn

import se_inject
from backbones import create_backbone
from se_inject.accounting import count_macs
from se_inject.compress import ExcitationImportance, customized_pruners, excitation_stats, se_blocks
from tests.conftest import state_equal

SIZE = (1, 28, 28)


@functools.lru_cache(maxsize=None)
def _se_net(name):
    torch.manual_seed(0)
    return se_inject.apply(create_backbone(name, num_classes=4, in_chans=1), input_size=SIZE)


def se_net(name="cifar_resnet8"):
    return copy.deepcopy(_se_net(name))


def calibration(n=2):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, *SIZE, generator=g), torch.arange(8) % 4) for _ in range(n)]


def train_step(model):
    model.train()
    loss = nn.functional.cross_entropy(model(torch.randn(4, *SIZE)), torch.arange(4))
    loss.backward()
    return loss


@pytest.mark.parametrize("name", ["cifar_resnet8", "cifar_resnext11_4x16d", "cifar_inception_small"])
def test_magnitude_pruning_of_an_applied_net_runs(name):
    """The issue's check: Torch-Pruning's own MetaPruner on an apply'd ResNet / ResNeXt / Inception."""
    model, before = se_net(name), se_net(name)
    pruner = tp.pruner.MetaPruner(model, torch.randn(1, *SIZE), tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=0.5, ignored_layers=[model.fc], customized_pruners=customized_pruners())
    pruner.step()
    assert torch.isfinite(train_step(model))
    assert all(p.grad is not None for n, p in model.named_parameters() if ".se." in n)
    assert count_macs(model, SIZE) < 0.3 * count_macs(before, SIZE)
    for path, block in se_blocks(model).items():
        assert block.channels < se_blocks(before)[path].channels
        assert block.fc1.weight.shape[1] == block.fc2.weight.shape[0] == block.fc2.bias.shape[0] == block.channels


def test_without_the_customized_pruner_torch_pruning_misses_fc1():
    """Why the pruner exists (the issue's repro): the block's F.linear hides fc1/fc2 from the graph."""
    model = se_net()
    tp.pruner.MetaPruner(model, torch.randn(1, *SIZE), tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.5,
                         ignored_layers=[model.fc]).step()
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        model(torch.randn(2, *SIZE))


def _group(model, layer):
    graph = tp.DependencyGraph().build_dependency(model, torch.randn(1, *SIZE), customized_pruners=customized_pruners())
    return graph.get_pruning_group(layer, tp.prune_conv_out_channels, list(range(layer.out_channels)))


def test_gated_channels_are_ranked_by_their_mean_gate():
    model = se_net()
    stats = excitation_stats(model, calibration())
    stats.mean["layer1.0.se"] = torch.linspace(0.9, 0.1, 16)
    imp = ExcitationImportance(stats, model)(_group(model, model.conv1))   # the stem writes stage 1's trunk
    torch.testing.assert_close(imp, stats.mean["layer1.0.se"])


def test_channels_inside_a_branch_weigh_their_columns_by_the_gate():
    model = se_net()
    stats = excitation_stats(model, calibration())
    group = _group(model, model.layer1[0].conv1)                          # conv1 -> bn1 -> conv2: the hidden channels
    stats.mean["layer1.0.se"] = torch.ones(16)                            # every gate 1: plain L1 magnitude
    plain = tp.importance.MagnitudeImportance(p=1)(group)
    torch.testing.assert_close(ExcitationImportance(stats, model)(group), plain)
    gate = torch.rand(16, generator=torch.Generator().manual_seed(0))
    stats.mean["layer1.0.se"] = gate
    block = model.layer1[0]
    terms = [block.conv1.weight.abs().flatten(1).sum(1), block.bn1.weight.abs(),
             (block.conv2.weight.abs().sum((2, 3)) * gate[:, None]).sum(0)]
    expected = sum(terms) / 3
    torch.testing.assert_close(ExcitationImportance(stats, model)(group), (expected / expected.mean()).detach())


@pytest.mark.parametrize("amount", [0.5])
def test_prune_reaches_the_mac_target_with_every_criterion(amount):
    model = se_net()
    stats = excitation_stats(model, calibration())
    base = count_macs(model, SIZE)
    shapes = set()
    for criterion in ("excitation", "magnitude", "random"):
        small = se_inject.prune(model, stats, amount, importance=criterion)
        assert 1 - count_macs(small, SIZE) / base == pytest.approx(amount, abs=0.02)
        assert small(torch.randn(2, *SIZE)).shape == (2, 4) and type(small) is type(model)
        shapes.add(tuple((n, tuple(p.shape)) for n, p in small.named_parameters()))
    assert len(shapes) == 1       # same architecture: the criterion only picks which channels go
    assert state_equal(model, _se_net("cifar_resnet8"))


def test_excitation_keeps_the_high_gate_channels():
    model = se_net()
    stats = excitation_stats(model, calibration())
    order = torch.randperm(16, generator=torch.Generator().manual_seed(3))
    stats.mean["layer1.0.se"] = order.float() / 16
    small = se_inject.prune(model, stats, 0.5)
    kept = small.layer1[0].se.channels
    top = sorted(order.argsort(descending=True)[:kept].tolist())
    torch.testing.assert_close(small.conv1.weight, model.conv1.weight[top])


def test_inplace_prunes_the_model_itself_and_it_trains_on():
    model = se_net()
    stats = excitation_stats(model, calibration())
    out = se_inject.prune(model, stats, 0.5, inplace=True)
    assert out is model and model.layer1[0].se.channels < 16
    torch.optim.SGD(model.parameters(), lr=0.1).step() if torch.isfinite(train_step(model)) else None


@pytest.mark.parametrize("call, message", [
    (lambda m, s: se_inject.prune(m, s, amount=1.0), "amount=1.0 is not a share of MACs to remove"),
    (lambda m, s: se_inject.prune(m, s, amount=-0.1), "pass a number in \\[0, 1\\)"),
    (lambda m, s: se_inject.prune(m, s, amount="half"), "amount='half'"),
    (lambda m, s: se_inject.prune(m, None, 0.5), "the excitation criterion needs statistics"),
    (lambda m, s: se_inject.prune(m, s, 0.5, importance="magnitudes"), "did you mean 'magnitude'"),
    (lambda m, s: se_inject.prune(create_backbone("cifar_resnet8", num_classes=4, in_chans=1), s, 0.5,
                                  importance="magnitude"), "has no SqueezeExcite block"),
    (lambda m, s: se_inject.prune(se_net("cifar_resnet20"), s, 0.5), "the statistics are from another model"),
    (lambda m, s: se_inject.prune(m, s, 0.999, importance="random"), "ask for amount <="),
])
def test_bad_input_is_one_line_and_leaves_the_model_alone(call, message):
    model = se_net()
    stats = excitation_stats(model, calibration(1))
    with pytest.raises(se_inject.CompressError, match=message) as e:
        call(model, stats)
    assert "\n" not in str(e.value)
    assert state_equal(model, _se_net("cifar_resnet8"))
