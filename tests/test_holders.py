"""se_inject.holders: a block that goes inside the layer it gates keeps every layer of a container at
its position and name (VGG's ``features``: timm's ``feature_info``, ``forward_intermediates``,
indexing, slicing, ``len`` and checkpoints see the original layers), and runs on every forward path
of its owner (xception's ``forward_with_tap``, which ``forward_intermediates`` takes)."""
import pytest
import timm
import torch
import torchvision
from torch import nn

import se_inject
from se_inject import SqueezeExcite
from se_inject.api import NothingInserted
from se_inject.gated_layer import is_gated_layer

SIZE = (3, 64, 64)
#: the other VGGs share vgg11_bn's code path (timm's one VGG class, cfg by depth): the deepest, with and
#: without BN, stand for them
SLOW_VGGS = ["vgg19", "vgg19_bn"]
#: (source, name, policy): models whose SE blocks gate layers of an nn.Sequential
SEQUENTIAL = [("timm", "vgg11_bn", None), ("tv", "alexnet", None), ("tv", "vgg11_bn", None),
              ("tv", "mobilenet_v3_small", "every-conv")]    # torchvision's Conv2dNormActivation is a Sequential


def build(source, name):
    torch.manual_seed(0)
    if source == "timm":
        return timm.create_model(name, pretrained=False).eval()
    return torchvision.models.get_model(name, weights=None).eval()


def _params(models):
    return [pytest.param(*m, id=f"{m[0]}:{m[1]}" + (f":{m[2]}" if m[2] else "")) for m in models]


def _blocks(model):
    return {path: m for path, m in model.named_modules() if isinstance(m, SqueezeExcite)}


@pytest.mark.parametrize("source,name,policy", _params(SEQUENTIAL) + [
    pytest.param("timm", n, None, id=f"timm:{n}", marks=pytest.mark.slow) for n in SLOW_VGGS])
def test_containers_keep_every_layer_at_its_position_and_name(source, name, policy):
    original = build(source, name)
    model = se_inject.apply(original, policy, input_size=SIZE)
    blocks = _blocks(model)
    holders = [model.get_submodule(p.rpartition(".")[0]) for p in blocks]
    assert holders and all(is_gated_layer(h) for h in holders)       # each block inside the layer it gates
    for path, container in original.named_modules():
        if not isinstance(container, (nn.Sequential, nn.ModuleList)):
            continue
        new = model.get_submodule(path)
        assert len(new) == len(container), path
        assert [n for n, _ in new.named_children()] == [n for n, _ in container.named_children()], path
        for i, layer in enumerate(container):
            assert isinstance(new[i], type(layer)) and type(new[i]).__name__ == type(layer).__name__, f"{path}[{i}]"
        if type(container) in (nn.Sequential, nn.ModuleList):        # a subclass may not rebuild from a slice
            assert [type(m).__name__ for m in new[1:-1]] == [type(m).__name__ for m in container[1:-1]]
    # a checkpoint of the plain model loads: every key keeps its name, only the blocks' are new
    state, plain = model.state_dict(), original.state_dict()
    assert [k for k in state if not any(k.startswith(f"{b}.") for b in blocks)] == list(plain)
    missing, unexpected = model.load_state_dict(plain, strict=False)
    assert not unexpected and all(any(k.startswith(f"{b}.") for b in blocks) for k in missing)


def _needs_forward_intermediates(model) -> None:
    """timm added ``forward_intermediates`` to these families after 1.0.23 (the lowest timm we declare)."""
    if not hasattr(model, "forward_intermediates"):
        import timm
        pytest.skip(f"timm {timm.__version__}'s {type(model).__name__} has no forward_intermediates")


@pytest.mark.parametrize("name", ["vgg11_bn", *(pytest.param(n, marks=pytest.mark.slow) for n in SLOW_VGGS)])
def test_vgg_feature_taps_are_the_plain_models(name):
    original = build("timm", name)
    _needs_forward_intermediates(original)
    model = se_inject.apply(original, input_size=(3, 96, 96))
    x = torch.randn(2, 3, 96, 96)
    assert model.feature_info == original.feature_info
    for info in model.feature_info:
        tap, plain_tap = model.get_submodule(info["module"]), original.get_submodule(info["module"])
        assert type(tap).__name__ == type(plain_tap).__name__
    with torch.no_grad():
        plain = [t.shape for t in original.forward_intermediates(x, intermediates_only=True)]
        final, taps = model.forward_intermediates(x)
        assert [t.shape for t in taps] == plain                    # 96, 48, 24, 12, 6, 3 (not ..., 6, 6)
        assert torch.equal(final, model.forward_features(x))
        early = model.forward_intermediates(x, indices=[1, 2], stop_early=True, intermediates_only=True)
        assert [t.shape for t in early] == plain[1:3]
        hooked = {}
        tap = model.get_submodule(model.feature_info[1]["module"])   # features.6 in vgg11_bn
        handle = tap.register_forward_hook(lambda m, i, o: hooked.setdefault("o", o))
        model(x)
        handle.remove()
        assert torch.equal(taps[1], hooked["o"])                 # a tap is its layer's gated output
        listed = timm.models.FeatureListNet(model, out_indices=(0, 1, 2, 3, 4), flatten_sequential=True)(x)
        assert [t.shape for t in listed] == plain[:5]


#: models with forward_intermediates: xception's strided blocks run forward_with_tap; the others take
#: fused residual sites (SE + add (+ ReLU) in one op) through the same forward as forward_features
INTERMEDIATES = ["xception41", "resnet18", "dla34",
                 *(pytest.param(n, marks=pytest.mark.slow) for n in
                   ["xception65", "xception41p", "cspresnet50"])]


@pytest.mark.parametrize("name", INTERMEDIATES)
def test_forward_intermediates_agrees_with_forward(timm_model, name):
    original = timm_model(name)
    _needs_forward_intermediates(original)
    model = se_inject.apply(original, input_size=SIZE)
    blocks = _blocks(model)
    ran = []
    hooks = [b.register_forward_pre_hook(lambda m, a, p=p: ran.append(p)) for p, b in blocks.items()]
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        features = model.forward_features(x)
        on_forward = set(ran)
        ran.clear()
        final, taps = model.forward_intermediates(x)
        on_intermediates = set(ran)
        plain_final, plain_taps = original.forward_intermediates(x)
    for h in hooks:
        h.remove()
    assert on_forward == on_intermediates == set(blocks)       # every block runs on both paths
    assert torch.equal(plain_final, original.forward_features(x))   # as on the plain model:
    assert torch.equal(final, features)                              # the two paths compute the same
    assert [t.shape for t in taps] == [t.shape for t in plain_taps]


class _PlainBlock(nn.Module):
    """A residual block: its branch is one Sequential."""

    def __init__(self, c: int = 16):
        super().__init__()
        self.stack = nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))

    def forward(self, x):
        return self.stack(x) + x


class _TapBlock(_PlainBlock):
    """The same block with a second forward path that runs the branch's layers one by one."""

    def forward_with_tap(self, x):
        tap = self.stack[0](x)
        return self.stack[2](self.stack[1](tap)) + x, tap


class _Twice(nn.Module):
    def __init__(self, c: int = 16):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x))) + self.act(x)    # the ReLU runs twice


def test_a_second_forward_path_gets_the_block_inside_the_branch():
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), _TapBlock(), _PlainBlock()).eval()
    plan = se_inject.plan(net, input_size=(3, 16, 16))
    assert [(p.module_path, p.fused) for p in plan.placements] == [("1.stack.2.se", False), ("2.se", True)]
    model = se_inject.apply(net, plan)
    x = torch.randn(2, 16, 16, 16)
    with torch.no_grad():
        out, tap = model[1].forward_with_tap(x)
        assert torch.equal(out, model[1](x)) and torch.equal(tap, torch.relu(x))
    assert type(model[1]) is _TapBlock and len(model[1].stack) == 3      # its owner was not rewritten at all


def test_a_layer_called_twice_is_not_a_holder():
    net = nn.Sequential(nn.Conv2d(3, 16, 1), _Twice(), nn.Sequential(nn.Conv2d(16, 16, 1), nn.ReLU()))
    plan = se_inject.plan(net, input_size=(3, 8, 8), kinds=["conv"])
    held = {p.module_path: p.holder for p in plan.placements}
    assert held == {"1.se": "", "2.1.se": "1"}   # _Twice owns its block; the Sequential's ReLU holds its own


def test_applying_twice_adds_nothing_to_a_gated_layer():
    model = se_inject.apply(build("tv", "alexnet"), input_size=SIZE)
    with pytest.warns(NothingInserted):
        again = se_inject.apply(model, input_size=SIZE)
    assert len(_blocks(again)) == len(_blocks(model)) == 5
    plan = se_inject.plan(model, input_size=SIZE, kinds=["conv"])
    assert not plan.placements and [s.reason for s in plan.skipped] == ["already gated"] * 5


def test_a_block_inside_a_weightless_layer_takes_the_owners_device():
    with torch.device("meta"):
        net = nn.Sequential(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU()), nn.Flatten())
    model = se_inject.apply(net, input_size=(3, 8, 8))
    assert model[0][1].se.fc1.weight.device.type == "meta"   # the ReLU has no weight to take it from
