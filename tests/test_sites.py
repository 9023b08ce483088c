"""se_inject.sites: site kinds found over real timm models (policy-free)."""
from collections import Counter

import pytest
from torch import nn

import se_inject

from se_inject.codes import Code
from se_inject.sites import find_sites
from se_inject.tracing import trace_model


def sites_of(model):
    return find_sites(trace_model(model))


def ok_kinds(sites):
    return dict(Counter(s.kind for s in sites if s.status == "ok"))


@pytest.mark.parametrize("name,kind,count", [
    ("resnet50", "residual", 16),
    ("resnext50_32x4d", "residual", 16),
    ("inception_v3", "inception", 11),
    ("inception_resnet_v2", "residual", 40),
    ("repvgg_a2", "multibranch", 22),
    ("convnext_tiny", "residual", 18),
    ("densenet121", "concat", 4),
])
def test_site_counts(timm_model, name, kind, count):
    assert ok_kinds(sites_of(timm_model(name))).get(kind) == count


def test_resnet_residual_site_is_bn3_before_the_add(timm_model):
    site = next(s for s in sites_of(timm_model("resnet50")) if s.kind == "residual")
    assert (site.path, site.node, site.channels, site.layout, site.spatial, site.stage, site.fuse) == (
        "layer1.0", "bn3", 256, "nchw", (56, 56), 2, "add")
    assert site.detail == "shortcut: downsample"


def test_stages_follow_the_paper(timm_model):
    stages = Counter(s.stage for s in sites_of(timm_model("resnet50")) if s.kind == "residual")
    assert stages == {2: 3, 3: 4, 4: 6, 5: 3}  # Table 1: conv2_x .. conv5_x


def test_inception_sites_are_the_module_concats(timm_model):
    sites = [s for s in sites_of(timm_model("inception_v3")) if s.kind == "inception"]
    assert [s.path for s in sites] == ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
                                       "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"]
    assert sites[-1].channels == 2048 and sites[0].stage == 3


def test_inception_resnet_concats_are_covered_by_their_residual_branch(timm_model):
    sites = sites_of(timm_model("inception_resnet_v2"))
    covered = [s for s in sites if s.kind == "inception" and s.covered_by]
    assert len(covered) == 40
    residual_paths = {s.path for s in sites if s.kind == "residual"}
    assert len(residual_paths) == 40 and all(p.startswith(("repeat", "block8")) for p in residual_paths)


def test_existing_gates_are_reported_not_doubled(timm_model):
    sites = sites_of(timm_model("seresnet50"))
    residual = [s for s in sites if s.kind == "residual"]
    assert len(residual) == 16 and all(s.status is Code.ALREADY_GATED for s in residual)
    # EfficientNet's SE sits mid-branch: the branch is gated; its own convs are not sites
    eff = sites_of(timm_model("efficientnet_b0"))
    assert all(s.status is Code.ALREADY_GATED for s in eff if s.kind == "residual")
    assert not any(".se" in s.path for s in eff)


def test_vgg_has_conv_units_only(timm_model):
    kinds = ok_kinds(sites_of(timm_model("vgg11_bn")))
    assert kinds == {"conv": 8}


def test_vit_sites_are_tokens(timm_model):
    sites = [s for s in sites_of(timm_model("vit_tiny_patch16_224")) if s.kind == "residual"]
    assert len(sites) == 24 and {s.layout for s in sites} == {"nlc"} and sites[0].channels == 192


def test_convnext_channels_last_mlp_ends_in_nchw(timm_model):
    site = next(s for s in sites_of(timm_model("convnext_tiny")) if s.kind == "residual")
    assert site.layout == "nchw" and site.channels == 96


class _TokenMixer(nn.Module):
    """Tokens ``(N, L, C)`` out of a module whose last learned layer is a conv of another width (CoaT's
    factorised attention with its depthwise relative-position convs): not a 1-D map."""

    def __init__(self, c: int = 32):
        super().__init__()
        self.qkv, self.proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.pos = nn.Conv2d(c // 2, c // 2, 3, padding=1, groups=c // 2)   # registered last

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.proj(q.softmax(-1) * v) + k


class _TokenNet(nn.Module):
    def __init__(self, c: int = 32):
        super().__init__()
        self.embed = nn.Conv2d(3, c, 4, stride=4)
        self.blocks = nn.ModuleList([_TokenMixer(c) for _ in range(2)])

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)   # (N, L, C)
        for block in self.blocks:
            x = x + block(x)
        return x.mean(1)


def test_rank3_tokens_are_not_read_as_a_1d_map():
    sites = [s for s in sites_of(_TokenNet()) if s.kind == "residual"]
    assert sites and all(s.layout == "nlc" and s.channels == 32 for s in sites), sites
    plan = se_inject.plan(_TokenNet(), input_size=(3, 32, 32))
    assert not plan.placements   # tokens are off by default


def test_conv1d_maps_stay_channels_first():
    net = nn.Sequential(nn.Conv1d(2, 8, 3, padding=1), nn.ReLU(), nn.Conv1d(8, 8, 3, padding=1))
    sites = [s for s in sites_of(net) if s.kind == "conv"]
    assert sites and all(s.layout == "nchw" and s.channels == 8 for s in sites), sites



class _HeadsAttention(nn.Module):
    """CoaT's factorised attention: ``q @ (softmax(k)^T v)``, shape ``(B, heads, N, d)``, scaled and
    added to a conv position encoding of the same shape: a join of attention tensors, not of a map.
    ``reshape_first``: the product is reshaped to ``(B, C, H, W)`` and added to a depthwise conv of
    the map (EfficientFormerV2's ``attn @ v`` + ``v_local``): a map, a site."""

    def __init__(self, c: int = 32, heads: int = 4, reshape_first: bool = False):
        super().__init__()
        self.heads, self.reshape_first = heads, reshape_first
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.pos = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.proj = nn.Conv2d(c, c, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=1)
        pos = self.pos(v)
        if self.reshape_first:
            attn = q.flatten(2).transpose(1, 2) @ (k.flatten(2).softmax(-1) @ v.flatten(2).transpose(1, 2))
            return self.proj(attn.transpose(1, 2).reshape(b, c, h, w) + pos)
        heads = [t.reshape(b, self.heads, c // self.heads, h * w).transpose(2, 3) for t in (q, k, v, pos)]
        q, k, v, pos = heads
        out = 0.5 * (q @ (k.softmax(2).transpose(2, 3) @ v)) + q * pos
        return self.proj(out.transpose(2, 3).reshape(b, c, h, w))


@pytest.mark.parametrize("reshape_first", [False, True])
def test_attention_heads_are_not_channels(reshape_first):
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), _HeadsAttention(reshape_first=reshape_first))
    joins = [s for s in sites_of(net) if s.kind in ("residual", "multibranch")]
    assert len(joins) == 1, joins
    if reshape_first:
        assert joins[0].status is Code.OK and joins[0].layout == "nchw" and joins[0].channels == 32
    else:
        assert joins[0].status is Code.UNSUPPORTED_LAYOUT and "heads, not channels" in joins[0].reason
        assert not any(p.site is joins[0] for p in se_inject.plan(net, input_size=(3, 8, 8)).placements)
