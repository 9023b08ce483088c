"""What a folded SE block leaves behind (see :mod:`se_inject.compress.folding`).

    >>> import torch
    >>> scale = ConstantScale(torch.tensor([0.5, 2.0]), channel_dim=1, spatial_dims=2, post_act="relu")
    >>> scale(torch.ones(1, 2, 1, 1), residual=-torch.ones(1, 2, 1, 1)).flatten().tolist()   # relu(x * s + shortcut)
    [0.0, 1.0]

No ``from __future__ import annotations`` here: TorchScript reads the class annotations.
"""
from typing import Optional

import torch
from torch import nn

__all__ = ["ConstantScale"]


class ConstantScale(nn.Module):
    """What a folded SE block leaves: ``x * scale`` (no scale once folded into the layer before), then
    the residual add and activation the block performed (``se(x, shortcut)``), as before."""

    post_act: Optional[str]
    label: Optional[str]

    def __init__(self, scale: torch.Tensor | None, *, channel_dim: int, spatial_dims: int, post_act: str | None,
                 label: str | None = None) -> None:
        super().__init__()
        if scale is not None:
            shape = [1, -1] + [1] * spatial_dims if channel_dim == 1 else [1] * (spatial_dims + 1) + [-1]
            scale = scale.detach().reshape(shape).clone()
        self.register_buffer("scale", scale)
        self.post_act, self.label = post_act, label

    def extra_repr(self) -> str:
        label = f"label={self.label}, " if self.label else ""
        return f"{label}folded={self.scale is None}, post_act={self.post_act}"

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        scale = self.scale
        if scale is not None:
            x = x * scale
        if residual is None:
            return x
        out = x + residual
        if self.post_act is not None:
            out = torch.relu(out)
        return out
