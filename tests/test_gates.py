"""se_inject.gates: a channel gate known by what it computes, whoever wrote it and however it is split."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import se_inject
from se_inject import operators as ops
from se_inject.codes import Code
from se_inject.gates import GateIndex
from se_inject.sites import find_sites
from se_inject.tracing import trace_model

C = 16


class Residual(nn.Module):
    """``x + tail(conv(relu(conv(x))))``: one residual site, gated or not by ``tail``."""

    def __init__(self, tail: nn.Module, c: int = C) -> None:
        super().__init__()
        self.conv_a, self.conv_b = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.tail = tail

    def forward(self, x):
        return x + self.tail(self.conv_b(torch.relu(self.conv_a(x))))


def residual_status(block: nn.Module, size=(C, 16, 16)) -> Code:
    net = nn.Sequential(nn.Conv2d(size[0], size[0], 1), block)
    sites = [s for s in find_sites(trace_model(net, size)) if s.kind == "residual"]
    assert len(sites) == 1, sites
    return sites[0].status


def gates_of(module: nn.Module, size=(C, 16, 16)):
    traced = trace_model(module, size)
    return GateIndex.of(traced).gates_of(module)


@pytest.fixture
def no_class_names(monkeypatch):
    """Class names out of the picture: only what a graph computes makes a gate."""
    monkeypatch.setattr(ops, "CHANNEL_GATES", ops._Kind([], []))


# ---- gate forms, each written as a stranger would write it

class Squeeze(nn.Module):
    """x * gate(mlp(pool(x))): pool, bottleneck (linear or 1x1 conv) and gate as arguments."""

    def __init__(self, pool, gate, conv: bool = False, act=nn.GELU, c: int = C) -> None:
        super().__init__()
        self.pool, self.gate = pool, gate
        self.mlp = (nn.Sequential(nn.Conv2d(c, c // 4, 1), act(), nn.Conv2d(c // 4, c, 1)) if conv
                    else nn.Sequential(nn.Linear(c, c // 4), act(), nn.Linear(c // 4, c)))
        self.conv = conv

    def forward(self, x):
        z = self.pool(x)
        if self.conv:
            return x * self.gate(self.mlp(z))
        return x * self.gate(self.mlp(z.flatten(1))).view(x.shape[0], -1, 1, 1)


class Eca(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1d = nn.Conv1d(1, 1, 3, padding=1, bias=False)

    def forward(self, x):
        y = self.conv1d(x.mean((2, 3)).unsqueeze(1)).squeeze(1)
        return x * torch.sigmoid(y)[:, :, None, None].expand_as(x)


class ChannelHalf(nn.Module):
    """CBAM's channel attention: one MLP over the mean and over the max, summed, then a sigmoid."""

    def __init__(self, c: int = C) -> None:
        super().__init__()
        self.shared = nn.Sequential(nn.Conv2d(c, c // 4, 1), nn.ReLU(), nn.Conv2d(c // 4, c, 1))

    def forward(self, x):
        return x * torch.sigmoid(self.shared(x.mean((2, 3), keepdim=True)) + self.shared(x.amax((2, 3), keepdim=True)))


class SpatialHalf(nn.Module):
    """CBAM's spatial attention: a map over positions, not channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x):
        return x * torch.sigmoid(self.conv(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)))


class Cbam(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.channel_attention, self.spatial_attention = ChannelHalf(), SpatialHalf()

    def forward(self, x):
        return self.spatial_attention(self.channel_attention(x))


class GatherExcite(nn.Module):
    """Gather over 4x4 regions (a strided pool), excite, upsample the gate back to the map (GE-θ⁻)."""

    def forward(self, x):
        g = F.avg_pool2d(x, 4, stride=4)
        return x * torch.sigmoid(F.interpolate(g, size=x.shape[-2:]))


class Paths(nn.Module):
    """A selective kernel: two paths, weighed per channel by a softmax over the paths."""

    def __init__(self, c: int = C) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 5, padding=2)
        self.fc = nn.Linear(c, 2 * c)

    def forward(self, x):
        paths = torch.stack([self.a(x), self.b(x)], 1)
        w = self.fc(paths.sum(1).mean((2, 3))).view(x.shape[0], 2, -1, 1, 1).softmax(1)
        return (paths * w).sum(1)


class ChannelsLast(nn.Module):
    """ConvNeXt-style (N, H, W, C) map gated by a (N, 1, 1, C) factor."""

    def __init__(self, c: int = C) -> None:
        super().__init__()
        self.fc = nn.Linear(c, c)

    def forward(self, x):
        y = x.permute(0, 2, 3, 1)
        y = y * torch.sigmoid(self.fc(y.mean((1, 2), keepdim=True)))
        return y.permute(0, 3, 1, 2)


class Affine(nn.Module):
    """A learned affine of a gate: ``x * (1 + scale * tanh(.))``."""

    def __init__(self, c: int = C) -> None:
        super().__init__()
        self.fc = nn.Conv2d(c, c, 1)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * (1 + self.scale * torch.tanh(self.fc(F.adaptive_avg_pool2d(x, 1))))


class RawWeights(nn.Module):
    """The whole SE with its own parameters and no child module: fx's tracer keeps it a leaf."""

    def __init__(self, c: int = C) -> None:
        super().__init__()
        self.w1, self.w2 = nn.Parameter(torch.randn(c // 4, c, 1, 1)), nn.Parameter(torch.randn(c, c // 4, 1, 1))

    def forward(self, x):
        s = F.conv2d(F.relu(F.conv2d(x.mean((2, 3), keepdim=True), self.w1)), self.w2)
        return x * F.hardsigmoid(s)


class ParameterFree(nn.Module):
    """No bottleneck at all, no weights: x * sigmoid(max over positions)."""

    def forward(self, x):
        return x * x.amax(dim=(2, 3), keepdim=True).sigmoid()


@pytest.mark.parametrize("make", [
    pytest.param(lambda: Squeeze(nn.AdaptiveAvgPool2d(1), nn.Sigmoid()), id="adaptive-avg-pool,linear,sigmoid"),
    pytest.param(lambda: Squeeze(nn.AdaptiveMaxPool2d(1), nn.Hardsigmoid(), conv=True, act=nn.SiLU),
                 id="adaptive-max-pool,1x1-conv,hard-sigmoid"),
    pytest.param(lambda: Squeeze(nn.AdaptiveAvgPool2d(1), nn.Tanh(), conv=True), id="tanh"),
    pytest.param(lambda: Squeeze(nn.AdaptiveAvgPool2d(1), nn.Softmax(dim=1), conv=True), id="softmax-over-channels"),
    pytest.param(Eca, id="eca-1d-conv"),
    pytest.param(ChannelHalf, id="cbam-channel-half:mean+amax"),
    pytest.param(Cbam, id="cbam-whole"),
    pytest.param(GatherExcite, id="gather-excite"),
    pytest.param(ChannelsLast, id="channels-last"),
    pytest.param(Affine, id="learned-affine-of-tanh"),
    pytest.param(RawWeights, id="leaf-with-raw-weights"),
    pytest.param(ParameterFree, id="parameter-free-leaf"),
])
def test_every_gate_form_makes_its_branch_already_gated(make, no_class_names):
    assert residual_status(Residual(make())) is Code.ALREADY_GATED


def test_softmax_over_paths_is_a_gate(no_class_names):
    assert residual_status(Residual(Paths())) is Code.ALREADY_GATED
    g, = gates_of(Paths())
    assert (g.pool, g.gate, g.x) == ("mean", "softmax", "stack")


@pytest.mark.parametrize("make", [
    pytest.param(SpatialHalf, id="spatial-attention"),
    pytest.param(lambda: _Lambda(lambda x: x * torch.sigmoid(x)), id="silu-full-size-factor"),
    pytest.param(lambda: _Lambda(lambda x: (x - x.mean((2, 3), keepdim=True))
                                 * torch.rsqrt(x.var((2, 3), keepdim=True) + 1e-5)), id="instance-norm-by-hand"),
    pytest.param(lambda: _Scale(), id="layer-scale"),
    pytest.param(lambda: _Lambda(lambda x: x * x.mean((2, 3), keepdim=True)), id="pooled-but-no-gate"),
])
def test_what_is_not_a_channel_gate_leaves_the_site_open(make, no_class_names):
    assert residual_status(Residual(make())) is Code.OK


class _Lambda(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class _Scale(nn.Module):
    def __init__(self, c: int = C) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(c, 1, 1))
        self.fc = nn.Conv2d(c, c, 1)

    def forward(self, x):
        return self.fc(x) * self.gamma.sigmoid()


# ---- a user's SE under unfamiliar names, spread over modules

class Weighting(nn.Module):
    """Computes per-channel weights only; the product is its caller's."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.down, self.up = nn.Linear(c, c // 8), nn.Linear(c // 8, c)

    def forward(self, feats):
        return torch.sigmoid(self.up(F.gelu(self.down(feats.mean(dim=(-2, -1))))))


class Unit(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.first, self.second = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.norm = nn.BatchNorm2d(c)
        self.weighting = Weighting(c)

    def forward(self, inp):
        h = self.norm(self.second(F.relu(self.first(inp))))
        h = h * self.weighting(h).unsqueeze(-1).unsqueeze(-1)
        return F.relu(inp + h)


class Holder(nn.Module):
    """The unit inside a container, its add in the parent: the residual add is one level up."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
                                  _Excite(c), nn.Conv2d(c, c, 1))

    def forward(self, x):
        return x + self.body(x)


class _Excite(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.pooler = nn.AdaptiveAvgPool2d((1, 1))
        self.attention = Weighting2(c)

    def forward(self, h):
        return h * self.attention(self.pooler(h))


class Weighting2(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(nn.Conv2d(c, c // 4, 1), nn.ReLU(), nn.Conv2d(c // 4, c, 1), nn.Sigmoid())

    def forward(self, z):
        return self.seq(z)


def test_a_users_gate_in_a_child_multiplied_in_its_parent(no_class_names):
    net = nn.Sequential(nn.Conv2d(3, 32, 3, stride=2), Unit(32), Unit(32))
    plan = se_inject.plan(net, input_size=(3, 32, 32), count_flops=False)
    assert not plan.placements
    assert plan.skipped_by_reason() == {"already gated": 2}
    g, = gates_of(Unit(32), (32, 8, 8))
    assert (g.node, g.x, g.pool, g.gate, g.modules, g.on_input) == ("mul", "norm", "Weighting", "Weighting",
                                                                     ("weighting",), False)


def test_a_gate_two_levels_below_the_add(no_class_names):
    net = nn.Sequential(nn.Conv2d(3, 16, 1), Holder(16))
    plan = se_inject.plan(net, input_size=(3, 16, 16), count_flops=False)
    assert not plan.placements and plan.skipped_by_reason() == {"already gated": 1}
    assert not any("attention" in s.site.path for s in plan.skipped)  # the gate's own convs are no sites


def test_an_ungated_unit_still_gets_se():
    net = nn.Sequential(nn.Conv2d(3, 16, 1), Residual(nn.Identity()))
    assert len(se_inject.plan(net, input_size=(3, 16, 16), count_flops=False).placements) == 1


# ---- timm's and torchvision's gates are cases of the rule (class names no longer needed)

@pytest.mark.parametrize("name", ["seresnet18", "ecaresnet26t", "efficientnet_b0", "mobilenetv3_small_100",
                                  "skresnet18", "resnest14d", "regnety_002"])
def test_timm_gates_are_found_by_what_they_compute(timm_model, name, no_class_names, monkeypatch):
    """The same plan without class names as with them. (Conv sites may differ, which plans use only in
    nets without residual sites: ResNeSt's split attention convolves before it gates, so structurally
    the conv before it is not gated, as its class name said.)"""
    def placed(plan):
        return [(p.module_path, p.site.kind) for p in plan.placements], plan.skipped_by_reason().get("already gated", 0)

    structural = placed(se_inject.plan(timm_model(name), input_size=(3, 64, 64), count_flops=False))
    residual = [s for s in find_sites(trace_model(timm_model(name), (3, 64, 64))) if s.kind == "residual"]
    monkeypatch.undo()
    assert placed(se_inject.plan(timm_model(name), input_size=(3, 64, 64), count_flops=False)) == structural
    assert any(s.status is Code.ALREADY_GATED for s in residual)


def test_torchvision_gates_are_found_by_what_they_compute(no_class_names):
    import torchvision
    for model in (torchvision.models.regnet_y_400mf(), torchvision.models.efficientnet_b0()):
        sites = [s for s in find_sites(trace_model(model, (3, 64, 64))) if s.kind == "residual"]
        assert sites and all(s.status is Code.ALREADY_GATED for s in sites)


def test_class_names_remain_the_fallback_for_untraceable_gates():
    """timm's GatherExcite branches on a shape (fx cannot trace it): known by its class only."""
    from timm.layers.gather_excite import GatherExcite
    assert residual_status(Residual(GatherExcite(C, use_mlp=False))) is Code.ALREADY_GATED


def test_an_untraceable_gate_is_not_found_without_its_class_name(no_class_names):
    from timm.layers.gather_excite import GatherExcite
    assert residual_status(Residual(GatherExcite(C, use_mlp=False))) is Code.OK


# ---- rank 3: a 1-D map (N, C, L) made by a conv, or tokens (N, L, C)

class OneD(nn.Module):
    """SE on a Conv1d map (ECAPA-TDNN's): the factor (N, C, 1) spreads over the length."""

    def __init__(self, c: int = C) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv1d(c, c, 3, padding=1), nn.Linear(c, c)

    def forward(self, x):
        y = self.conv(x)
        return y * torch.sigmoid(self.fc(y.mean(-1))).unsqueeze(-1)


class TokenSE(nn.Module):
    """SE over tokens (N, L, C): the factor (N, 1, C) is per channel, pooled over the tokens."""

    def __init__(self, c: int = C) -> None:
        super().__init__()
        self.proj, self.fc = nn.Linear(c, c), nn.Linear(c, c)

    def forward(self, x):
        y = self.proj(x)
        return y * torch.sigmoid(self.fc(y.mean(1, keepdim=True)))


class TokenWeights(nn.Module):
    """A weight per token from a projection to one value (SwiftFormer's additive attention): (N, L, 1)
    spreads over the channels, not the tokens; no channel gate."""

    def __init__(self, c: int = C) -> None:
        super().__init__()
        self.proj = nn.Linear(c, c)
        self.w_g = nn.Parameter(torch.randn(c, 1))

    def forward(self, x):
        q = self.proj(x)
        return q * (q @ self.w_g).softmax(dim=1)


@pytest.mark.parametrize("make,size,found", [(OneD, (C, 32), True), (TokenSE, (10, C), True),
                                             (TokenWeights, (10, C), False)])
def test_rank3_channels_follow_the_layer_that_made_them(make, size, found, no_class_names):
    module = make()
    assert bool(gates_of(module, size)) is found


@pytest.mark.parametrize("name,kinds", [
    ("cs3sedarknet_l", {"residual", "split"}),   # a CSP stage of SE blocks: its split-concat is gated by them
    ("ese_vovnet19b_dw", {"concat"}),            # an OSA block's concat, its aggregation conv, then its ESE
    ("rdnet_base", {"concat"}),                  # RDNet's dense stages of ESE blocks
])
def test_units_that_carry_their_input_are_gated_by_the_gates_in_or_after_them(timm_model, name, kinds):
    plan = se_inject.plan(timm_model(name), input_size=(3, 64, 64), count_flops=False)
    gated = {s.site.kind for s in plan.skipped if s.site.status is Code.ALREADY_GATED}
    assert kinds <= gated
    # and no fallback to conv units when the dense blocks gate themselves
    assert not any(p.site.kind == "conv" for p in plan.placements)
    if name != "rdnet_base":  # RDNet's first stages hold plain blocks: those get SE
        assert not plan.placements


class HalfSizeAttention(nn.Module):
    """GhostNetV2's DFC attention: a gate map at half the size, upsampled: spatial attention, no channel gate."""

    def __init__(self, c: int = C) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, groups=c)

    def forward(self, x):
        return x * F.interpolate(torch.sigmoid(self.conv(F.avg_pool2d(x, 2, 2))), size=x.shape[-2:])


def test_a_half_size_attention_map_is_no_channel_gate(no_class_names):
    assert residual_status(Residual(HalfSizeAttention())) is Code.OK


class SideInput(nn.Module):
    """A block given a side input besides its map (GC ViT's global query): its branch starts here."""

    def __init__(self, c: int = C) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x, context):
        return x + self.conv(x + context)


class WithContext(nn.Module):
    def __init__(self, c: int = C) -> None:
        super().__init__()
        self.context_conv, self.context_gate, self.block = nn.Conv2d(c, c, 1), ParameterFree(), SideInput(c)

    def forward(self, x):
        return self.block(x, self.context_gate(self.context_conv(x)))


def test_a_gate_on_a_side_input_does_not_gate_the_branch(no_class_names):
    sites = [s for s in find_sites(trace_model(WithContext(), (C, 16, 16))) if s.kind == "residual"]
    assert [(s.path, s.status) for s in sites] == [("block", Code.OK)]
