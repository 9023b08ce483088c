"""Own backbones: registered, plain (no SE), shapes right, and fx-traceable with their add/cat sites."""
from __future__ import annotations

import re

import pytest
import torch
import torch.fx as fx
from torch import nn

from backbones import BackboneError, create_backbone, he_init_, list_backbones, resolve_backbone

#: name -> (input size, residual adds, concats) the SE engine must be able to find.
OWN = {
    "cifar_resnet8": (28, 3, 0),
    "cifar_resnet20": (28, 9, 0),
    "cifar_resnet56": (28, 27, 0),
    "cifar_resnext11_4x16d": (28, 3, 0),
    "cifar_resnext29_4x16d": (32, 9, 0),
    "cifar_inception_small": (28, 0, 10),
    "bn_inception": (64, 0, 10),
}


def test_every_own_backbone_is_listed():
    assert set(OWN) <= set(list_backbones("own"))


@pytest.mark.parametrize("name", sorted(OWN))
def test_plain_traceable_with_sites(name):
    size, adds, cats = OWN[name]
    torch.manual_seed(0)
    model = create_backbone(name, num_classes=7, in_chans=1).eval()
    classes = {type(m).__name__ for m in model.modules()}
    assert not [c for c in classes if re.search(r"squeeze|excit", c, re.I) or re.match(r"SE[A-Z_]", c)], \
        "own backbones must be plain: SE comes from se_inject.apply"
    x = torch.randn(2, 1, size, size)
    y = model(x)
    assert y.shape == (2, 7)
    gm = fx.symbolic_trace(model)
    torch.testing.assert_close(gm(x), y, rtol=0, atol=0)
    # Plain ``+`` / ``torch.cat`` in the blocks' forwards: what the SE engine looks for.
    names = [getattr(n.target, "__name__", str(n.target)) for n in gm.graph.nodes if n.op == "call_function"]
    assert names.count("add") == adds
    assert names.count("cat") == cats


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_inception_small"])
def test_in_chans_and_classes(name):
    model = create_backbone(name, num_classes=3, in_chans=3)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_pretrained_refused_in_one_line():
    with pytest.raises(BackboneError, match="cifar_resnet20: .*pass pretrained=False"):
        create_backbone("cifar_resnet20", pretrained=True)


def test_bad_depth_is_a_clear_error():
    from backbones.cifar_resnet import CifarResNet
    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(depth=21)


def test_timm_and_torchvision_names_still_resolve():
    assert isinstance(create_backbone("resnet18", num_classes=4), nn.Module)
    assert create_backbone("tv:resnet18", num_classes=4).fc.out_features == 4


def test_one_name_check_for_every_caller():
    """create_backbone, the trainer's model.name and a comparison's backbones all ask resolve_backbone."""
    assert resolve_backbone("own:cifar_resnet8") == ("own", "cifar_resnet8")
    assert resolve_backbone("timm:resnet18") == ("timm", "resnet18")
    with pytest.raises(BackboneError, match=r"^backbone 'pt:resnet18': unknown source 'pt'; use one of own, timm, tv, hf$"):
        resolve_backbone("pt:resnet18")
    with pytest.raises(BackboneError, match=r"^unknown backbone 'tv:resnet5' \(did you mean 'tv:resnet50'\?\)"):
        create_backbone("tv:resnet5")


def test_he_init_gives_fan_out_std():
    model = he_init_(create_backbone("cifar_resnet20", num_classes=10))
    w = model.layer3[0].conv2.weight
    expected = (2.0 / (w.shape[0] * 9)) ** 0.5
    assert abs(w.std().item() - expected) / expected < 0.05
