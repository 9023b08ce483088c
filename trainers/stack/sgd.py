"""SGD (momentum, Nesterov, weight decay) on a :class:`~trainers.stack.flat.FlatStack`: every run's own
learning rate, and a mask that leaves a run's state untouched for a step it must not take.

The arithmetic is ``torch.optim.SGD``'s (its ``_multi_tensor_sgd``, dampening 0), row by row:

    d   = g + wd * p                  (weight decay per parameter group: a (1, N) row)
    buf = momentum * buf + d          (the first step's buf = d: buf starts at zero)
    u   = d + momentum * buf          (Nesterov) or buf
    p   = p - lr_k * u                (lr_k: run k's learning rate, a (K, 1) column)

so a run's parameters follow, to float rounding, the path the same optimizer would take alone.

    >>> import torch
    >>> from torch import nn
    >>> from trainers.stack.flat import FlatStack
    >>> nets = [nn.Linear(3, 2) for _ in range(2)]
    >>> s = FlatStack(nets)                     # first: the runs' modules now hold views of the stack
    >>> shadows = [torch.optim.SGD(n.parameters(), lr=0.1, momentum=0.9, nesterov=True) for n in nets]
    >>> sgd = StackedSGD.from_optimizers(s, shadows)
    >>> _ = s.grad.fill_(1.0); before = s.flat.clone()
    >>> sgd.step(s, lr=torch.tensor([0.1, 0.0]), ok=torch.tensor([True, True]))
    >>> [round(v, 6) for v in (before - s.flat)[:, 0].tolist()]   # run 1's lr is 0 (Nesterov: 1 + 0.9 * 1 = 1.9)
    [0.19, 0.0]
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .flat import FlatStack

__all__ = ["StackedSGD", "per_run_clip_"]


@dataclass
class StackedSGD:
    momentum: float
    nesterov: bool
    weight_decay: torch.Tensor   # (1, N): each parameter's group's weight decay

    @classmethod
    def from_optimizers(cls, stack: FlatStack, optimizers: Sequence[torch.optim.Optimizer]) -> "StackedSGD":
        """The update the runs' own optimizers (built by timm's factory on each run's module) would make.

        Refuses, in one line, what it cannot reproduce: another optimizer than ``torch.optim.SGD``,
        dampening, ``maximize``, or groups that differ in momentum between themselves or between runs."""
        first = optimizers[0]
        if type(first) is not torch.optim.SGD:
            raise ConfigError(f"stacked runs train with SGD only (optim.opt sgd, nesterov or momentum), not "
                              f"{type(first).__name__}: train them alone (in a comparison: launch.stack: off)")
        def names(k: int) -> dict[int, str]:
            named = dict(stack.modules[k].named_parameters())
            return {id(named[s.name]): s.name for s in stack.pslots}

        decay: dict[str, float] = {}
        settings = set()
        for opt in optimizers:
            for g in opt.param_groups:
                if g.get("dampening", 0) != 0 or g.get("maximize", False):
                    raise ConfigError("stacked runs support SGD without dampening or maximize: train them alone (in a "
                                      "comparison: launch.stack: off)")
                settings.add((float(g["momentum"]), bool(g["nesterov"])))
        if len(settings) != 1:
            raise ConfigError(f"the stacked runs' SGD groups differ in momentum or Nesterov ({sorted(settings)}): "
                              "train them alone (in a comparison: launch.stack: off)")
        first_names = names(0)
        for g in first.param_groups:
            for p in g["params"]:
                if id(p) in first_names:
                    decay[first_names[id(p)]] = float(g["weight_decay"])
        missing = [s.name for s in stack.pslots if s.name not in decay]
        if missing:
            raise ConfigError(f"parameter {missing[0]} is in no optimizer group; stacking trains every parameter")
        for k, opt in enumerate(optimizers[1:], 1):
            other = names(k)
            for g in opt.param_groups:
                for p in g["params"]:
                    if decay.get(other.get(id(p), ""), None) != float(g["weight_decay"]):
                        raise ConfigError(f"run {k}'s weight decay of {other.get(id(p))} differs from run 0's: "
                                          "stacked runs share their optimizer settings")
        momentum, nesterov = settings.pop()
        return cls(momentum, nesterov, stack.column_values(decay))

    @torch.no_grad()
    def step(self, stack: FlatStack, lr: torch.Tensor, ok: torch.Tensor) -> None:
        """One update of every run with ``ok`` set (``(K,)`` bool); the others' parameters and momentum stay
        as they were, even where their gradients are NaN."""
        p, g, buf = stack.flat, stack.grad, stack.momentum
        keep = ok.view(-1, 1)
        d = torch.addcmul(g, self.weight_decay, p)
        new_buf = buf.mul(self.momentum).add_(d)
        update = d.add_(new_buf, alpha=self.momentum) if self.nesterov else new_buf
        buf.copy_(torch.where(keep, new_buf, buf))
        p.sub_(torch.where(keep, update.mul_(lr.view(-1, 1).to(p.dtype)), 0.0))


@torch.no_grad()
def per_run_clip_(grad: torch.Tensor, max_value: float, mode: str) -> None:
    """``dispatch_clip_grad`` of timm for each run (a row of ``grad``) on its own: ``norm`` scales a run's
    gradients so their 2-norm is at most ``max_value`` (``clip_grad_norm_``'s ``1e-6``), ``value`` clamps them.

        >>> g = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
        >>> per_run_clip_(g, 1.0, "norm"); [round(v, 4) for v in g.flatten().tolist()]
        [0.6, 0.8, 0.3, 0.4]
    """
    if mode == "value":
        grad.clamp_(-max_value, max_value)
        return
    if mode != "norm":
        raise ConfigError(f"optim.clip_mode = {mode!r} is not supported by stacked runs (norm, value): train them alone "
                          "(in a comparison: launch.stack: off)")
    norms = torch.linalg.vector_norm(grad, 2.0, dim=1, keepdim=True)
    grad.mul_(torch.clamp(max_value / (norms + 1e-6), max=1.0))
