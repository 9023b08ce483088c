"""The fused SE algorithm: two passes over the map forward, two backward, the MLP in between.

Forward (paper §3, Eq. 2-4)::

    stats = squeeze(x)                       # pass 1: (K, N, C) fp32 mean [and max], one read of x
    g     = scale * gate(W2 relu(W1 s + b1) + b2)    # (N, C) fp32, PyTorch (tiny)
    out   = act(residual + x * g)            # pass 2: one read of x and residual, one write

Backward (the gate's gradient must exist before ``x``'s can include the pooling's share, so two
passes, not the five of the unfused autograd graph; issue 11)::

    grad_res = mask(grad_out); grad_g = Σ_L grad_res · x [; ties = Σ_L x == max]    # pass 1
    grad_s, grad_W1, grad_b1, grad_W2, grad_b2 = MLP backward(grad_g)              # (N, C)
    grad_x = grad_res · g + grad_s / L [+ grad_s_max / ties at the max]            # pass 2

Saved for backward: ``x``, ``out`` (only with ``post_act="relu"``: its mask; the next layer keeps
it alive anyway), ``stats`` and the four fc tensors; the MLP's activations are recomputed.

**Dtypes.** The map is read and written in its own dtype (fp32, fp16, bf16); every sum, the MLP and
the gate run in fp32 with autocast off, and ``x * g (+ residual)`` is rounded once. Under
``torch.autocast`` the unfused block runs its two fc layers in bf16/fp16; the fused op keeps them in
fp32 (negligible cost on ``(N, C)`` tensors, and the gate is then closer to the exact one). Weight
gradients come back in the weights' dtype and shape (``(R, C)`` or ``(R, C, 1, 1)``).

Each pass runs its Triton kernel on tensors the kernels can take (:func:`launches_kernels`) and its
PyTorch *twin* otherwise: the same arithmetic in PyTorch ops, for CPU tensors without the
interpreter and for the fake tensors ``torch.compile`` traces CPU code with.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F

from . import kernels, layout
from .._torch_compat import holds_data
from .reference import GATES

__all__ = ["forward", "backward", "launches_kernels", "GATE_GRADS"]


def _sigmoid_grad(z: torch.Tensor) -> torch.Tensor:
    t = torch.sigmoid(z)
    return t * (1 - t)


def _hard_sigmoid_grad(z: torch.Tensor) -> torch.Tensor:
    # torch's hardsigmoid_backward: 1/6 strictly inside (-3, 3), 0 outside and at the kinks
    return torch.where((z > -3) & (z < 3), 1.0 / 6.0, 0.0)


#: gate name -> its derivative in terms of the gate's input (one entry per :data:`GATES` entry).
GATE_GRADS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": _sigmoid_grad,
    "hard_sigmoid": _hard_sigmoid_grad,
}


def launches_kernels(*tensors: torch.Tensor | None) -> bool:
    """True when the passes run as Triton kernels: CUDA tensors (real, or traced by torch.compile:
    ``wrap_triton`` records the launch), or real CPU tensors under ``TRITON_INTERPRET=1``."""
    if not kernels.AVAILABLE:
        return False
    device = next(t for t in tensors if t is not None).device
    if device.type == "cuda":
        return True
    return device.type == "cpu" and kernels.INTERPRETED and holds_data(*tensors)


def _matrix(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], -1).float()


def _float(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.float()


def _fp32_region(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off on ``device``: the MLP stays fp32 (module docstring). Meta tensors (shape
    propagation) have no autocast to turn off."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _pooled(stats: torch.Tensor, squeeze: str) -> torch.Tensor:
    if squeeze == "avg":
        return stats[0]
    if squeeze == "max":
        return stats[1]
    return 0.5 * (stats[0] + stats[1])


def _mlp(s: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
         b2: torch.Tensor | None, gate: str, gate_scale: float) -> tuple[torch.Tensor, ...]:
    """``(h, z, g)`` in fp32: hidden activation, gate input and scaled gate (Eq. 3)."""
    h = torch.relu(F.linear(s, _matrix(w1), _float(b1)))
    z = F.linear(h, _matrix(w2), _float(b2))
    g = GATES[gate](z)
    if gate_scale != 1.0:
        g = g * gate_scale
    return h, z, g


def _stats(x: torch.Tensor, channel_dim: int, squeeze: str) -> torch.Tensor:
    """``(K, N, C)`` fp32: the spatial mean and, for max pooling, the max (pass 1)."""
    do_max = squeeze != "avg"
    _, _, l = layout.ncl_shape(x, channel_dim)
    if launches_kernels(x):
        part = kernels.squeeze_partials(x, channel_dim, do_max)
        if not do_max:
            return _combine(part, "sum")
        mean, peak = _combine(part[:1], "sum")[0], _combine(part[1:], "amax")[0]
        # the kernel's max skips NaNs; torch.amax returns NaN, and a NaN in a channel makes its mean NaN
        return torch.stack((mean, torch.where(torch.isnan(mean), mean, peak)))
    x3 = layout.ncl_view(x, channel_dim)
    mean = x3.sum(2, dtype=torch.float32) / l
    if not do_max:
        return mean.unsqueeze(0)
    return torch.stack((mean, x3.amax(2).float()))


def _combine(part: torch.Tensor, how: str) -> torch.Tensor:
    """``(K, S, N, C)`` partials -> ``(K, N, C)``: a view when the reduction was not split (most
    layers of a batch-256 network), so no extra kernel runs."""
    if part.shape[1] == 1:
        return part[:, 0]
    return part.sum(1) if how == "sum" else part.amax(1)


def _excite(x: torch.Tensor, g: torch.Tensor, residual: torch.Tensor | None, out: torch.Tensor,
            channel_dim: int, relu: bool) -> None:
    """``out = relu?(residual + x * g)`` (pass 2 of the forward)."""
    if launches_kernels(x, residual, out):
        kernels.excite(x, g, residual, out, channel_dim, relu)
        return
    y = layout.ncl_view(x, channel_dim).float() * g[..., None]
    if residual is not None:
        y = y + layout.ncl_view(residual, channel_dim)
    if relu:
        y = torch.relu(y)
    layout.ncl_view(out, channel_dim).copy_(y)


def forward(x: torch.Tensor, residual: torch.Tensor | None, w1: torch.Tensor,
            b1: torch.Tensor | None, w2: torch.Tensor, b2: torch.Tensor | None, channel_dim: int,
            squeeze: str, gate: str, gate_scale: float, post_act: str | None,
            out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, stats)``; ``out`` is written into the given tensor (``x`` for the in-place op) or a
    new map laid out as ``x``."""
    stats = _stats(x, channel_dim, squeeze)
    with _fp32_region(x.device):
        _, _, g = _mlp(_pooled(stats, squeeze), w1, b1, w2, b2, gate, gate_scale)
    if out is None:
        out = torch.empty_like(x)
        if layout.ncl_strides(out, channel_dim) is None:  # x was sliced and not dense
            out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _excite(x, g, residual, out, channel_dim, post_act == "relu")
    return out, stats


def _grad_reduce(grad_out: torch.Tensor, out: torch.Tensor | None, x: torch.Tensor,
                 smax: torch.Tensor | None, grad_residual: torch.Tensor | None,
                 channel_dim: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(grad_g, ties)``, (N, C) fp32 (pass 1 of the backward)."""
    if launches_kernels(grad_out, out, x):
        part = _combine(kernels.grad_reduce(grad_out, out, x, smax, grad_residual, channel_dim), "sum")
        return part[0], (part[1] if smax is not None else None)
    go = layout.ncl_view(grad_out, channel_dim).float()
    if out is not None:
        go = torch.where(layout.ncl_view(out, channel_dim) > 0, go, 0.0)
    if grad_residual is not None:
        layout.ncl_view(grad_residual, channel_dim).copy_(go)
    x3 = layout.ncl_view(x, channel_dim).float()
    ties = (x3 == smax[..., None]).sum(2, dtype=torch.float32) if smax is not None else None
    return (go * x3).sum(2), ties


def _grad_input(grad: torch.Tensor, out: torch.Tensor | None, x: torch.Tensor, g: torch.Tensor,
                a: torch.Tensor | None, b: torch.Tensor | None, smax: torch.Tensor | None,
                grad_x: torch.Tensor, channel_dim: int) -> None:
    """``grad_x = mask(grad) · g + a + b · [x == smax]`` (pass 2 of the backward)."""
    if launches_kernels(grad, out, x, grad_x):
        kernels.grad_input(grad, out, x, g, a, b, smax, grad_x, channel_dim)
        return
    go = layout.ncl_view(grad, channel_dim).float()
    if out is not None:
        go = torch.where(layout.ncl_view(out, channel_dim) > 0, go, 0.0)
    gx = go * g[..., None]
    if a is not None:
        gx = gx + a[..., None]
    if b is not None:
        x3 = layout.ncl_view(x, channel_dim).float()
        gx = gx + torch.where(x3 == smax[..., None], b[..., None], 0.0)
    layout.ncl_view(grad_x, channel_dim).copy_(gx)


def _collapsible(t: torch.Tensor, channel_dim: int) -> torch.Tensor:
    # an output gradient can come with any strides (an expanded scalar's, a transpose's)
    return t if layout.ncl_strides(t, channel_dim) is not None else t.contiguous()


def backward(grad_out: torch.Tensor, x: torch.Tensor, out: torch.Tensor | None,
             stats: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
             b2: torch.Tensor | None, channel_dim: int, squeeze: str, gate: str,
             gate_scale: float, need_x: bool, write_grad_residual: bool
             ) -> tuple[torch.Tensor | None, ...]:
    """``(grad_x, grad_residual, grad_w1, grad_b1, grad_w2, grad_b2)``; ``out`` is the saved output
    when a ReLU was folded in (else ``None``). ``grad_residual`` is ``None`` unless
    ``write_grad_residual``; ``grad_x`` is ``None`` unless ``need_x``."""
    grad_out = _collapsible(grad_out, channel_dim)
    _, _, l = layout.ncl_shape(x, channel_dim)
    smax = stats[1] if squeeze != "avg" else None
    grad_res = torch.empty_like(x) if write_grad_residual else None
    grad_g, ties = _grad_reduce(grad_out, out, x, smax, grad_res, channel_dim)

    with _fp32_region(x.device):
        s = _pooled(stats, squeeze)
        h, z, g = _mlp(s, w1, b1, w2, b2, gate, gate_scale)
        grad_z = grad_g * gate_scale * GATE_GRADS[gate](z)
        grad_w2, grad_b2 = grad_z.t() @ h, grad_z.sum(0)
        grad_a1 = torch.where(h > 0, grad_z @ _matrix(w2), 0.0)  # ReLU's backward from its output
        grad_w1, grad_b1 = grad_a1.t() @ s, grad_a1.sum(0)
        grad_s = grad_a1 @ _matrix(w1)

    grad_x = None
    if need_x:
        half = 0.5 if squeeze == "avgmax" else 1.0
        a = grad_s * (half / l) if squeeze != "max" else None
        b = grad_s * half / ties.clamp_min(1.0) if ties is not None else None
        grad_x = torch.empty_like(x)
        if layout.ncl_strides(grad_x, channel_dim) is None:
            grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        # with the residual's gradient already masked, pass 2 reads it instead of grad_out and out
        src, mask = (grad_res, None) if grad_res is not None else (grad_out, out)
        _grad_input(src, mask, x, g, a, b, smax, grad_x, channel_dim)

    def like(grad: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor | None:
        return None if w is None else grad.reshape(w.shape).to(w.dtype)

    return grad_x, grad_res, like(grad_w1, w1), like(grad_b1, b1), like(grad_w2, w2), like(grad_b2, b2)
