"""The pure-PyTorch squeeze-excite formulation: the block's maths, and the path for CPU and export.

This is exactly what :class:`se_inject.block.SqueezeExcite` computes (paper §3, Eq. 2-4), written as
a function of the block's tensors so the fused Triton op (``se_inject.ops``) has one reference to
match, and so ONNX export, ``torch.export``, the CPU and every input the kernels do not cover run it:

    >>> import torch
    >>> x = torch.randn(2, 8, 5, 5)
    >>> w1, b1, w2, b2 = torch.randn(2, 8), torch.zeros(2), torch.randn(8, 2), torch.zeros(8)
    >>> reference_squeeze_excite(x, x, w1, b1, w2, b2, channel_dim=1, post_act="relu").shape
    torch.Size([2, 8, 5, 5])
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["reference_squeeze_excite", "spatial_dims", "POOLS", "GATES", "POST_ACTS"]


def _avgmax(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return 0.5 * (x.mean(dims) + x.amax(dims))


#: squeeze name -> pooling over the spatial dims (Eq. 2 is the mean; ``avgmax`` is timm's).
POOLS: dict[str, Callable[[torch.Tensor, tuple[int, ...]], torch.Tensor]] = {
    "avg": lambda x, dims: x.mean(dims),
    "max": lambda x, dims: x.amax(dims),
    "avgmax": _avgmax,
}
#: gate name -> activation (Eq. 3 uses the sigmoid); the same functions as block.GATES' modules.
GATES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": torch.sigmoid,
    "hard_sigmoid": F.hardsigmoid,
}
#: activation folded in after the residual add (ReLU in ResNets); ``None``: the add's value itself.
#: In place: the value is a fresh tensor made by the add, and ReLU's backward only needs its output.
POST_ACTS: dict[str | None, Callable[[torch.Tensor], torch.Tensor]] = {
    None: lambda y: y,
    "relu": torch.relu_,
}


def spatial_dims(ndim: int, channel_dim: int) -> tuple[int, ...]:
    """The pooled dims of an ``ndim``-d map whose channels are at ``channel_dim`` (1 or -1)."""
    if channel_dim == 1:
        return tuple(range(2, ndim))
    return tuple(range(1, ndim - 1))


def _matrix(w: torch.Tensor) -> torch.Tensor:
    # (R, C, 1, 1) 1x1-conv weights are (R, C) matrices: a 1x1 conv on a 1x1 map is a matmul.
    return w.reshape(w.shape[0], -1)


def reference_squeeze_excite(
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
) -> torch.Tensor:
    """``post_act(residual + x * gate(fc2(relu(fc1(pool(x))))) * gate_scale)``, in PyTorch ops.

    ``x`` is ``(N, C, *spatial)`` for ``channel_dim=1`` or ``(N, *spatial, C)`` for ``channel_dim=-1``;
    ``residual`` is ``None`` (the result is ``x * g``) or a tensor of ``x``'s shape. ``inplace=True``
    writes the result into ``x`` when autograd does not need ``x`` (else it is ignored).

        >>> x = torch.randn(2, 3, 3, 8)            # nhwc: channels last
        >>> w1, w2 = torch.zeros(2, 8), torch.zeros(8, 2)
        >>> y = reference_squeeze_excite(x, None, w1, None, w2, None, channel_dim=-1, gate_scale=2.0)
        >>> torch.equal(y, x)                      # identity init: 2 * sigmoid(0) == 1
        True
    """
    dims = spatial_dims(x.dim(), channel_dim)
    s = POOLS[squeeze](x, dims)  # (N, C): the channel descriptor z of Eq. 2
    h = F.relu(F.linear(s, _matrix(fc1_weight), fc1_bias), inplace=True)
    g = GATES[gate](F.linear(h, _matrix(fc2_weight), fc2_bias))
    if gate_scale != 1.0:
        g = g * gate_scale
    # indexing with None exports as Unsqueeze in both ONNX exporters (a reshape does not)
    if channel_dim == 1:
        g = g[(...,) + (None,) * (x.dim() - 2)]
    else:
        g = g[(slice(None),) + (None,) * (x.dim() - 2)]
    write_into_x = (inplace and not _needs_grad(x, residual, g) and torch.result_type(x, g) == x.dtype
                    and (residual is None or (residual.shape == x.shape and residual.dtype == x.dtype)))
    if residual is None:
        y = x.mul_(g) if write_into_x else x * g
    elif write_into_x:
        y = torch.addcmul(residual, x, g, out=x)
    else:
        y = torch.addcmul(residual, x, g)
    return POST_ACTS[post_act](y)


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
