"""se_inject.compress.stats: the calibration pass that excitations, pruning and folding share."""
import copy
import functools

import pytest
import torch

import se_inject
from backbones import create_backbone
from se_inject.analysis import record_excitations
from se_inject.compress import ExcitationStats, excitation_stats
from tests.conftest import state_equal


@functools.lru_cache(maxsize=None)
def _se_net(name="cifar_resnet8", **kw):
    torch.manual_seed(0)
    return se_inject.apply(create_backbone(name, num_classes=4, in_chans=1), input_size=(1, 28, 28), **kw)


def se_net(name="cifar_resnet8", **kw):
    return copy.deepcopy(_se_net(name, **kw))


def batches(n=3, classes=4):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        y = torch.arange(8) % classes
        out.append((torch.randn(8, 1, 28, 28, generator=g) + y[:, None, None, None].float(), y))
    return out


def gates_by_hand(model, data, block):
    seen = []
    h = model.get_submodule(block).gate.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    with torch.no_grad():
        for x, _ in data:
            model.eval()(x)
    h.remove()
    return torch.cat(seen)


def test_mean_std_and_per_class_match_a_manual_pass():
    model, data = se_net(), batches()
    stats = excitation_stats(model, data)
    block = "layer2.0.se"
    g = gates_by_hand(model, data, block)
    y = torch.cat([y for _, y in data])
    assert stats.blocks == ["layer1.0.se", "layer2.0.se", "layer3.0.se"] and stats.images == 24
    assert stats.counts.tolist() == [6, 6, 6, 6] and stats.input_size == (1, 28, 28)
    torch.testing.assert_close(stats.mean[block], g.mean(0), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(stats.std[block], g.std(0, unbiased=False), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(stats.low[block], g.min(0).values)
    torch.testing.assert_close(stats.high[block], g.max(0).values)
    torch.testing.assert_close(stats.class_mean[block][2], g[y == 2].mean(0), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(stats.class_std[block][2], g[y == 2].std(0, unbiased=False), atol=1e-5, rtol=1e-4)
    assert stats.variation(block) == pytest.approx(float(g.std(0, unbiased=False).max()), rel=1e-4)
    assert stats.class_spread(block) > 0 and "SE_1_1" in stats.summary()


def test_identity_init_records_the_scale_applied_and_excitations_halve_it():
    model = se_net(init="identity")
    stats = excitation_stats(model, batches(1))
    assert all(torch.equal(stats.mean[b], torch.ones(stats.channels[b])) for b in stats.blocks)
    assert all(stats.variation(b) == 0 for b in stats.blocks)
    exc = record_excitations(model, batches(1))
    assert torch.equal(exc.overall["layer1.0.se"], torch.full((16,), 0.5))


def test_the_model_is_left_as_it_was():
    model = se_net().train()
    model.layer1[0].bn1.eval()            # a frozen BN stays frozen
    before = se_net()
    excitation_stats(model, batches(1))
    assert model.training and not model.layer1[0].bn1.training and model.layer2[0].bn1.training
    assert state_equal(model, before)


def test_save_load_and_check(tmp_path):
    model = se_net()
    stats = excitation_stats(model, batches(1))
    assert list(stats.check(model)) == stats.blocks
    stats.save(tmp_path / "stats.pt")
    again = ExcitationStats.load(tmp_path / "stats.pt")
    assert again.blocks == stats.blocks and again.input_size == (1, 28, 28)
    assert torch.equal(again.class_mean["layer3.0.se"], stats.class_mean["layer3.0.se"])
    again.check(model)


@pytest.mark.parametrize("other, message", [
    (lambda: se_net("cifar_resnet20"), "the statistics are from another model"),
    (lambda: _retrained(se_net()), "excitation weights changed since they were recorded"),
])
def test_statistics_from_another_model_are_refused(other, message):
    stats = excitation_stats(se_net(), batches(1))
    with pytest.raises(se_inject.CompressError, match=message) as e:
        stats.check(other())
    assert "\n" not in str(e.value)


def _retrained(model):
    with torch.no_grad():
        model.layer2[0].se.fc1.weight.mul_(1.01)
    return model


@pytest.mark.parametrize("model, data, message", [
    (lambda: create_backbone("cifar_resnet8", num_classes=4, in_chans=1), batches(1),
     "has no SqueezeExcite block: apply se_inject first"),
    (se_net, [(torch.randn(8, 1, 28, 28), torch.full((8,), 3))], "holds only class 3: use a few shuffled batches"),
    (se_net, [], "gave no batch"),
    (se_net, [torch.randn(8, 1, 28, 28)], "must be \\(images, labels\\) pairs"),
])
def test_bad_calibration_is_one_line(model, data, message):
    with pytest.raises(se_inject.CompressError, match=message) as e:
        excitation_stats(model(), data)
    assert "\n" not in str(e.value)
