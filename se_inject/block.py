"""The Squeeze-and-Excitation block (paper §3, Eq. 2-4) for feature maps of any rank and for tokens.

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
    >>> SqueezeExcite(64, spatial_dims=1)(torch.randn(2, 64, 100)).shape      # (N, C, L): audio, sequences
    torch.Size([2, 64, 100])
    >>> SqueezeExcite(64, spatial_dims=3)(torch.randn(2, 64, 4, 7, 7)).shape  # (N, C, T, H, W): video
    torch.Size([2, 64, 4, 7, 7])

Parameter names and shapes match timm's ``SEModule`` (``fc1``/``fc2`` 1x1 convs with bias), so a
``seresnet50`` state dict loads into ``se_inject.apply(resnet50)``. The same parameter shapes serve
every map rank: the excitation is two matrix products on the squeezed ``(N, C)`` descriptor.

``init="identity"`` makes the block an exact identity when inserted: the gate becomes
``2 * sigmoid(z)`` with ``fc2`` zero-initialised, so ``z == 0`` and the gate is exactly ``1.0`` for
every input (``sigmoid(0) == hard_sigmoid(0) == 0.5`` exactly in floating point). A pretrained
network's outputs are unchanged until it is fine-tuned, and gradients reach ``fc2`` at once (the
gate is at its steepest point, not saturated). The gate's range is ``(0, 2)``, so the block can
amplify a channel as well as suppress it.

When the block sits at the end of a residual branch it can also perform the residual add:
``se(x, shortcut)`` returns ``shortcut + x * gate`` in one ``torch.addcmul``, which saves one
pass over the feature map, and, with ``post_act="relu"``, the ReLU that follows the add in the
block (ResNet's ``act3``). It equals ``x * gate + shortcut`` up to the rounding of a fused
multiply-add (about one ulp), and exactly when the gate is 1 (``init="identity"``).

The forward is plain PyTorch with every size fixed at construction, so a model holding the block
can be traced again by torch.fx (feature extraction, FX quantization), scripted with TorchScript,
compiled and exported. On CUDA tensors it runs the fused kernels of :mod:`se_inject.ops` instead
(``kernels="auto"``, the default; ``"torch"`` keeps the PyTorch formulation everywhere).
"""
import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .errors import KernelError


__all__ = ["SqueezeExcite", "reduced_channels", "GATES", "SQUEEZES", "LAYOUTS", "INITS", "POST_ACTS", "KERNELS"]

#: gate name -> activation module class (paper Eq. 3 uses the sigmoid).
GATES: dict[str, type[nn.Module]] = {"sigmoid": nn.Sigmoid, "hard_sigmoid": nn.Hardsigmoid}
#: squeeze names (paper Eq. 2 is global average pooling; ``avgmax`` is timm's 0.5 * (avg + max)).
SQUEEZES = ("avg", "max", "avgmax")
#: where the channels are: ``nchw``: channels first, ``(N, C, *spatial)`` with 1 to 3 spatial dims
#: (``(N, C, L)``, ``(N, C, H, W)``, ``(N, C, T, H, W)``); ``nhwc``: channels last, ``(N, *spatial, C)``;
#: ``nlc``: token sequences ``(N, L, C)``.
LAYOUTS = ("nchw", "nhwc", "nlc")
INITS = ("default", "identity")
#: what the block applies after the residual add it performs (the op that followed the add).
POST_ACTS = (None, "relu")
#: ``auto``: the fused kernels of se_inject.ops on CUDA tensors, PyTorch elsewhere; ``triton``: the
#: kernels wherever they run (an error where they cannot); ``torch``: always the PyTorch formulation.
KERNELS = ("auto", "triton", "torch")


def reduced_channels(channels: int, r: float, divisor: int = 1, min_channels: int = 1) -> int:
    """Width of the excitation bottleneck, ``C / r`` rounded (paper Eq. 3).

    ``divisor=1`` gives the paper's ``round(C / r)``; ``divisor=8`` reproduces timm's
    ``make_divisible(C / r, 8, round_limit=0)`` (what ``seresnet18`` uses):

        >>> reduced_channels(2048, 16), reduced_channels(64, 16), reduced_channels(64, 16, divisor=8)
        (128, 4, 8)
    """
    if channels < 1 or not (r > 0 and math.isfinite(r)) or divisor < 1:
        raise ValueError(f"reduced_channels needs channels >= 1, a finite r > 0, divisor >= 1 "
                         f"(got {channels}, {r}, {divisor})")
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
        layout: ``nchw`` (channels first), ``nhwc`` (channels last) or ``nlc`` (tokens ``(N, L, C)``).
        init: ``default`` (PyTorch's layer init) or ``identity`` (see the module docstring).
        spatial_dims: how many spatial dims the gated maps have: 2 for images (the default), 1 for
            ``(N, C, L)`` sequences, 3 for ``(N, C, T, H, W)`` video and volumes; 1 for ``nlc``.
        post_act: ``None``, or ``"relu"``: applied after the residual add (``se(x, shortcut)``).
        kernels: ``auto``, ``triton`` or ``torch`` (see :data:`KERNELS`).
    """

    # for TorchScript: attributes that may be None
    post_act: Optional[str]
    label: Optional[str]

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
        spatial_dims: int | None = None,
        post_act: str | None = None,
        kernels: str = "auto",
    ) -> None:
        super().__init__()
        for name, value, allowed in (("gate", gate, tuple(GATES)), ("squeeze", squeeze, SQUEEZES),
                                     ("layout", layout, LAYOUTS), ("init", init, INITS),
                                     ("post_act", post_act, POST_ACTS), ("kernels", kernels, KERNELS)):
            if value not in allowed:
                raise ValueError(f"SqueezeExcite: {name}={value!r} is not one of {', '.join(map(str, allowed))}")
        if spatial_dims is None:
            spatial_dims = 1 if layout == "nlc" else 2
        if spatial_dims not in ((1,) if layout == "nlc" else (1, 2, 3)):
            raise ValueError(f"SqueezeExcite: spatial_dims={spatial_dims!r} must be 1, 2 or 3 (1 for nlc)")
        self.channels = int(channels)
        self.reduced = int(reduced) if reduced is not None else reduced_channels(channels, r, divisor, min_reduced)
        self.layout, self.squeeze, self.gate_name, self.init = layout, squeeze, gate, init
        self.spatial_dims = int(spatial_dims)
        self.post_act = post_act
        self.kernels = kernels
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
        self.label: Optional[str] = None
        # Fixed at construction so that fx, TorchScript and export see constants, not x.dim().
        first = 2 if layout == "nchw" else 1
        self._pool_dims: List[int] = list(range(first, first + self.spatial_dims))
        self._channel_dim = 1 if layout == "nchw" else -1
        if init == "identity":
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)

    def extra_repr(self) -> str:
        label = f"label={self.label}, " if self.label else ""
        extra = "".join(f", {k}={v}" for k, v, default in (
            ("spatial_dims", self.spatial_dims, 1 if self.layout == "nlc" else 2), ("post_act", self.post_act, None),
            ("kernels", self.kernels, "auto")) if v != default)
        return (f"{label}channels={self.channels}, reduced={self.reduced}, layout={self.layout}, "
                f"squeeze={self.squeeze}, gate={self.gate_name}, init={self.init}{extra}")

    def __setstate__(self, state: dict) -> None:
        # blocks pickled before spatial_dims/post_act/kernels existed (images only)
        super().__setstate__(state)
        if "_pool_dims" not in self.__dict__:
            nchw = self.layout == "nchw"
            self.spatial_dims = 2 if nchw else (1 if self.layout == "nlc" else 2)
            self._pool_dims = list(range(2 if nchw else 1, (2 if nchw else 1) + self.spatial_dims))
            self._channel_dim = 1 if nchw else -1
            self.post_act, self.kernels = None, "auto"

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.squeeze == "avg":
            return x.mean(self._pool_dims)
        if self.squeeze == "max":
            return x.amax(self._pool_dims)
        return 0.5 * (x.mean(self._pool_dims) + x.amax(self._pool_dims))

    def excitation(self, x: torch.Tensor) -> torch.Tensor:
        """The gate (Eq. 3) for ``x``, shaped to broadcast against it (``(B, C, 1, 1)`` for nchw)."""
        s = self._pool(x)  # (B, C): the channel descriptor z of Eq. 2
        # A 1x1 conv on a 1x1 map is a matmul; F.linear avoids the conv dispatch (~2x faster on CPU).
        # flatten(1), not reshape(shape[0], -1): no size is read, so FX quantization can fold it
        h = self.act(F.linear(s, self.fc1.weight.flatten(1), self.fc1.bias))
        g = self.gate(F.linear(h, self.fc2.weight.flatten(1), self.fc2.bias))
        if self.gate_scale != 1.0:
            g = g * self.gate_scale
        return self._broadcast(g)

    def _broadcast(self, g: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` -> ``(B, C, 1, 1)`` (nchw) or ``(B, 1, 1, C)`` (channels last), at the block's rank.
        Indexing with None, written out per rank: one Unsqueeze in ONNX, no ``x.dim()`` for fx or
        TorchScript to trace."""
        if self.layout == "nchw":
            if self.spatial_dims == 2:
                return g[:, :, None, None]
            if self.spatial_dims == 1:
                return g[:, :, None]
            return g[:, :, None, None, None]
        if self.spatial_dims == 2:
            return g[:, None, None, :]
        if self.spatial_dims == 1:
            return g[:, None, :]
        return g[:, None, None, None, :]

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x * gate`` (Eq. 4), or ``residual + x * gate`` (then ``post_act``) at the end of a residual branch."""
        if not torch.jit.is_scripting():
            if self._fused(x, residual):
                return self._run_fused(x, residual)
        g = self.excitation(x)
        if residual is None:
            return x * g
        if self.reuse_input and not torch.jit.is_scripting() and self._may_write_into(x, residual):
            out = torch.addcmul(residual, x, g, out=x)
        else:
            out = torch.addcmul(residual, x, g)
        if self.post_act is not None:  # "relu", the only post-add activation the block folds in
            out = torch.relu_(out)  # in place on a fresh tensor, as the ReLU(inplace=True) it replaces
        return out

    @torch.jit.unused
    def _may_write_into(self, x: torch.Tensor, residual: torch.Tensor) -> bool:
        """Inference only (no autograd, no tracing or compiling): ``x`` is a fresh map no one else reads."""
        return (not torch.is_grad_enabled() and not isinstance(x, torch.fx.Proxy) and not torch.compiler.is_compiling()
                and not torch.jit.is_tracing() and x.shape == residual.shape)

    @torch.jit.unused
    def _run_fused(self, x: torch.Tensor, residual: Optional[torch.Tensor]) -> torch.Tensor:
        from . import ops
        try:
            return ops.squeeze_excite(
                x, residual, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias,
                channel_dim=self._channel_dim, squeeze=self.squeeze, gate=self.gate_name, gate_scale=self.gate_scale,
                post_act=self.post_act,
                inplace=bool(self.reuse_input and residual is not None and self._may_write_into(x, residual)),
                fallback=self.kernels == "auto")
        except KernelError as e:
            raise KernelError(f"{self.label or 'SqueezeExcite'} (kernels='triton'): {str(e).split(': ', 1)[-1]}; "
                              "use kernels='auto' to fall back to PyTorch where the kernels cannot run") from None

    @torch.jit.unused
    def _fused(self, x: torch.Tensor, residual: Optional[torch.Tensor]) -> bool:
        """Whether this call goes to :func:`se_inject.ops.squeeze_excite`: never while fx-tracing,
        tracing or exporting (they see the PyTorch formulation), nor on the CPU with
        ``kernels="auto"``. The op runs the PyTorch formulation itself for inputs its kernels do not
        take (``auto``) or raises a one-line ``KernelError`` saying why (``triton``)."""
        if self.kernels == "torch" or isinstance(x, torch.fx.Proxy) or torch.jit.is_tracing():
            return False
        if torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export():
            return False
        return x.is_cuda or self.kernels == "triton"
