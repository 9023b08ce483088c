"""Triton kernels of the fused SE block (issue 11), and their launchers.

Four kernels, each one pass over the gated map ``x`` seen as ``(N, C, L)`` (:mod:`.layout`):

- :func:`squeeze_partials` (forward): per-(image, channel) sum and, for ``max``/``avgmax``, max
  over the spatial positions, fp32 accumulation, one read of ``x``;
- :func:`excite` (forward): ``act(residual + x * g)``, or ``x * g``, one read of each input and one
  write, into a new map or into ``x`` itself;
- :func:`grad_reduce` (backward pass 1): reads the output gradient (masked by ``out > 0`` when a
  ReLU follows the add) and ``x``; writes ``grad_residual`` (the masked gradient) and reduces
  ``grad_g = Σ_L grad · x`` and, for max pooling, how many positions tie for the max;
- :func:`grad_input` (backward pass 2): ``grad_x = grad · g + grad_s / L + grad_s_max / ties`` at
  the max; it can only run once ``grad_g`` has gone through the tiny MLP backward: two passes.

Every launch takes any strides that collapse to ``(N, C, L)``; a constexpr per tensor says which
axis has stride 1 so loads vectorise along it (NCHW maps along ``L``, channels-last along ``C``).
Reductions split ``L`` over several programs when ``N x C-blocks`` is too few to fill the GPU
(batch 1, few channels); partial results go to a ``(K, S, N, C)`` fp32 buffer that PyTorch sums:
deterministic, no atomics. Under ``TRITON_INTERPRET=1`` the same kernels run on CPU tensors (the
tests do that). Tile sizes are heuristics, not yet tuned on a GPU (:data:`CONFIG`).
"""
from __future__ import annotations

import dataclasses
import functools

import torch

from . import layout
from .._torch_compat import is_interpreted

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: everything runs the PyTorch reference
    triton = None

__all__ = ["AVAILABLE", "INTERPRETED", "CONFIG", "TileConfig", "squeeze_partials", "excite",
           "grad_reduce", "grad_input"]


@dataclasses.dataclass(frozen=True)
class TileConfig:
    """Launch heuristics. ``max_tile``: elements a program touches per step, at most ``max_block``
    along the stride-1 axis; ``programs_per_sm``: how many programs a reduction wants per streaming
    multiprocessor before it splits ``L``; ``cpu_programs``: the same target under the interpreter.
    Tests shrink the tiles to exercise partial blocks and splits on tiny maps, or grow them to run
    a whole network through the (slow, per-program) interpreter."""

    max_tile: int = 4096
    max_block: int = 128
    programs_per_sm: int = 4
    cpu_programs: int = 1


CONFIG = TileConfig()


if triton is not None:

    @triton.jit
    def _offsets(c, l, sc, sl, UNIT: tl.constexpr):
        # The axis with stride 1 is written without its stride, so Triton sees it as contiguous.
        if UNIT == 0:
            off = c[:, None] * sc + l[None, :]
        elif UNIT == 1:
            off = c[:, None] + l[None, :] * sl
        else:
            off = c[:, None] * sc + l[None, :] * sl
        return off

    @triton.jit
    def _squeeze_kernel(x_ptr, part_ptr, N, C, L, sxn, sxc, sxl, l_per_split, inv_l,
                        X_UNIT: tl.constexpr, DO_MAX: tl.constexpr,
                        BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
        pid_c = tl.program_id(0)
        n = tl.program_id(1)
        split = tl.program_id(2)
        c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        c_in = c < C
        l_lo = split * l_per_split
        l_hi = tl.minimum(l_lo + l_per_split, L)
        x_base = x_ptr + n.to(tl.int64) * sxn
        total = tl.zeros((BLOCK_C, BLOCK_L), dtype=tl.float32)
        peak = tl.full((BLOCK_C, BLOCK_L), float("-inf"), dtype=tl.float32)
        for start in range(l_lo, l_hi, BLOCK_L):
            l = start + tl.arange(0, BLOCK_L)
            m = c_in[:, None] & (l < l_hi)[None, :]
            v = tl.load(x_base + _offsets(c, l, sxc, sxl, X_UNIT), mask=m, other=0.0).to(tl.float32)
            total += v
            if DO_MAX:
                peak = tl.maximum(peak, tl.where(m, v, float("-inf")))
        out = part_ptr + (split * N + n) * C + c  # part is (K, S, N, C)
        tl.store(out, tl.sum(total, 1) * inv_l, mask=c_in)  # the splits' shares of the mean
        if DO_MAX:
            tl.store(out + tl.num_programs(2) * N * C, tl.max(peak, 1), mask=c_in)

    @triton.jit
    def _excite_kernel(x_ptr, g_ptr, r_ptr, o_ptr, C, L,
                       sxn, sxc, sxl, srn, src, srl, son, soc, sol,
                       X_UNIT: tl.constexpr, R_UNIT: tl.constexpr, O_UNIT: tl.constexpr,
                       HAS_RES: tl.constexpr, RELU: tl.constexpr,
                       BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
        pid_l = tl.program_id(0)
        pid_c = tl.program_id(1)
        n = tl.program_id(2).to(tl.int64)
        c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
        m = (c < C)[:, None] & (l < L)[None, :]
        g = tl.load(g_ptr + n * C + c, mask=c < C, other=0.0)
        x = tl.load(x_ptr + n * sxn + _offsets(c, l, sxc, sxl, X_UNIT), mask=m, other=0.0)
        y = x.to(tl.float32) * g[:, None]  # fp32 math, one rounding to the output dtype
        if HAS_RES:
            y += tl.load(r_ptr + n * srn + _offsets(c, l, src, srl, R_UNIT), mask=m, other=0.0).to(tl.float32)
        if RELU:
            y = tl.where(y < 0.0, 0.0, y)  # NaN stays NaN, as torch.relu
        tl.store(o_ptr + n * son + _offsets(c, l, soc, sol, O_UNIT), y.to(o_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _grad_reduce_kernel(go_ptr, o_ptr, x_ptr, smax_ptr, gr_ptr, part_ptr, N, C, L,
                            sgn, sgc, sgl, son, soc, sol, sxn, sxc, sxl, srn, src, srl, l_per_split,
                            G_UNIT: tl.constexpr, O_UNIT: tl.constexpr, X_UNIT: tl.constexpr,
                            R_UNIT: tl.constexpr, RELU: tl.constexpr, WRITE_GRES: tl.constexpr,
                            DO_MAX: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
        pid_c = tl.program_id(0)
        n = tl.program_id(1)
        split = tl.program_id(2)
        n64 = n.to(tl.int64)
        c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        c_in = c < C
        l_lo = split * l_per_split
        l_hi = tl.minimum(l_lo + l_per_split, L)
        acc = tl.zeros((BLOCK_C, BLOCK_L), dtype=tl.float32)
        ties = tl.zeros((BLOCK_C, BLOCK_L), dtype=tl.float32)
        if DO_MAX:
            smax = tl.load(smax_ptr + n * C + c, mask=c_in, other=0.0)
        for start in range(l_lo, l_hi, BLOCK_L):
            l = start + tl.arange(0, BLOCK_L)
            m = c_in[:, None] & (l < l_hi)[None, :]
            go = tl.load(go_ptr + n64 * sgn + _offsets(c, l, sgc, sgl, G_UNIT), mask=m, other=0.0).to(tl.float32)
            if RELU:  # ReLU's backward from its output, as torch's threshold_backward
                o = tl.load(o_ptr + n64 * son + _offsets(c, l, soc, sol, O_UNIT), mask=m, other=0.0)
                go = tl.where(o > 0.0, go, 0.0)
            if WRITE_GRES:
                tl.store(gr_ptr + n64 * srn + _offsets(c, l, src, srl, R_UNIT),
                         go.to(gr_ptr.dtype.element_ty), mask=m)
            x = tl.load(x_ptr + n64 * sxn + _offsets(c, l, sxc, sxl, X_UNIT), mask=m, other=0.0).to(tl.float32)
            acc += go * x
            if DO_MAX:
                ties += tl.where(m & (x == smax[:, None]), 1.0, 0.0)
        out = part_ptr + (split * N + n) * C + c  # part is (K, S, N, C)
        tl.store(out, tl.sum(acc, 1), mask=c_in)
        if DO_MAX:
            tl.store(out + tl.num_programs(2) * N * C, tl.sum(ties, 1), mask=c_in)

    @triton.jit
    def _grad_input_kernel(gs_ptr, o_ptr, x_ptr, g_ptr, a_ptr, b_ptr, smax_ptr, gx_ptr, C, L,
                           sgn, sgc, sgl, son, soc, sol, sxn, sxc, sxl, sdn, sdc, sdl,
                           G_UNIT: tl.constexpr, O_UNIT: tl.constexpr, X_UNIT: tl.constexpr,
                           D_UNIT: tl.constexpr, RELU: tl.constexpr, DO_AVG: tl.constexpr,
                           DO_MAX: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
        pid_l = tl.program_id(0)
        pid_c = tl.program_id(1)
        n = tl.program_id(2).to(tl.int64)
        c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
        c_in = c < C
        m = c_in[:, None] & (l < L)[None, :]
        go = tl.load(gs_ptr + n * sgn + _offsets(c, l, sgc, sgl, G_UNIT), mask=m, other=0.0).to(tl.float32)
        if RELU:
            o = tl.load(o_ptr + n * son + _offsets(c, l, soc, sol, O_UNIT), mask=m, other=0.0)
            go = tl.where(o > 0.0, go, 0.0)
        gx = go * tl.load(g_ptr + n * C + c, mask=c_in, other=0.0)[:, None]
        if DO_AVG:  # the mean's share: grad_s / L, the same at every position
            gx += tl.load(a_ptr + n * C + c, mask=c_in, other=0.0)[:, None]
        if DO_MAX:  # the max's share: grad_s_max / ties, at the positions equal to the max
            x = tl.load(x_ptr + n * sxn + _offsets(c, l, sxc, sxl, X_UNIT), mask=m, other=0.0).to(tl.float32)
            smax = tl.load(smax_ptr + n * C + c, mask=c_in, other=0.0)
            b = tl.load(b_ptr + n * C + c, mask=c_in, other=0.0)
            gx += tl.where(x == smax[:, None], b[:, None], 0.0)
        tl.store(gx_ptr + n * sdn + _offsets(c, l, sdc, sdl, D_UNIT), gx.to(gx_ptr.dtype.element_ty), mask=m)

    AVAILABLE = True
    #: True when TRITON_INTERPRET=1 was set before this module was imported: kernels take CPU tensors.
    INTERPRETED = is_interpreted(_squeeze_kernel)
    #: the kernels each op launches (torch.compile's caches hash their source)
    FORWARD_KERNELS, BACKWARD_KERNELS = (_squeeze_kernel, _excite_kernel), (_grad_reduce_kernel, _grad_input_kernel)
else:
    AVAILABLE = INTERPRETED = False
    FORWARD_KERNELS = BACKWARD_KERNELS = ()


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _tile(c: int, l: int, unit: int) -> tuple[int, int, int]:
    """``(BLOCK_C, BLOCK_L, num_warps)``: wide along the stride-1 axis of the map that leads."""
    cap, block = CONFIG.max_tile, CONFIG.max_block
    if unit == layout.UNIT_C:
        bc = min(_next_pow2(c), block, cap)
        bl = max(1, min(_next_pow2(l), cap // bc))
    else:
        bl = min(_next_pow2(l), 2 * block, cap)
        bc = max(1, min(_next_pow2(c), cap // bl))
    return bc, bl, max(1, min(8, bc * bl // 512))


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    if not torch.cuda.is_available():  # tracing fake CUDA tensors on a host without a GPU
        return 132  # an H100 SXM's
    return torch.cuda.get_device_properties(index).multi_processor_count


def _split(programs: int, l: int, block_l: int, device: torch.device) -> tuple[int, int]:
    """``(S, L per split)``: enough programs to fill the device, in whole ``BLOCK_L`` steps."""
    if device.type == "cuda":
        index = device.index if device.index is not None or not torch.cuda.is_available() \
            else torch.cuda.current_device()
        target = CONFIG.programs_per_sm * _sm_count(index or 0)
    else:
        target = CONFIG.cpu_programs
    blocks = _cdiv(l, block_l)
    want = max(1, min(blocks, _cdiv(target, programs)))
    per = _cdiv(blocks, want) * block_l
    return _cdiv(l, per), per


def _geometry(t: torch.Tensor | None, channel_dim: int) -> tuple[tuple[int, int, int], int]:
    """Strides and unit axis of a map, or zeros for an absent one (its pointer is never read)."""
    if t is None:
        return (0, 0, 0), layout.UNIT_NONE
    strides = layout.ncl_strides(t, channel_dim)
    if strides is None:
        raise ValueError("se_inject.ops: a map reached a kernel with spatial dims that do not "
                         "collapse; unsupported_reason() should have sent it to the reference")
    return strides, layout.unit_axis(t, channel_dim)


def _launch(kernel, grid, *args, **kwargs) -> None:
    if INTERPRETED:  # CPU tensors through NumPy: nothing to trace (torch.compile takes the twins)
        kernel[grid](*args, **kwargs)
        return
    # wrap_triton makes the launch visible to torch.compile/make_fx (a higher-order op that
    # Inductor schedules and fuses around); in eager it is the kernel itself.
    torch.library.wrap_triton(kernel)[grid](*args, **kwargs)


def squeeze_partials(x: torch.Tensor, channel_dim: int, do_max: bool) -> torch.Tensor:
    """``(K, S, N, C)`` fp32: per-split shares of the spatial mean (``[0]``, they sum to it) and
    maxima (``[1]``, if ``do_max``)."""
    n, c, l = layout.ncl_shape(x, channel_dim)
    (sxn, sxc, sxl), x_unit = _geometry(x, channel_dim)
    bc, bl, warps = _tile(c, l, x_unit)
    splits, per = _split(n * _cdiv(c, bc), l, bl, x.device)
    part = torch.empty((2 if do_max else 1, splits, n, c), device=x.device, dtype=torch.float32)
    _launch(_squeeze_kernel, (_cdiv(c, bc), n, splits), x, part, n, c, l, sxn, sxc, sxl, per, 1.0 / l,
            X_UNIT=x_unit, DO_MAX=do_max, BLOCK_C=bc, BLOCK_L=bl, num_warps=warps)
    return part


def excite(x: torch.Tensor, g: torch.Tensor, residual: torch.Tensor | None, out: torch.Tensor,
           channel_dim: int, relu: bool) -> None:
    """``out = relu?(residual + x * g)`` (or ``x * g``) for an ``(N, C)`` fp32 gate ``g``; ``out``
    may be ``x`` itself."""
    n, c, l = layout.ncl_shape(x, channel_dim)
    (sxn, sxc, sxl), x_unit = _geometry(x, channel_dim)
    (srn, src, srl), r_unit = _geometry(residual, channel_dim)
    (son, soc, sol), o_unit = _geometry(out, channel_dim)
    bc, bl, warps = _tile(c, l, x_unit)
    _launch(_excite_kernel, (_cdiv(l, bl), _cdiv(c, bc), n),
            x, g, residual if residual is not None else x, out, c, l,
            sxn, sxc, sxl, srn, src, srl, son, soc, sol,
            X_UNIT=x_unit, R_UNIT=r_unit, O_UNIT=o_unit, HAS_RES=residual is not None, RELU=relu,
            BLOCK_C=bc, BLOCK_L=bl, num_warps=warps)


def grad_reduce(grad_out: torch.Tensor, out: torch.Tensor | None, x: torch.Tensor,
                smax: torch.Tensor | None, grad_residual: torch.Tensor | None,
                channel_dim: int) -> torch.Tensor:
    """Backward pass 1: ``(K, S, N, C)`` fp32 partial ``Σ_L grad · x`` (``[0]``) and max ties
    (``[1]``, when ``smax`` is given); the gradient is masked by ``out > 0`` when ``out`` is given
    (a folded ReLU), and written to ``grad_residual`` when that is given."""
    n, c, l = layout.ncl_shape(x, channel_dim)
    (sgn, sgc, sgl), g_unit = _geometry(grad_out, channel_dim)
    (son, soc, sol), o_unit = _geometry(out, channel_dim)
    (sxn, sxc, sxl), x_unit = _geometry(x, channel_dim)
    (srn, src, srl), r_unit = _geometry(grad_residual, channel_dim)
    bc, bl, warps = _tile(c, l, x_unit)
    splits, per = _split(n * _cdiv(c, bc), l, bl, x.device)
    do_max = smax is not None
    part = torch.empty((2 if do_max else 1, splits, n, c), device=x.device, dtype=torch.float32)
    # absent tensors are passed as x: their loads and stores are compiled out by the constexprs
    _launch(_grad_reduce_kernel, (_cdiv(c, bc), n, splits),
            grad_out, out if out is not None else x, x, smax if do_max else part,
            grad_residual if grad_residual is not None else x, part, n, c, l,
            sgn, sgc, sgl, son, soc, sol, sxn, sxc, sxl, srn, src, srl, per,
            G_UNIT=g_unit, O_UNIT=o_unit, X_UNIT=x_unit, R_UNIT=r_unit, RELU=out is not None,
            WRITE_GRES=grad_residual is not None, DO_MAX=do_max, BLOCK_C=bc, BLOCK_L=bl,
            num_warps=warps)
    return part


def grad_input(grad: torch.Tensor, out: torch.Tensor | None, x: torch.Tensor, g: torch.Tensor,
               a: torch.Tensor | None, b: torch.Tensor | None, smax: torch.Tensor | None,
               grad_x: torch.Tensor, channel_dim: int) -> None:
    """Backward pass 2: ``grad_x = mask(grad) · g + a + b · [x == smax]`` with ``(N, C)`` fp32
    ``g``, ``a`` (the mean's share, or ``None``) and ``b``/``smax`` (the max's share, or ``None``)."""
    n, c, l = layout.ncl_shape(x, channel_dim)
    (sgn, sgc, sgl), g_unit = _geometry(grad, channel_dim)
    (son, soc, sol), o_unit = _geometry(out, channel_dim)
    (sxn, sxc, sxl), x_unit = _geometry(x, channel_dim)
    (sdn, sdc, sdl), d_unit = _geometry(grad_x, channel_dim)
    bc, bl, warps = _tile(c, l, x_unit)
    _launch(_grad_input_kernel, (_cdiv(l, bl), _cdiv(c, bc), n),
            grad, out if out is not None else x, x, g, a if a is not None else g,
            b if b is not None else g, smax if smax is not None else g, grad_x, c, l,
            sgn, sgc, sgl, son, soc, sol, sxn, sxc, sxl, sdn, sdc, sdl,
            G_UNIT=g_unit, O_UNIT=o_unit, X_UNIT=x_unit, D_UNIT=d_unit, RELU=out is not None,
            DO_AVG=a is not None, DO_MAX=b is not None, BLOCK_C=bc, BLOCK_L=bl, num_warps=warps)
