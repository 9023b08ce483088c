"""se_inject.gated_layer: a layer that runs its SE block on its own output stays that layer: its class,
its parameter names, its hooks, through deepcopy, pickle, torch.save, TorchScript and fx."""
import copy
import io
import pickle
import warnings

import pytest
import timm
import torch
from torch import nn

from se_inject import SqueezeExcite
from se_inject.gated_layer import can_gate, gate_layer, gates_own_output, is_gated_layer, layer_of

#: (layer, channels): torch leaves with and without parameters, a norm whose forward reads
#: ``self.training``, and timm layers with children of their own
LAYERS = {
    "relu": (lambda: nn.ReLU(inplace=True), 8),
    "conv": (lambda: nn.Conv2d(8, 8, 3, padding=1), 8),
    "batchnorm": (lambda: nn.BatchNorm2d(8), 8),
    "timm_separable": (lambda: timm.layers.SeparableConv2d(8, 8), 8),
    "timm_bn_act": (lambda: timm.layers.BatchNormAct2d(8), 8),
}


def _gated(name):
    torch.manual_seed(0)
    make, channels = LAYERS[name]
    layer = make().eval()
    return layer, gate_layer(layer, SqueezeExcite(channels, r=2).eval())


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_a_gated_layer_is_the_layer_then_its_block(name):
    layer, gated = _gated(name)
    assert type(gated).__name__ == type(layer).__name__ and isinstance(gated, type(layer)) and is_gated_layer(gated)
    assert not is_gated_layer(layer) and "se" not in layer._modules         # the user's layer is untouched
    sd, own = gated.state_dict(), layer.state_dict()
    assert list(sd)[:len(own)] == list(own) and all(sd[k] is not None and torch.equal(sd[k], own[k]) for k in own)
    assert [k for k in sd if k not in own] == [f"se.{k}" for k in gated.se.state_dict()]
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        assert torch.equal(gated(x), gated.se(layer(x.clone())))
        assert torch.equal(layer_of(gated)(x.clone()), layer(x.clone()))


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_a_gated_layer_survives_copy_pickle_save_script_and_fx(name):
    _, gated = _gated(name)
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        want = gated(x.clone())
        for other in (copy.deepcopy(gated), pickle.loads(pickle.dumps(gated))):
            assert type(other) is type(gated) and torch.equal(other(x.clone()), want)
        buf = io.BytesIO()
        torch.save(gated, buf)
        buf.seek(0)
        assert torch.equal(torch.load(buf, weights_only=False)(x.clone()), want)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.script / save are deprecated
            scripted = torch.jit.script(nn.Sequential(nn.Identity(), gated))
            torch.jit.save(scripted, io.BytesIO())
        torch.testing.assert_close(scripted(x.clone()), want)
        traced = torch.fx.symbolic_trace(nn.Sequential(nn.Identity(), gated))
        assert torch.equal(traced(x.clone()), want)


def test_hooks_and_mode_follow_the_layer():
    layer = nn.Conv2d(4, 4, 1)
    seen = []
    layer.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    gated = gate_layer(layer, SqueezeExcite(4, r=2))
    gated(torch.randn(1, 4, 3, 3))
    assert seen == [(1, 4, 3, 3)]
    gated.eval()
    assert not gated.training and not gated.se.training and layer.training  # its own mode, not the user's layer's


def test_what_cannot_be_gated():
    gated = gate_layer(nn.ReLU(), SqueezeExcite(4, r=2))
    holder = nn.Module()
    holder.se = nn.Identity()                     # the name is taken
    assert not can_gate(gated) and not can_gate(holder) and not can_gate(nn.Module())   # no forward of its own
    with pytest.raises(TypeError, match="cannot gate"):
        gate_layer(gated, SqueezeExcite(4, r=2))
    assert gates_own_output(nn.Sequential(nn.Conv2d(4, 4, 1), nn.Sequential(nn.Identity(), gated)))
    assert not gates_own_output(nn.Sequential(gated, nn.ReLU()))
