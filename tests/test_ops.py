"""se_inject.ops: the fused squeeze-excite op against the block's PyTorch formulation (issue 11).

Two halves:

- **Kernels under Triton's interpreter** (``@pytest.mark.kernels``). ``TRITON_INTERPRET=1`` only
  takes effect if it is set before ``@triton.jit`` runs, i.e. before ``se_inject.ops`` is first
  imported, and any earlier test may have imported it. So one subprocess (this file run as a
  script, :func:`_worker`) imports the ops with the interpreter on, runs every :data:`CASES` entry
  and prints one JSON line per case; each parametrised test reads its own line. The interpreter
  never leaks into the other tests, and a case failing is reported under its own name.
- **Everything else in process**: the reference against the block, dispatch and its reasons, the
  op's PyTorch twins (CPU implementation), opcheck, torch.compile, the fake implementation on
  CUDA-device fake tensors, and the GPU benchmark's CPU smoke run.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

import se_inject.ops as ops
from se_inject.ops import (KernelError, fused, kernels, reference_squeeze_excite, squeeze_excite,
                           unsupported_reason)

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ("squeeze_partials", "excite", "grad_reduce", "grad_input")


# ---------------------------------------------------------------------------------------------
# Interpreter cases: each builds its inputs from a seed, runs squeeze_excite and the reference,
# and compares the output and every gradient.

@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    shape: tuple[int, ...]              # logical shape of x
    channel_dim: int = 1
    layout: str = "contiguous"          # how x (and residual) are laid out, see _arrange
    dtype: torch.dtype = torch.float32
    squeeze: str = "avgmax"
    gate: str = "sigmoid"
    residual: bool = True
    post_act: str | None = "relu"
    gate_scale: float = 1.0
    identity: bool = False              # fc2 zeroed (with gate_scale 2: the block's identity init)
    conv_weights: bool = True           # (R, C, 1, 1) weights, else (R, C)
    bias: bool = True
    ties: bool = False                  # x drawn from a few integers: the max is tied
    grad: str = "like"                  # grad_out: "like" out, "contiguous", or "sum" (expanded)
    x_grad: bool = True                 # x requires grad
    inplace: bool = False
    autocast: bool = False              # bf16 x, fp32 weights, under torch.autocast("cpu")
    launches: tuple[str, ...] = KERNELS  # the kernels the case must run (() = a fallback)


def _cases() -> list[Case]:
    cases = []
    # each squeeze and gate, with and without residual and post_act, on channels_last maps
    for squeeze in ("avg", "max", "avgmax"):
        for gate in ("sigmoid", "hard_sigmoid"):
            for residual in (True, False):
                for post_act in ("relu", None):
                    cases.append(Case(f"{squeeze}-{gate}-{'res' if residual else 'nores'}-{post_act}",
                                      (2, 6, 3, 5), layout="channels_last", squeeze=squeeze, gate=gate,
                                      residual=residual, post_act=post_act, gate_scale=1.5))
    cases += [
        # layouts: NCHW, channels_last, NHWC and NLC logical, 1-D and 3-D maps
        Case("nchw", (2, 5, 4, 3)),
        Case("nchw-channels_last", (2, 5, 4, 3), layout="channels_last"),
        Case("nhwc", (2, 4, 3, 5), channel_dim=-1),
        Case("nhwc-from-nchw-memory", (2, 4, 3, 5), channel_dim=-1, layout="permuted"),
        Case("nlc", (2, 7, 5), channel_dim=-1),
        Case("ncl-1d", (2, 5, 9), squeeze="max"),
        Case("ncdhw-3d", (2, 5, 2, 3, 2)),
        Case("ncdhw-channels_last_3d", (2, 5, 2, 3, 2), layout="channels_last_3d"),
        Case("ndhwc-3d", (2, 2, 3, 2, 5), channel_dim=-1, squeeze="avg"),
        # C not a multiple of the block size (tiles are capped at 64 elements in the worker)
        Case("c19-nchw", (2, 19, 3, 3)),
        Case("c70-channels_last", (2, 70, 2, 2), layout="channels_last"),
        Case("c1", (2, 1, 4, 4), layout="channels_last"),
        # 1x1 maps, batch 1 (a reduction split over L, several steps a program), a long map
        Case("1x1-nchw", (3, 7, 1, 1)),
        Case("1x1-nhwc", (3, 1, 1, 7), channel_dim=-1),
        Case("batch1-split-nchw", (1, 3, 12, 12)),
        Case("batch1-split-channels_last", (1, 5, 12, 12), layout="channels_last", squeeze="max"),
        Case("long-map-nchw", (8, 1, 10, 20), squeeze="avg"),
        # non-contiguous inputs the kernels take by strides, and ones that fall back
        Case("channel-slice", (2, 5, 3, 3), layout="channel_slice"),
        Case("channel-slice-nhwc", (2, 3, 3, 5), channel_dim=-1, layout="channel_slice"),
        Case("batch-slice", (2, 5, 3, 3), layout="batch_slice", squeeze="avg"),
        Case("mixed-layouts", (2, 5, 3, 4), layout="mixed"),
        Case("spatial-slice-falls-back", (2, 5, 3, 3), layout="spatial_slice", launches=()),
        Case("grad-contiguous-out-channels_last", (2, 5, 3, 3), layout="channels_last", grad="contiguous"),
        Case("grad-expanded", (2, 5, 3, 3), grad="sum"),
        # max pooling with ties: torch.amax splits the gradient evenly over them
        Case("max-ties", (2, 4, 3, 3), squeeze="max", ties=True),
        Case("avgmax-ties-channels_last", (2, 4, 3, 3), layout="channels_last", ties=True),
        # identity init (gate_scale 2, zero fc2), weight shapes, biases, partial gradients
        Case("identity-init", (2, 5, 3, 3), gate_scale=2.0, identity=True, post_act=None),
        Case("identity-init-relu-hard", (2, 5, 3, 3), gate="hard_sigmoid", gate_scale=2.0, identity=True),
        Case("linear-weights-no-bias", (2, 5, 3, 3), conv_weights=False, bias=False),
        Case("weights-only-grad", (2, 5, 3, 3), x_grad=False, launches=KERNELS[:3]),  # no pass 2
        # half precision (relative 1e-2 against the fp32 reference) and autocast
        Case("bf16-nchw", (2, 6, 3, 3), dtype=torch.bfloat16),
        Case("bf16-channels_last", (2, 6, 3, 3), dtype=torch.bfloat16, layout="channels_last"),
        Case("bf16-nlc-avg-nores", (2, 5, 6), channel_dim=-1, dtype=torch.bfloat16, squeeze="avg",
             residual=False, post_act=None),
        Case("fp16-nchw", (2, 6, 3, 3), dtype=torch.float16),
        Case("fp16-channels_last-max", (2, 6, 3, 3), dtype=torch.float16, layout="channels_last", squeeze="max"),
        Case("autocast-bf16", (2, 6, 3, 3), dtype=torch.bfloat16, layout="channels_last", autocast=True),
        # float64: not a kernel dtype, runs the reference
        Case("fp64-falls-back", (2, 5, 3, 3), dtype=torch.float64, launches=()),
        # in place, without autograd
        Case("inplace-res-relu", (2, 5, 3, 3), layout="channels_last", inplace=True, launches=KERNELS[:2]),
        Case("inplace-nores", (2, 5, 3, 3), residual=False, post_act=None, inplace=True, launches=KERNELS[:2]),
        Case("inplace-nhwc", (2, 3, 3, 5), channel_dim=-1, inplace=True, launches=KERNELS[:2]),
    ]
    return cases


CASES = _cases()


def _arrange(t: torch.Tensor, case: Case, role: str) -> torch.Tensor:
    """``t`` (contiguous, logical shape) laid out as the case says; a leaf with those strides."""
    cd = 1 if case.channel_dim == 1 else t.dim() - 1
    if case.layout in ("channels_last", "channels_last_3d"):
        fmt = torch.channels_last if t.dim() == 4 else torch.channels_last_3d
        out = t.contiguous(memory_format=fmt)
    elif case.layout == "permuted":  # channels-last logical, channels-first memory
        out = t.movedim(cd, 1).contiguous().movedim(1, cd)
    elif case.layout == "channel_slice":  # every other channel of a map twice as wide
        out = torch.stack([t, torch.zeros_like(t)], dim=cd + 1).flatten(cd, cd + 1)
        out = out[(slice(None),) * cd + (slice(None, None, 2),)]
    elif case.layout == "batch_slice":
        out = torch.stack([t, torch.zeros_like(t)], dim=1).flatten(0, 1)[::2]
    elif case.layout == "spatial_slice":  # every other row: the spatial dims do not collapse
        d = 2 if cd == 1 else 1
        out = torch.stack([t, torch.zeros_like(t)], dim=d + 1).flatten(d, d + 1)
        out = out[(slice(None),) * d + (slice(None, None, 2),)]
    elif case.layout == "mixed":  # x channels_last, residual contiguous
        out = t.contiguous(memory_format=torch.channels_last) if role == "x" else t.contiguous()
    else:
        out = t.contiguous()
    assert torch.equal(out, t)
    return out


def _inputs(case: Case) -> dict[str, torch.Tensor | None]:
    torch.manual_seed(hash(case.id) % 2**31)
    c = case.shape[1 if case.channel_dim == 1 else -1]
    r = max(1, c // 2)
    if case.ties:
        x = torch.randint(-2, 3, case.shape).float()
    else:
        x = torch.randn(case.shape)
    wshape = (lambda o, i: (o, i, 1, 1)) if case.conv_weights else (lambda o, i: (o, i))
    fc2_w = torch.zeros(wshape(c, r)) if case.identity else torch.randn(wshape(c, r)) / r ** 0.5
    tensors = {"x": x, "residual": torch.randn(case.shape) if case.residual else None,
               "w1": torch.randn(wshape(r, c)) / c ** 0.5, "b1": torch.randn(r) if case.bias else None,
               "w2": fc2_w, "b2": (torch.zeros(c) if case.identity else torch.randn(c)) if case.bias else None}
    return tensors


def _run(fn, case: Case, tensors: dict, dtype: torch.dtype, weight_dtype: torch.dtype, grad_out, autocast: bool):
    """(out, {name: grad}) of ``fn`` on copies of ``tensors`` in ``dtype``, laid out per the case."""
    leaves = {}
    for name, t in tensors.items():
        if t is None:
            leaves[name] = None
            continue
        t = t.to(dtype if name in ("x", "residual") else weight_dtype)
        if name in ("x", "residual"):
            t = _arrange(t, case, name)
        wants_grad = not case.inplace and (name != "x" or case.x_grad)
        leaves[name] = t.detach().requires_grad_(wants_grad)
    args = [leaves[k] for k in ("x", "residual", "w1", "b1", "w2", "b2")]
    kw = dict(channel_dim=case.channel_dim, squeeze=case.squeeze, gate=case.gate,
              gate_scale=case.gate_scale, post_act=case.post_act, inplace=case.inplace)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), torch.set_grad_enabled(not case.inplace):
        x_ptr = leaves["x"].data_ptr()
        out = fn(*args, **kw)
    if case.inplace:
        assert out.data_ptr() == x_ptr, "inplace=True did not write into x"
        return out, {}
    if case.grad == "sum":
        out.float().sum().backward()
    else:
        out.backward(grad_out(out))
    return out, {k: v.grad for k, v in leaves.items() if v is not None and v.grad is not None}


def _compare(name: str, got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    got, want = got.double(), want.double()
    if dtype in (torch.float32, torch.float64):
        err = ((got - want).abs() - 1e-5 * want.abs()).max().item()
        assert err <= 1e-5, f"{name}: |fused - reference| exceeds 1e-5 + 1e-5 |reference| by {err:.2e}"
    else:  # half precision: relative to the largest reference value, against the fp32 reference
        err = ((got - want).abs().max() / want.abs().max().clamp_min(1e-12)).item()
        assert err <= 1e-2, f"{name}: relative error {err:.2e} > 1e-2"


def check_case(case: Case, launched: list[str]) -> None:
    """Run one case (in the interpreter worker); raises AssertionError on a mismatch."""
    tensors = _inputs(case)
    seed_grad = hash(case.id + "grad") % 2**31

    def grad_out(out):
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed_grad)).to(case.dtype).to(out.dtype)
        return g if case.grad == "contiguous" else torch.empty_like(out).copy_(g)

    weight_dtype = torch.float32 if case.autocast else case.dtype
    out, grads = _run(squeeze_excite, case, tensors, case.dtype, weight_dtype, grad_out, case.autocast)
    expected = list(case.launches) if not case.inplace else list(case.launches[:2])
    assert launched == expected, f"launched {launched}, expected {expected}"
    assert out.dtype == case.dtype, f"output dtype {out.dtype}, x is {case.dtype}"
    if case.layout in ("contiguous", "channels_last", "channels_last_3d", "mixed"):
        assert out.stride() == _arrange(out.detach(), case, "x").stride(), f"out strides {out.stride()} are not x's"
    # the reference: in fp32 (on the same rounded inputs) for half-precision cases
    ref_dtype = torch.float32 if case.dtype in (torch.bfloat16, torch.float16) else case.dtype
    rounded = {k: (None if t is None else t.to(case.dtype if k in ("x", "residual") else weight_dtype))
               for k, t in tensors.items()}
    ref_out, ref_grads = _run(reference_squeeze_excite, case, rounded, ref_dtype,
                              torch.float32 if ref_dtype == torch.float32 else ref_dtype, grad_out, False)
    _compare("out", out, ref_out, case.dtype)
    if case.identity and case.dtype == torch.float32:  # the block's identity init is exact
        want = rounded["x"] if case.residual is False else rounded["x"] + rounded["residual"]
        assert torch.equal(out, torch.relu(want) if case.post_act else want), "identity init is not exact"
    if case.autocast:  # the MLP in fp32: out is the fp32 result rounded once, to within 1 bf16 ulp
        # (the interpreter casts fp32 -> bf16 towards zero; a GPU rounds to nearest: half an ulp)
        assert ((out.double() - ref_out.double()).abs() <= 2**-7 * ref_out.double().abs() + 1e-6).all(), \
            "under autocast the output is not the fp32-MLP result rounded once to bf16"
        assert grads["w1"].dtype == torch.float32
    assert set(grads) == set(ref_grads), f"gradients {sorted(grads)} != reference's {sorted(ref_grads)}"
    for name in grads:
        _compare(f"grad {name}", grads[name], ref_grads[name], weight_dtype if name[0] in "wb" else case.dtype)


def _worker() -> int:
    """Entry point of the interpreter subprocess: one JSON line per case on stdout."""
    assert kernels.INTERPRETED, "run with TRITON_INTERPRET=1 set before se_inject.ops is imported"
    # tiny tiles and a split target so that small maps still cover partial blocks and split reductions
    kernels.CONFIG = kernels.TileConfig(max_tile=64, cpu_programs=8)
    launched: list[str] = []
    for name in KERNELS:  # record each launch, so a case cannot pass on the PyTorch twins
        real = getattr(kernels, name)
        setattr(kernels, name, lambda *a, _real=real, _name=name, **k: (launched.append(_name), _real(*a, **k))[1])
    selected = set(sys.argv[2:])
    for case in CASES:
        if selected and case.id not in selected:
            continue
        launched.clear()
        t0 = time.perf_counter()
        try:
            check_case(case, launched)
            result = {"id": case.id, "ok": True, "message": ""}
        except Exception as e:  # noqa: BLE001 (reported to the parent test, which fails)
            result = {"id": case.id, "ok": False, "message": f"{type(e).__name__}: {e}"}
        result["seconds"] = round(time.perf_counter() - t0, 3)
        print(json.dumps(result), flush=True)
    checks = {**_opchecks(), E2E: _apply_resnet50_matches}
    for name, fn in checks.items():
        if selected and name not in selected:
            continue
        launched.clear()
        t0 = time.perf_counter()
        try:
            fn(launched) if name == E2E else fn()
            result = {"id": name, "ok": True, "message": ""}
        except Exception as e:  # noqa: BLE001
            result = {"id": name, "ok": False, "message": f"{type(e).__name__}: {e}"}
        result["seconds"] = round(time.perf_counter() - t0, 3)
        print(json.dumps(result), flush=True)
    return 0


E2E = "apply-resnet50-triton-vs-torch"


def _apply_resnet50_matches(launched: list[str]) -> None:
    """``apply(resnet50, kernels="triton")`` forward and backward (the kernels, through the block)
    equal ``kernels="torch"`` (the reference) with the same weights, on one 32x32 channels_last image."""
    import timm

    import se_inject
    # whole maps per program: the interpreter's cost is per program, and the cases cover tiling
    kernels.CONFIG = kernels.TileConfig(max_tile=1 << 16, max_block=4096)
    torch.manual_seed(0)
    plain = timm.create_model("resnet50", pretrained=False)
    for m in plain.modules():  # timm zero-inits each branch's last BN: SE would gate zeros
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.normal_(m.weight, 1.0, 0.2)
            torch.nn.init.normal_(m.bias, 0.0, 0.2)
    fused = se_inject.apply(plain, kernels="triton").eval()
    unfused = copy.deepcopy(fused)  # the same model and weights, with the blocks' PyTorch path
    for m in unfused.modules():
        if hasattr(m, "kernels"):
            m.kernels = "torch"
    models = {"triton": fused, "torch": unfused}
    x = torch.randn(1, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    results = {}
    for name, model in models.items():
        model = model.to(memory_format=torch.channels_last)
        launched.clear()
        out = model(x)
        out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
        results[name] = (out, {k: p.grad for k, p in model.named_parameters()}, list(launched))
    n_se = sum(type(m).__name__ == "SqueezeExcite" for m in models["triton"].modules())
    expected = list(KERNELS[:2]) * 16 + list(KERNELS[2:]) * 16  # forward in order, then backward
    assert n_se == 16 and results["triton"][2] == expected, f"{n_se} SE blocks, launches {results['triton'][2]}"
    assert results["torch"][2] == [], "kernels='torch' launched kernels"
    (out, grads, _), (ref, ref_grads, _) = results["triton"], results["torch"]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    for k, g in grads.items():
        torch.testing.assert_close(g, ref_grads[k], rtol=1e-4, atol=1e-4 * ref_grads[k].abs().max().item() + 1e-12,
                                   msg=lambda m, k=k: f"grad of {k}: {m}")


def _op_args(shape=(2, 6, 3, 3), residual=True, memory_format=torch.channels_last, requires_grad=True):
    torch.manual_seed(0)
    x = torch.randn(shape).contiguous(memory_format=memory_format)
    r = torch.randn(shape).contiguous(memory_format=memory_format) if residual else None
    c = shape[1]
    w = [torch.randn(3, c, 1, 1), torch.randn(3), torch.randn(c, 3, 1, 1), torch.randn(c)]
    tensors = [t.requires_grad_(requires_grad) if t is not None else None for t in (x, r, *w)]
    return tuple(tensors) + (1, "avgmax", "sigmoid", 2.0, "relu")


def _opchecks() -> dict:
    """torch.library.opcheck of the three ops: schema, autograd registration, fake impl, AOT."""
    def backward_args():
        x, r, w1, b1, w2, b2, *options = _op_args(requires_grad=False)
        out, stats = torch.ops.se_inject.squeeze_excite(x, r, w1, b1, w2, b2, *options)
        return (torch.randn_like(out), x, out, stats, w1, b1, w2, b2, *options[:4], True, True)
    return {
        "opcheck-forward": lambda: torch.library.opcheck(torch.ops.se_inject.squeeze_excite.default, _op_args()),
        "opcheck-backward": lambda: torch.library.opcheck(torch.ops.se_inject.squeeze_excite_backward.default,
                                                          backward_args()),
        "opcheck-inplace": lambda: torch.library.opcheck(torch.ops.se_inject.squeeze_excite_inplace.default,
                                                         _op_args(requires_grad=False)),
    }


# ---------------------------------------------------------------------------------------------
# In process: no interpreter (CPU tensors run the reference or the op's PyTorch twins).

needs_plain_cpu = pytest.mark.skipif(kernels.INTERPRETED, reason="TRITON_INTERPRET=1 is set for this process")


def _se_args(shape=(2, 8, 5, 5), channel_dim=1, residual=True, conv=True, seed=0):
    torch.manual_seed(seed)
    c = shape[channel_dim]
    w = (lambda o, i: torch.randn(o, i, 1, 1)) if conv else (lambda o, i: torch.randn(o, i))
    return (torch.randn(shape), torch.randn(shape) if residual else None,
            w(3, c), torch.randn(3), w(c, 3), torch.randn(c))


@pytest.mark.parametrize("layout,shape", [("nchw", (2, 16, 5, 5)), ("nhwc", (2, 5, 5, 16)), ("nlc", (2, 7, 16))])
@pytest.mark.parametrize("squeeze,gate,init", [("avg", "sigmoid", "default"), ("max", "hard_sigmoid", "identity"),
                                               ("avgmax", "sigmoid", "identity")])
def test_reference_is_the_blocks_forward(layout, shape, squeeze, gate, init):
    from se_inject.block import SqueezeExcite
    torch.manual_seed(0)
    se = SqueezeExcite(16, r=4, layout=layout, squeeze=squeeze, gate=gate, init=init)
    if init == "identity":  # leave the identity point, so the gate is not exactly 1
        torch.nn.init.normal_(se.fc2.weight)
    x, r = torch.randn(shape), torch.randn(shape)
    cd = 1 if layout == "nchw" else -1
    weights = (se.fc1.weight, se.fc1.bias, se.fc2.weight, se.fc2.bias)
    kw = dict(channel_dim=cd, squeeze=squeeze, gate=gate, gate_scale=se.gate_scale)
    with torch.no_grad():
        assert torch.equal(reference_squeeze_excite(x, None, *weights, **kw), se(x))
        assert torch.equal(reference_squeeze_excite(x, r, *weights, **kw), se(x, r))
        assert torch.equal(reference_squeeze_excite(x, r, *weights, **kw, post_act="relu"), torch.relu(se(x, r)))


@needs_plain_cpu
def test_cpu_tensors_run_the_reference():
    args = _se_args()
    assert unsupported_reason(args[0], args[1], channel_dim=1, squeeze="avg", gate="sigmoid").startswith("x is on cpu")
    kw = dict(channel_dim=1, squeeze="avgmax", post_act="relu")
    assert torch.equal(squeeze_excite(*args, **kw), reference_squeeze_excite(*args, **kw))
    with pytest.raises(KernelError, match="x is on cpu"):
        squeeze_excite(*args, **kw, fallback=False)


def _to_fake_cuda(mode, t):
    """A fake CUDA tensor with ``t``'s shape, strides and dtype: needs no GPU, only metadata."""
    with mode:
        return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cuda")


X = torch.randn(2, 8, 6, 6)
UNSUPPORTED = [
    ("contiguous", X, None, 1, None),
    ("channels_last", X.contiguous(memory_format=torch.channels_last), None, 1, None),
    ("nhwc", X.permute(0, 2, 3, 1).contiguous(), None, -1, None),
    ("nhwc as dim 3", X.permute(0, 2, 3, 1).contiguous(), None, 3, None),
    ("channel slice", X[:, ::2], None, 1, None),
    ("residual of another layout", X, X.contiguous(memory_format=torch.channels_last), 1, None),
    ("float64", X.double(), None, 1, "float64"),
    ("spatial slice", X[:, :, ::2], None, 1, "do not collapse"),
    ("residual spatial slice", X[:, :, :3], X[:, :, ::2], 1, "residual's spatial dims"),
    ("broadcast residual", X, X[:1], 1, "no broadcasting"),
    ("residual dtype", X, X.half(), 1, "residual is torch.float16"),
    ("2-d", X[:, :, 0, 0], None, 1, "2 dims"),
    ("6-d", X[..., None, None], None, 1, "6 dims"),
    ("channel_dim 2", X, None, 2, "channel_dim=2"),
    ("empty", X[:0], None, 1, "empty"),
]


@pytest.mark.parametrize("name,x,residual,channel_dim,reason", UNSUPPORTED, ids=[u[0] for u in UNSUPPORTED])
def test_unsupported_reason_on_cuda_tensors(name, x, residual, channel_dim, reason):
    from torch._subclasses.fake_tensor import FakeTensorMode
    mode = FakeTensorMode()
    fx, fr = (None if t is None else _to_fake_cuda(mode, t) for t in (x, residual))
    got = unsupported_reason(fx, fr, channel_dim=channel_dim, squeeze="avgmax", gate="sigmoid")
    if reason is None:
        assert got is None
    else:
        assert got is not None and reason in got and "\n" not in got


@pytest.mark.parametrize("kw,match", [({"squeeze": "mean"}, "squeeze='mean' is not one of 'avg', 'max', 'avgmax'"),
                                      ({"gate": "swish"}, "gate='swish'"), ({"post_act": "gelu"}, "post_act='gelu'"),
                                      ({"channel_dim": 2}, "channel_dim=2 for a 4-d map; pass 1")])
def test_bad_options_raise_one_line_errors(kw, match):
    from se_inject.errors import SEInjectError
    kw = {"channel_dim": 1, **kw}
    with pytest.raises(KernelError, match=match) as info:
        squeeze_excite(*_se_args(), **kw)
    assert isinstance(info.value, SEInjectError) and "\n" not in str(info.value)


def _op(*args, options=(1, "avgmax", "sigmoid", 1.5, "relu")):
    return torch.ops.se_inject.squeeze_excite(*args, *options)[0]


@needs_plain_cpu
@pytest.mark.parametrize("squeeze", ["avg", "max", "avgmax"])
@pytest.mark.parametrize("residual,post_act", [(True, "relu"), (True, None), (False, "relu"), (False, None)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_op_on_cpu_matches_reference(squeeze, residual, post_act, channels_last):
    """The op's CPU implementation (the PyTorch twins of the kernels) checks the fused maths, the
    MLP backward and the pooling's share of the gradient included, without Triton."""
    base = _se_args(residual=residual)
    if channels_last:
        base = tuple(t.contiguous(memory_format=torch.channels_last) if t is not None and t.dim() == 4
                     and t.shape[-1] > 1 else t for t in base)
    options = (1, squeeze, "sigmoid", 2.0, post_act)
    kw = dict(channel_dim=1, squeeze=squeeze, gate_scale=2.0, post_act=post_act)
    results = []
    for fn in (lambda *a: _op(*a, options=options), lambda *a: reference_squeeze_excite(*a, **kw)):
        leaves = [None if t is None else t.clone().requires_grad_() for t in base]
        out = fn(*leaves)
        out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
        results.append([out] + [t.grad for t in leaves if t is not None])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_torch_compile_through_the_op():
    """fullgraph: the op traces (its fake impl), its autograd formula and backward op compile too."""
    args = [t.detach().requires_grad_() for t in _se_args()]
    eager = torch.relu(_op(*args)) * 2
    eager.sum().backward()
    grads = [t.grad.clone() for t in args]
    for t in args:
        t.grad = None
    compiled = torch.compile(lambda *a: torch.relu(_op(*a)) * 2, fullgraph=True)(*args)
    compiled.sum().backward()
    torch.testing.assert_close(compiled, eager)
    for got, want in zip((t.grad for t in args), grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_fake_impl_on_cuda_tensors():
    """On (fake) CUDA tensors the op takes its kernel path: wrap_triton records the launches, and
    the outputs have x's dtype, shape and memory format; the backward op gives one grad per input."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    mode = FakeTensorMode()
    x = torch.randn(2, 8, 5, 5, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    w = [torch.randn(3, 8, 1, 1), torch.randn(3), torch.randn(8, 3, 1, 1), torch.randn(8)]
    fx, fr, *fw = (_to_fake_cuda(mode, t) for t in (x, x, *w))
    with mode:
        out, stats = torch.ops.se_inject.squeeze_excite(fx, fr, *fw, 1, "avgmax", "sigmoid", 2.0, "relu")
        grads = torch.ops.se_inject.squeeze_excite_backward(out, fx, out, stats, *fw, 1, "avgmax", "sigmoid",
                                                            2.0, True, True)
        torch.ops.se_inject.squeeze_excite_inplace(fx, fr, *fw, 1, "avg", "sigmoid", 1.0, None)
    assert (out.device.type, out.dtype, out.shape, out.stride()) == ("cuda", torch.bfloat16, x.shape, x.stride())
    assert (stats.dtype, stats.shape) == (torch.float32, (2, 2, 8))
    assert [tuple(g.shape) for g in grads] == [tuple(x.shape)] * 2 + [tuple(t.shape) for t in w]
    assert [g.dtype for g in grads] == [torch.bfloat16] * 2 + [torch.float32] * 4


def test_private_apis_exist():
    from torch._subclasses.fake_tensor import FakeTensorMode

    import torch._library.triton as triton_lib

    from se_inject._torch_compat import holds_data, is_interpreted
    assert holds_data(torch.ones(1), None) and not is_interpreted(object())
    assert triton_lib.get_triton_kernels_for_op("se_inject::squeeze_excite_backward") == list(kernels.BACKWARD_KERNELS)
    with FakeTensorMode() as mode:
        assert not holds_data(mode.from_tensor(torch.ones(1)))
    assert kernels.AVAILABLE, "triton did not import: the fused op would always run the reference"


@pytest.mark.slow
def test_gpu_overhead_benchmark_smoke_run_on_cpu(tmp_path):
    """benchmarks/gpu_overhead.py end to end at its smallest size: every model and block-end row,
    and on the CPU the GPU figures marked not measured (never estimated)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("gpu_overhead", ROOT / "benchmarks" / "gpu_overhead.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "gpu_overhead.md"
    assert bench.main(["--device", "cpu", "--smoke", "--out", str(out)]) == 0
    text = out.read_text()
    for row in ("| resnet50 |", "| apply(resnet50, kernels=auto) |", "| apply(resnet50, kernels=torch) |",
                "| timm seresnet50 |", "## block end, forward + backward, [2, 16, 4, 4]", "| SE, PyTorch eager |",
                "**Not measured**", bench.GPU_COMMAND):
        assert row in text, f"{row!r} missing from the report"


# ---------------------------------------------------------------------------------------------
# The interpreter worker's results, one test per case. The worker starts with this module's first
# test (when any selected test needs it) and runs beside the in-process tests above.

def _spawn_worker() -> tuple[subprocess.Popen, tempfile.TemporaryFile, tempfile.TemporaryFile]:
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([sys.executable, __file__, "--interpreter-worker"], cwd=ROOT, env=env,
                            stdout=out, stderr=err, text=True)
    return proc, out, err


@pytest.fixture(scope="module", autouse=True)
def _interpreter_worker(request):
    needed = any("interpreter_results" in item.fixturenames for item in request.session.items
                 if item.module is request.module)
    worker = _spawn_worker() if needed else None
    request.module._worker = worker
    yield
    if worker is not None:
        if worker[0].poll() is None:
            worker[0].kill()
            worker[0].wait()
        for f in worker[1:]:
            f.close()


@pytest.fixture(scope="module")
def interpreter_results(request) -> dict[str, dict]:
    worker = getattr(request.module, "_worker", None)
    proc, out, err = worker or _spawn_worker()
    if worker is None:  # started here: closed here (else by _interpreter_worker's teardown)
        request.addfinalizer(out.close)
        request.addfinalizer(err.close)
    try:
        returncode = proc.wait(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the interpreter worker ran over 600 s")
    out.seek(0)
    err.seek(0)
    results = {}
    for line in out.read().splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            results[row["id"]] = row
    if returncode != 0 or not results:
        pytest.fail(f"interpreter worker exited {returncode}: {err.read()[-3000:]}")
    return results


@pytest.mark.kernels
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_kernels_match_reference(interpreter_results, case):
    row = interpreter_results.get(case.id)
    assert row is not None, f"the interpreter worker did not report {case.id}"
    assert row["ok"], row["message"]


@pytest.mark.kernels
def test_apply_resnet50_through_the_kernels(interpreter_results):
    row = interpreter_results[E2E]
    assert row["ok"], row["message"]


@pytest.mark.kernels
@pytest.mark.parametrize("name", list(_opchecks()))
def test_opcheck_under_interpreter(interpreter_results, name):
    row = interpreter_results[name]
    assert row["ok"], row["message"]


if __name__ == "__main__" and sys.argv[1:2] == ["--interpreter-worker"]:
    sys.exit(_worker())
