"""Fused squeeze-excite ops: SE at near-zero GPU cost (issue 11).

One call does the whole block end — squeeze, the two fc layers, the gate, the channel scale, the
residual add and the ReLU after it — in two passes over the feature map forward and two backward,
with Triton kernels on CUDA and the block's PyTorch formulation everywhere else:

    >>> import torch
    >>> from se_inject.ops import squeeze_excite, unsupported_reason
    >>> x, shortcut = torch.randn(2, 64, 7, 7), torch.randn(2, 64, 7, 7)
    >>> w1, b1, w2, b2 = torch.randn(4, 64, 1, 1), torch.zeros(4), torch.randn(64, 4, 1, 1), torch.zeros(64)
    >>> y = squeeze_excite(x, shortcut, w1, b1, w2, b2, channel_dim=1, post_act="relu")
    >>> y.shape                                  # relu(shortcut + x * gate(x))
    torch.Size([2, 64, 7, 7])
    >>> unsupported_reason(x, shortcut, channel_dim=1, squeeze="avg", gate="sigmoid")
    'x is on cpu: the Triton kernels take CUDA tensors (CPU ones only under TRITON_INTERPRET=1)'

Layout of the package: :mod:`.reference` (the PyTorch formulation), :mod:`.layout` (maps as
``(N, C, L)``), :mod:`.kernels` (the Triton kernels), :mod:`.fused` (the passes and the MLP in
between), :mod:`.library` (the ``torch.library`` ops, their fake implementations and autograd).
"""
from __future__ import annotations

import torch

from ..errors import KernelError
from . import kernels, layout
from . import library as _library  # noqa: F401  (registers the torch.ops.se_inject ops)
from .reference import GATES, POOLS, POST_ACTS, reference_squeeze_excite

__all__ = ["squeeze_excite", "unsupported_reason", "reference_squeeze_excite", "KernelError",
           "DTYPES"]

#: the dtypes the kernels read and write; anything else (float64) runs the reference.
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_args(x: torch.Tensor, channel_dim: int, squeeze: str, gate: str, post_act: str | None) -> None:
    if _channel_dim(x, channel_dim) is None:
        raise KernelError(f"se_inject.ops: channel_dim={channel_dim} for a {x.dim()}-d map; "
                          f"pass 1 (channels first) or -1 (channels last)")
    for key, value, allowed in (("squeeze", squeeze, POOLS), ("gate", gate, GATES),
                                ("post_act", post_act, POST_ACTS)):
        if value not in allowed:
            names = ", ".join(repr(k) for k in allowed)
            raise KernelError(f"se_inject.ops: {key}={value!r} is not one of {names}")


def _channel_dim(x: torch.Tensor, channel_dim: int) -> int | None:
    """1 or -1, or None when ``channel_dim`` is neither the second nor the last dim."""
    if channel_dim == 1:
        return 1
    if channel_dim in (-1, x.dim() - 1):
        return -1
    return None


def unsupported_reason(x: torch.Tensor, residual: torch.Tensor | None, *, channel_dim: int,
                       squeeze: str, gate: str) -> str | None:
    """``None`` when the Triton kernels take these inputs, else why not (one line, says what to change).

    Used to dispatch (:func:`squeeze_excite` runs the reference when it is not ``None``) and for
    errors (``fallback=False``):

        >>> x = torch.empty(2, 8, 6, 6, dtype=torch.float64, device="meta")   # shapes only, as on CUDA
        >>> unsupported_reason(x, None, channel_dim=1, squeeze="avg", gate="sigmoid")
        'x is torch.float64: the kernels take float32, float16 and bfloat16 maps'
        >>> unsupported_reason(x.float()[:, :, ::2], None, channel_dim=1, squeeze="avg", gate="sigmoid")
        "x's spatial dims do not collapse to one stride (a spatially sliced map): pass x.contiguous()"
    """
    if squeeze not in POOLS or gate not in GATES:
        return f"squeeze={squeeze!r} or gate={gate!r} is not one the kernels implement"
    if not kernels.AVAILABLE:
        return "triton is not installed: pip install triton (or use kernels='torch')"
    # meta tensors hold no data: the op's meta implementation propagates the kernels' shapes
    if x.device.type not in ("cuda", "meta") and not (x.device.type == "cpu" and kernels.INTERPRETED):
        return (f"x is on {x.device.type}: the Triton kernels take CUDA tensors "
                "(CPU ones only under TRITON_INTERPRET=1)")
    if x.dtype not in DTYPES:
        return f"x is {x.dtype}: the kernels take float32, float16 and bfloat16 maps"
    if not 3 <= x.dim() <= 5:
        return f"x has {x.dim()} dims: the kernels take (N, C, *spatial) maps with 1 to 3 spatial dims"
    cd = _channel_dim(x, channel_dim)
    if cd is None:
        return f"channel_dim={channel_dim}: the kernels take channels at dim 1 or at the last dim"
    if x.numel() == 0:
        return "x is empty"
    if layout.ncl_strides(x, cd) is None:
        return "x's spatial dims do not collapse to one stride (a spatially sliced map): pass x.contiguous()"
    if residual is not None:
        if residual.shape != x.shape:
            return f"residual {tuple(residual.shape)} is not x's shape {tuple(x.shape)} (no broadcasting)"
        if residual.dtype != x.dtype or residual.device != x.device:
            return f"residual is {residual.dtype} on {residual.device}, x is {x.dtype} on {x.device}"
        if layout.ncl_strides(residual, cd) is None:
            return "residual's spatial dims do not collapse to one stride: pass residual.contiguous()"
    return None


def squeeze_excite(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor | None,
    fc2_weight: torch.Tensor,
    fc2_bias: torch.Tensor | None,
    *,
    channel_dim: int,
    squeeze: str = "avg",
    gate: str = "sigmoid",
    gate_scale: float = 1.0,
    post_act: str | None = None,
    inplace: bool = False,
    fallback: bool = True,
) -> torch.Tensor:
    """``post_act(residual + x * g)`` (or ``post_act(x * g)``) with ``g = gate_scale * gate(fc2(relu(
    fc1(squeeze(x)))))``: :func:`reference_squeeze_excite`'s result, by the fused Triton op.

    Args:
        x: the gated map, ``(N, C, *spatial)`` (``channel_dim=1``, any memory format) or
            ``(N, *spatial, C)`` (``channel_dim=-1``: nhwc maps, nlc token sequences).
        residual: the shortcut added after the gate, ``x``'s shape, or ``None``.
        fc1_weight, fc1_bias, fc2_weight, fc2_bias: ``(R, C)``/``(R, C, 1, 1)``, ``(R,)``,
            ``(C, R)``/``(C, R, 1, 1)``, ``(C,)`` (biases may be ``None``).
        squeeze: ``avg`` (paper Eq. 2), ``max`` or ``avgmax``; gate: ``sigmoid`` or ``hard_sigmoid``.
        post_act: ``None`` or ``"relu"``, the activation after the residual add.
        inplace: write the result into ``x`` and return it, when autograd does not need ``x``
            and ``x`` owns each of its elements (else computed out of place).
        fallback: run the reference when :func:`unsupported_reason` is not ``None``; with
            ``False``, raise :class:`KernelError` instead.

    Gradients reach ``x``, ``residual`` and the four fc tensors (no double backward). On CUDA:

        >>> # x = x.cuda().to(memory_format=torch.channels_last), weights on CUDA
        >>> # y = squeeze_excite(x, shortcut, w1, b1, w2, b2, channel_dim=1, post_act="relu")
    """
    _check_args(x, channel_dim, squeeze, gate, post_act)
    reason = unsupported_reason(x, residual, channel_dim=channel_dim, squeeze=squeeze, gate=gate)
    args = (x, residual, fc1_weight, fc1_bias, fc2_weight, fc2_bias)
    if reason is not None:
        if not fallback:
            raise KernelError(f"se_inject.ops.squeeze_excite: {reason}")
        return reference_squeeze_excite(*args, channel_dim=_channel_dim(x, channel_dim),
                                        squeeze=squeeze, gate=gate, gate_scale=gate_scale,
                                        post_act=post_act, inplace=inplace)
    cd = _channel_dim(x, channel_dim)
    options = (cd, squeeze, gate, float(gate_scale), post_act)
    if inplace and not _needs_grad(*args) and layout.writes_each_element_once(x, cd):
        torch.ops.se_inject.squeeze_excite_inplace(*args, *options)
        return x
    return torch.ops.se_inject.squeeze_excite(*args, *options)[0]


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
