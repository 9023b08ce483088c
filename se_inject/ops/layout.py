"""Feature maps as ``(N, C, L)``: the one geometry every fused SE kernel works in.

A map with channels at ``channel_dim=1`` (``(N, C, *spatial)``, any memory format) or at
``channel_dim=-1`` (``(N, *spatial, C)``: nhwc maps and nlc token sequences) is read as ``N`` images
of ``C`` channels by ``L = prod(spatial)`` positions, provided its spatial dims collapse to one
strided run. That covers contiguous NCHW, ``channels_last``/``channels_last_3d``, contiguous NHWC and
NLC, channel slices and batch slices; a map sliced along a spatial dim does not collapse.

    >>> import torch
    >>> x = torch.randn(2, 8, 3, 5).to(memory_format=torch.channels_last)
    >>> ncl_shape(x, 1), ncl_strides(x, 1), unit_axis(x, 1)
    ((2, 8, 15), (120, 1, 8), 1)
"""
from __future__ import annotations

import math

import torch

__all__ = ["ncl_shape", "ncl_strides", "ncl_view", "unit_axis", "writes_each_element_once",
           "UNIT_L", "UNIT_C", "UNIT_NONE"]

#: which of a map's (C, L) axes has stride 1: the kernels vectorise their loads along it.
UNIT_L, UNIT_C, UNIT_NONE = 0, 1, 2


def _channel_axis(t: torch.Tensor, channel_dim: int) -> int:
    return 1 if channel_dim == 1 else t.dim() - 1


def ncl_shape(t: torch.Tensor, channel_dim: int) -> tuple[int, int, int]:
    """``(N, C, L)`` of a map (``L`` = the number of spatial positions)."""
    cd = _channel_axis(t, channel_dim)
    spatial = [t.shape[d] for d in range(1, t.dim()) if d != cd]
    return t.shape[0], t.shape[cd], math.prod(spatial)


def ncl_strides(t: torch.Tensor, channel_dim: int) -> tuple[int, int, int] | None:
    """Element strides of the ``(N, C, L)`` view, or ``None`` when the spatial dims do not collapse."""
    cd = _channel_axis(t, channel_dim)
    # size-1 dims have no stride that matters; the others must nest, outer = inner * size
    dims = [d for d in range(1, t.dim()) if d != cd and t.shape[d] != 1]
    for outer, inner in zip(dims, dims[1:]):
        if t.stride(outer) != t.stride(inner) * t.shape[inner]:
            return None
    sl = t.stride(dims[-1]) if dims else 1
    return t.stride(0), t.stride(cd), sl


def ncl_view(t: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """The ``(N, C, L)`` view of a map whose :func:`ncl_strides` is not ``None`` (no copy)."""
    n, c, l = ncl_shape(t, channel_dim)
    strides = ncl_strides(t, channel_dim)
    if strides is None:
        raise ValueError(f"ncl_view: a map of shape {tuple(t.shape)} and strides {t.stride()} "
                         "does not collapse to (N, C, L); call .contiguous() first")
    return t.as_strided((n, c, l), strides)


def unit_axis(t: torch.Tensor, channel_dim: int) -> int:
    """:data:`UNIT_L` (channels-first), :data:`UNIT_C` (channels-last) or :data:`UNIT_NONE`.

    An axis of length 1 is no use to vectorise along: a 1x1 NCHW map (stride 1 on both axes) counts
    as channels-last, which is what its memory is.
    """
    strides = ncl_strides(t, channel_dim)
    if strides is None:
        return UNIT_NONE
    _, c, l = ncl_shape(t, channel_dim)
    _, sc, sl = strides
    if sl == 1 and l > 1:
        return UNIT_L
    if sc == 1 and c > 1:
        return UNIT_C
    return UNIT_L if sl == 1 else UNIT_NONE


def writes_each_element_once(t: torch.Tensor, channel_dim: int) -> bool:
    """True when no two ``(n, c, l)`` indices share an address (safe to write a result into ``t``)."""
    strides = ncl_strides(t, channel_dim)
    if strides is None:
        return False
    dims = sorted((s, n) for s, n in zip(strides, ncl_shape(t, channel_dim)) if n > 1)
    extent = 1  # each axis must step over everything the faster axes cover
    for stride, size in dims:
        if stride < extent:
            return False
        extent = stride * size
    return True
