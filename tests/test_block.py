"""se_inject.block: the SE block itself (paper Eq. 2-4)."""
import pytest
import torch
import torch.nn.functional as F
from timm.layers import SEModule

from se_inject.block import SqueezeExcite, reduced_channels


def reference_se(x, se):
    """Eq. 2-4 written out: mean over space, FC, ReLU, FC, sigmoid, scale."""
    z = x.mean((2, 3))
    s = torch.sigmoid(F.linear(F.relu(F.linear(z, se.fc1.weight.flatten(1), se.fc1.bias)), se.fc2.weight.flatten(1), se.fc2.bias))
    return x * s[:, :, None, None]


def test_matches_equations():
    torch.manual_seed(0)
    se = SqueezeExcite(64, r=4)
    x = torch.randn(3, 64, 9, 7)
    torch.testing.assert_close(se(x), reference_se(x, se))


def test_same_state_dict_and_outputs_as_timm_semodule():
    torch.manual_seed(0)
    timm_se = SEModule(256, rd_ratio=1 / 16).eval()
    ours = SqueezeExcite(256, r=16)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in timm_se.state_dict().items()}
    ours.load_state_dict(timm_se.state_dict())
    x = torch.randn(2, 256, 5, 5)
    assert (ours(x) - timm_se(x)).abs().max() <= 1e-6


def test_fused_residual_matches_unfused():
    torch.manual_seed(0)
    se = SqueezeExcite(32, r=4)
    x, shortcut = torch.randn(2, 32, 6, 6), torch.randn(2, 32, 6, 6)
    # addcmul may use a fused multiply-add (one rounding instead of two): equal to ~1 ulp
    assert (se(x, shortcut) - (se(x) + shortcut)).abs().max() <= 1e-5


@pytest.mark.parametrize("gate", ["sigmoid", "hard_sigmoid"])
@pytest.mark.parametrize("layout,shape", [("nchw", (2, 24, 5, 5)), ("nhwc", (2, 5, 5, 24)), ("nlc", (2, 7, 24))])
def test_identity_init_is_exact(gate, layout, shape):
    se = SqueezeExcite(24, r=4, gate=gate, layout=layout, init="identity")
    x = torch.randn(shape)
    assert torch.equal(se(x), x)
    se(x).sum().backward()  # gradients reach the zero-initialised fc2 at once
    assert se.fc2.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("layout,shape,dims", [("nhwc", (2, 5, 6, 16), (1, 2)), ("nlc", (2, 9, 16), (1,))])
def test_channels_last_layouts_pool_the_right_axes(layout, shape, dims):
    torch.manual_seed(0)
    se = SqueezeExcite(16, r=4, layout=layout)
    x = torch.randn(shape)
    z = x.mean(dims)
    s = torch.sigmoid(se.fc2(F.relu(se.fc1(z))))
    expected = x * s.reshape(shape[0], *([1] * len(dims)), 16)
    torch.testing.assert_close(se(x), expected)


@pytest.mark.parametrize("squeeze", ["avg", "max", "avgmax"])
def test_squeeze_options(squeeze):
    x = torch.randn(2, 16, 4, 4)
    se = SqueezeExcite(16, r=4, squeeze=squeeze)
    pooled = {"avg": x.mean((2, 3)), "max": x.amax((2, 3)), "avgmax": 0.5 * (x.mean((2, 3)) + x.amax((2, 3)))}[squeeze]
    torch.testing.assert_close(se._pool(x), pooled)


@pytest.mark.parametrize("channels,r,divisor,expected", [
    (256, 16, 1, 16), (2048, 16, 1, 128), (64, 16, 1, 4), (24, 16, 1, 2), (64, 16, 8, 8), (512, 16, 8, 32), (3, 16, 1, 1)])
def test_reduced_channels(channels, r, divisor, expected):
    assert reduced_channels(channels, r, divisor) == expected


def test_reduced_channels_matches_timm_make_divisible():
    from timm.layers import make_divisible
    for c in (16, 24, 40, 64, 96, 112, 160, 256, 320, 960, 2048):
        assert reduced_channels(c, 16, 8) == make_divisible(c / 16, 8, round_limit=0.0)


def test_bad_options_say_what_is_allowed():
    with pytest.raises(ValueError, match="gate='softmax' is not one of sigmoid, hard_sigmoid"):
        SqueezeExcite(8, gate="softmax")


def test_kernels_triton_on_cpu_is_a_one_line_error():
    from se_inject import KernelError
    se = SqueezeExcite(8, r=2, kernels="triton")
    with pytest.raises(KernelError, match=r"kernels='triton'\): x is on cpu.*use kernels='auto' to fall back") as info:
        se(torch.randn(2, 8, 4, 4))
    assert "\n" not in str(info.value)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_dispatch_keeps_pytorch_for_cpu_tracing_and_scripting(monkeypatch):
    """The fused op is only for CUDA tensors in eager/compiled runs: CPU (auto), fx tracing,
    TorchScript and export always see the PyTorch formulation."""
    import se_inject.ops as ops

    def fail(*a, **k):
        raise AssertionError("the fused op was called")
    monkeypatch.setattr(ops, "squeeze_excite", fail)
    se = SqueezeExcite(8, r=2, post_act="relu")
    x, r = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4)
    se(x, r)
    torch.fx.symbolic_trace(SqueezeExcite(8, r=2, kernels="triton"), concrete_args={"residual": None})
    torch.jit.script(SqueezeExcite(8, r=2, kernels="triton"))(x)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("spatial_dims,shape", [(1, (2, 8, 9)), (2, (2, 8, 5, 5)), (3, (2, 8, 3, 4, 4))])
def test_any_rank_fx_traces_and_scripts(spatial_dims, shape):
    se = SqueezeExcite(8, r=2, spatial_dims=spatial_dims)
    x = torch.randn(shape)
    expected = x * torch.sigmoid(se.fc2(torch.relu(se.fc1(x.mean(tuple(range(2, x.dim())))[:, :, None, None])))) \
        .flatten(1)[(...,) + (None,) * spatial_dims]
    torch.testing.assert_close(se(x), expected)
    traced = torch.fx.symbolic_trace(se, concrete_args={"residual": None})
    torch.testing.assert_close(traced(x), expected)
    torch.testing.assert_close(torch.jit.script(se)(x), expected)


def test_post_act_folds_the_relu_after_the_add():
    se = SqueezeExcite(8, r=2, post_act="relu")
    x, r = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(se(x, r), torch.relu(r + x * se.excitation(x)))
