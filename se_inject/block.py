"""The Squeeze-and-Excitation block (paper §3, Eq. 2-4) in three layouts.

    >>> import torch
    >>> se = SqueezeExcite(256, r=16)
    >>> se
    SqueezeExcite(
      channels=256, reduced=16, layout=nchw, squeeze=avg, gate=sigmoid, init=default
      (fc1): Conv2d(256, 16, kernel_size=(1, 1), stride=(1, 1))
      (act): ReLU(inplace=True)
      (fc2): Conv2d(16, 256, kernel_size=(1, 1), stride=(1, 1))
      (gate): Sigmoid()
    )
    >>> se(torch.randn(2, 256, 7, 7)).shape
    torch.Size([2, 256, 7, 7])

Parameter names and shapes match timm's ``SEModule`` (``fc1``/``fc2`` 1x1 convs with bias), so a
``seresnet50`` state dict loads into ``se_inject.apply(resnet50)``.

``init="identity"`` makes the block an exact identity when inserted: the gate becomes
``2 * sigmoid(z)`` with ``fc2`` zero-initialised, so ``z == 0`` and the gate is exactly ``1.0`` for
every input (``sigmoid(0) == hard_sigmoid(0) == 0.5`` exactly in floating point). A pretrained
network's outputs are unchanged until it is fine-tuned, and gradients reach ``fc2`` at once (the
gate is at its steepest point, not saturated). The gate's range is ``(0, 2)``, so the block can
amplify a channel as well as suppress it.

When the block sits at the end of a residual branch it can also perform the residual add:
``se(x, shortcut)`` returns ``shortcut + x * gate`` in one ``torch.addcmul``, which saves one
pass over the feature map. It equals ``x * gate + shortcut`` up to the rounding of a fused
multiply-add (about one ulp), and exactly when the gate is 1 (``init="identity"``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SqueezeExcite", "reduced_channels", "GATES", "SQUEEZES", "LAYOUTS", "INITS"]

#: gate name -> activation module class (paper Eq. 3 uses the sigmoid).
GATES: dict[str, type[nn.Module]] = {"sigmoid": nn.Sigmoid, "hard_sigmoid": nn.Hardsigmoid}
#: squeeze names (paper Eq. 2 is global average pooling; ``avgmax`` is timm's 0.5 * (avg + max)).
SQUEEZES = ("avg", "max", "avgmax")
#: ``nchw``: channels-first feature maps (1x1 convs); ``nhwc``: channels-last maps; ``nlc``: tokens.
LAYOUTS = ("nchw", "nhwc", "nlc")
INITS = ("default", "identity")


def reduced_channels(channels: int, r: float, divisor: int = 1, min_channels: int = 1) -> int:
    """Width of the excitation bottleneck, ``C / r`` rounded (paper Eq. 3).

    ``divisor=1`` gives the paper's ``round(C / r)``; ``divisor=8`` reproduces timm's
    ``make_divisible(C / r, 8, round_limit=0)`` (what ``seresnet18`` uses):

        >>> reduced_channels(2048, 16), reduced_channels(64, 16), reduced_channels(64, 16, divisor=8)
        (128, 4, 8)
    """
    if channels < 1 or r <= 0 or divisor < 1:
        raise ValueError(f"reduced_channels needs channels >= 1, r > 0, divisor >= 1 (got {channels}, {r}, {divisor})")
    value = channels / r
    floor = max(min_channels, divisor)
    return max(floor, int(value + divisor / 2) // divisor * divisor)


class SqueezeExcite(nn.Module):
    """Squeeze (global pooling) -> FC C->C/r -> ReLU -> FC C/r->C -> gate -> channel-wise scale.

    Args:
        channels: C, the number of channels gated.
        r: reduction ratio (paper §6.3 settles on 16).
        reduced: bottleneck width; computed from ``r``, ``divisor`` and ``min_reduced`` when omitted.
        divisor: round the bottleneck width to a multiple of this (1 = the paper, 8 = timm).
        min_reduced: lower bound on the bottleneck width.
        gate: ``sigmoid`` (paper) or ``hard_sigmoid``.
        squeeze: ``avg`` (paper), ``max`` or ``avgmax``.
        layout: ``nchw``, ``nhwc`` or ``nlc`` (``(batch, tokens, channels)``).
        init: ``default`` (PyTorch's layer init) or ``identity`` (see the module docstring).
    """

    def __init__(
        self,
        channels: int,
        r: float = 16,
        *,
        reduced: int | None = None,
        divisor: int = 1,
        min_reduced: int = 1,
        gate: str = "sigmoid",
        squeeze: str = "avg",
        layout: str = "nchw",
        init: str = "default",
    ) -> None:
        super().__init__()
        for name, value, allowed in (("gate", gate, tuple(GATES)), ("squeeze", squeeze, SQUEEZES),
                                     ("layout", layout, LAYOUTS), ("init", init, INITS)):
            if value not in allowed:
                raise ValueError(f"SqueezeExcite: {name}={value!r} is not one of {', '.join(allowed)}")
        self.channels = int(channels)
        self.reduced = int(reduced) if reduced is not None else reduced_channels(channels, r, divisor, min_reduced)
        self.layout, self.squeeze, self.gate_name, self.init = layout, squeeze, gate, init
        # nchw keeps timm's 1x1-conv parameter shapes; the maths below runs them as matmuls.
        fc = (lambda i, o: nn.Conv2d(i, o, 1, bias=True)) if layout == "nchw" else (lambda i, o: nn.Linear(i, o))
        self.fc1 = fc(self.channels, self.reduced)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = fc(self.reduced, self.channels)
        self.gate = GATES[gate]()
        # 2 * sigmoid(0) == 1 exactly: the identity formulation (module docstring).
        self.gate_scale = 2.0 if init == "identity" else 1.0
        # Set by the rewrite when `x` is a fresh tensor read by nothing else: without autograd the
        # fused add may then write into it instead of allocating a new feature map.
        self.reuse_input = False
        #: the paper's name for this block (SE_<stage>_<block>, §6.3), set by se_inject.apply
        self.label: str | None = None
        if init == "identity":
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)

    def extra_repr(self) -> str:
        label = f"label={self.label}, " if self.label else ""
        return (f"{label}channels={self.channels}, reduced={self.reduced}, layout={self.layout}, "
                f"squeeze={self.squeeze}, gate={self.gate_name}, init={self.init}")

    def _spatial_dims(self, x: torch.Tensor) -> tuple[int, ...]:
        if self.layout == "nchw":
            return tuple(range(2, x.dim()))
        return tuple(range(1, x.dim() - 1))

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        dims = self._spatial_dims(x)
        if self.squeeze == "avg":
            return x.mean(dims)
        if self.squeeze == "max":
            return x.amax(dims)
        return 0.5 * (x.mean(dims) + x.amax(dims))

    def excitation(self, x: torch.Tensor) -> torch.Tensor:
        """The gate (Eq. 3) for ``x``, shaped to broadcast against it (``(B, C, 1, 1)`` for nchw)."""
        s = self._pool(x)  # (B, C): the channel descriptor z of Eq. 2
        # A 1x1 conv on a 1x1 map is a matmul; F.linear avoids the conv dispatch (~2x faster on CPU).
        w1, w2 = self.fc1.weight, self.fc2.weight
        h = self.act(F.linear(s, w1.reshape(w1.shape[0], -1), self.fc1.bias))
        g = self.gate(F.linear(h, w2.reshape(w2.shape[0], -1), self.fc2.bias))
        if self.gate_scale != 1.0:
            g = g * self.gate_scale
        # indexing with None exports as Unsqueeze in both ONNX exporters (a reshape does not)
        if self.layout == "nchw":
            return g[(...,) + (None,) * (x.dim() - 2)]
        return g[(slice(None),) + (None,) * (x.dim() - 2)]

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``x * gate`` (Eq. 4), or ``residual + x * gate`` when the block ends a residual branch."""
        g = self.excitation(x)
        if residual is None:
            return x * g
        if self.reuse_input and not torch.is_grad_enabled() and not torch.compiler.is_compiling() \
                and not torch.jit.is_tracing() and x.shape == residual.shape:
            return torch.addcmul(residual, x, g, out=x)
        return torch.addcmul(residual, x, g)
