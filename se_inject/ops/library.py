"""``torch.library`` registration of the fused SE ops (the habit in shared/STYLE.md).

Three ops in the ``se_inject`` namespace, each a :func:`torch.library.triton_op` so that
``torch.compile`` traces through to the Triton launches (Inductor schedules and fuses around them)
while ``torch.export`` keeps them as single ops:

- ``se_inject::squeeze_excite(x, residual?, w1, b1?, w2, b2?, channel_dim, squeeze, gate,
  gate_scale, post_act?) -> (out, stats)``, with autograd (:func:`_backward`);
- ``se_inject::squeeze_excite_backward(...)``: the two-pass backward, itself an op so the compiled
  backward graph sees its kernels too (no double backward: the block never needs one);
- ``se_inject::squeeze_excite_inplace(x!, ...)``: the forward written into ``x`` (no autograd).

A ``triton_op``'s implementation doubles as its fake (meta) implementation: on CUDA tensors,
fake or real, it allocates and launches (a traced launch only records itself), and on CPU tensors
it runs the PyTorch twins (:mod:`.fused`), which is also the op's CPU implementation.

    >>> import torch
    >>> x = torch.randn(2, 8, 4, 4)
    >>> w1, b1, w2, b2 = torch.randn(2, 8), torch.zeros(2), torch.randn(8, 2), torch.zeros(8)
    >>> out, stats = torch.ops.se_inject.squeeze_excite(x, None, w1, b1, w2, b2, 1, "avg",
    ...                                                 "sigmoid", 1.0, None)
    >>> out.shape, stats.shape
    (torch.Size([2, 8, 4, 4]), torch.Size([1, 2, 8]))
"""
from typing import Optional

import torch
from torch import Tensor

from . import fused, kernels
from .._torch_compat import declare_op_kernels

__all__ = ["squeeze_excite_op", "squeeze_excite_backward_op", "squeeze_excite_inplace_op"]

# No `from __future__ import annotations` here: torch.library infers each op's schema from the
# annotations, and torch releases before 2.14 do not resolve string annotations.


def _empty(like: Tensor) -> Tensor:
    # an op cannot return None where its schema says Tensor: absent results are empty tensors
    return like.new_empty(0)


@torch.library.triton_op("se_inject::squeeze_excite", mutates_args=())
def squeeze_excite_op(x: Tensor, residual: Optional[Tensor], w1: Tensor, b1: Optional[Tensor],
                      w2: Tensor, b2: Optional[Tensor], channel_dim: int, squeeze: str, gate: str,
                      gate_scale: float, post_act: Optional[str]) -> tuple[Tensor, Tensor]:
    return fused.forward(x, residual, w1, b1, w2, b2, channel_dim, squeeze, gate, gate_scale, post_act)


@torch.library.triton_op("se_inject::squeeze_excite_inplace", mutates_args=("x",))
def squeeze_excite_inplace_op(x: Tensor, residual: Optional[Tensor], w1: Tensor,
                              b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor],
                              channel_dim: int, squeeze: str, gate: str, gate_scale: float,
                              post_act: Optional[str]) -> None:
    # safe element-wise: each program reads its x tile before writing the same tile
    fused.forward(x, residual, w1, b1, w2, b2, channel_dim, squeeze, gate, gate_scale, post_act, out=x)


@torch.library.triton_op("se_inject::squeeze_excite_backward", mutates_args=())
def squeeze_excite_backward_op(grad_out: Tensor, x: Tensor, out: Optional[Tensor], stats: Tensor,
                               w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor],
                               channel_dim: int, squeeze: str, gate: str, gate_scale: float,
                               need_x: bool, write_grad_residual: bool
                               ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    grads = fused.backward(grad_out, x, out, stats, w1, b1, w2, b2, channel_dim, squeeze, gate,
                           gate_scale, need_x, write_grad_residual)
    return tuple(g if g is not None else _empty(x) for g in grads)


def _setup_context(ctx, inputs, output) -> None:
    x, residual, w1, b1, w2, b2, channel_dim, squeeze, gate, gate_scale, post_act = inputs
    out, stats = output
    relu = post_act == "relu"
    # x: the gradient of the gate; out: ReLU's mask (the next layer keeps it alive anyway)
    ctx.save_for_backward(x, out if relu else None, stats, w1, b1, w2, b2)
    ctx.mark_non_differentiable(stats)
    ctx.config = (channel_dim, squeeze, gate, gate_scale)
    ctx.relu, ctx.has_residual = relu, residual is not None


def _backward(ctx, grad_out: Tensor, _grad_stats: Optional[Tensor]):
    x, out, stats, w1, b1, w2, b2 = ctx.saved_tensors
    need = ctx.needs_input_grad
    # without a folded ReLU the residual's gradient is grad_out itself: no pass writes it
    write_res = ctx.has_residual and ctx.relu and need[1]
    grads = torch.ops.se_inject.squeeze_excite_backward(
        grad_out, x, out, stats, w1, b1, w2, b2, *ctx.config, need[0], write_res)
    grad_x, grad_res, grad_w1, grad_b1, grad_w2, grad_b2 = grads
    if ctx.has_residual and not ctx.relu:
        grad_res = grad_out
    return (grad_x if need[0] else None, grad_res if ctx.has_residual and need[1] else None,
            grad_w1, grad_b1 if b1 is not None else None, grad_w2, grad_b2 if b2 is not None else None,
            None, None, None, None, None)


squeeze_excite_op.register_autograd(_backward, setup_context=_setup_context)
for _name, _kernels in (("se_inject::squeeze_excite", kernels.FORWARD_KERNELS),
                        ("se_inject::squeeze_excite_inplace", kernels.FORWARD_KERNELS),
                        ("se_inject::squeeze_excite_backward", kernels.BACKWARD_KERNELS)):
    declare_op_kernels(_name, _kernels)
