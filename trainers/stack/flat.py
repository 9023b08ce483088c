"""K models of one structure as one set of tensors with a leading run dimension, stored flat.

    >>> import torch
    >>> from torch import nn
    >>> nets = [nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)) for _ in range(2)]
    >>> s = FlatStack(nets)
    >>> s.flat.shape, s.params["0.weight"].shape, s.buffers["1.running_mean"].shape
    (torch.Size([2, 21]), torch.Size([2, 3, 4]), torch.Size([2, 3]))
    >>> nets[1][0].weight.data_ptr() == s.params["0.weight"][1].data_ptr()   # run 1's module sees its slice
    True

Layout, and why:

- **parameters**: one ``(K, N)`` tensor ``flat``, run-major (run *k*'s parameters are the contiguous row
  ``flat[k]``); each stacked parameter is a view ``(K, *shape)`` of its columns, a leaf that autograd
  fills through a gradient view of ``grad`` (also ``(K, N)``). The optimizer, the per-run gradient checks
  and the masks of a dropped step are then a handful of whole-tensor ops with a ``(K, 1)`` operand
  (:mod:`.sgd`), whatever the number of layers: the kernel count of a step does not grow with the depth.
  The momentum buffers live in ``momentum``, the same shape.
- **buffers** (BatchNorm running statistics): contiguous ``(K, *shape)`` blocks, one after another in
  ``bflat`` (floating point) and ``iflat`` (integer counters), with ``brun`` / ``irun`` giving each
  element's run. Contiguous because BatchNorm's batching rule under ``vmap`` updates a running
  statistic in place only when it needs no copy (a strided one loses the update).
- **each run's own module** keeps its parameters and buffers as views of its slices: ``state_dict()``,
  ``load_state_dict()`` and the run's optimizer (its momentum buffers, once :meth:`attach_momentum`
  ran) read and write the stack, so a run's checkpoint is the one it would write trained alone.

The forward of the stack is ``vmap`` over :func:`torch.func.functional_call` of one template module
(:mod:`.step`); nothing here runs a model.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["FlatStack", "structure", "same_structure"]


def structure(model: nn.Module) -> list[tuple[Any, ...]]:
    """What must be equal for two models to run as one under ``vmap``: each module's class, its
    ``extra_repr`` (sizes, SE settings), a forward replaced on the instance or a GraphModule's code, and
    every parameter's and buffer's name, shape and dtype. Values may differ.

        >>> structure(nn.Linear(2, 3)) == structure(nn.Linear(2, 3)), structure(nn.Linear(2, 3)) == structure(nn.Linear(2, 4))
        (True, False)
    """
    out: list[tuple[Any, ...]] = []
    for name, mod in model.named_modules():
        code = getattr(mod, "code", None) if isinstance(getattr(mod, "code", None), str) else None
        forward = mod.__dict__.get("forward")
        out.append((name, type(mod).__qualname__, mod.extra_repr(), code,
                    getattr(forward, "__qualname__", None) if forward is not None else None))
    for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        out.append((name, tuple(t.shape), t.dtype, isinstance(t, nn.Parameter) and t.requires_grad))
    return out


def same_structure(models: Sequence[nn.Module]) -> str | None:
    """None when every model has the first one's :func:`structure`, else the first difference, in words."""
    first = structure(models[0])
    for k, m in enumerate(models[1:], 1):
        other = structure(m)
        for a, b in zip(first, other):
            if a != b:
                return f"run {k} differs from run 0 at {a[0] or 'the top module'} ({a[1:]} vs {b[1:]})"
        if len(first) != len(other):
            return f"run {k} has {len(other)} modules and tensors, run 0 has {len(first)}"
    return None


@dataclass(frozen=True)
class _Slot:
    name: str
    shape: tuple[int, ...]
    start: int          # parameters: the first column in flat; buffers: the first element of the block
    numel: int          # elements of one run


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return (model.get_submodule(path) if path else model), leaf


class FlatStack:
    """The parameters and buffers of ``modules`` (one structure, :func:`same_structure`) stacked run-first.

    Each module's parameters and buffers are replaced by views of its run's slices (:meth:`attach`);
    the values are copied in once. ``template`` is a copy of the first module that the stack's forward
    calls with the stacked tensors (the runs' own modules never run forward)."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        why = same_structure(modules)
        if why is not None:
            raise ConfigError(f"runs of a stacked group must build models of one structure: {why}")
        first = modules[0]
        params = [(n, p) for n, p in first.named_parameters() if p.requires_grad]
        frozen = [n for n, p in first.named_parameters() if not p.requires_grad]
        if frozen:
            raise ConfigError(f"stacking trains every parameter, but {frozen[0]} is frozen (requires_grad=False): "
                              "train them alone (in a comparison: launch.stack: off)")
        dtypes = {p.dtype for _, p in params}
        if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
            raise ConfigError(f"stacking needs parameters of one floating dtype, this model has {sorted(map(str, dtypes))}")
        self.k = len(modules)
        self.device = params[0][1].device
        dtype = params[0][1].dtype
        self.pslots: list[_Slot] = []
        col = 0
        for n, p in params:
            self.pslots.append(_Slot(n, tuple(p.shape), col, p.numel()))
            col += p.numel()
        self.flat = torch.empty(self.k, col, dtype=dtype, device=self.device)
        with torch.no_grad():
            for k, m in enumerate(modules):
                named = dict(m.named_parameters())
                for s in self.pslots:
                    self.flat[k, s.start:s.start + s.numel].copy_(named[s.name].reshape(-1))
        self.grad = torch.zeros_like(self.flat)
        self.momentum = torch.zeros_like(self.flat)
        self.fslots, self.islots = self._buffer_slots(first, floating=True), self._buffer_slots(first, floating=False)
        self.bflat = self._stack_buffers(modules, self.fslots, torch.float32)
        self.iflat = self._stack_buffers(modules, self.islots, torch.int64)
        self.brun, self.irun = self._run_index(self.fslots), self._run_index(self.islots)
        self._make_views()
        import copy
        self.template = copy.deepcopy(first)
        self.modules = list(modules)
        self.attach()

    # -- layout --------------------------------------------------------------------------------
    @staticmethod
    def _buffer_slots(model: nn.Module, floating: bool) -> list[_Slot]:
        slots, at = [], 0
        for n, b in model.named_buffers():
            if b is None or b.is_floating_point() != floating:
                continue
            slots.append(_Slot(n, tuple(b.shape), at, b.numel()))
            at += b.numel()  # per run; the block of K runs is K times that
        return slots

    def _stack_buffers(self, modules: Sequence[nn.Module], slots: list[_Slot], dtype: torch.dtype) -> torch.Tensor:
        first = dict(modules[0].named_buffers())
        if slots:
            dtype = first[slots[0].name].dtype
            if any(first[s.name].dtype != dtype for s in slots):
                raise ConfigError("stacking needs the model's floating (and integer) buffers of one dtype each")
        blocks = [torch.stack([dict(m.named_buffers())[s.name].detach().reshape(-1) for m in modules]).reshape(-1)
                  for s in slots]
        return torch.cat(blocks) if blocks else torch.empty(0, dtype=dtype, device=self.device)

    def _run_index(self, slots: list[_Slot]) -> torch.Tensor:
        runs = torch.arange(self.k, device=self.device)
        parts = [runs.repeat_interleave(s.numel) for s in slots]
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long, device=self.device)

    def _make_views(self) -> None:
        self.params: dict[str, torch.Tensor] = {}
        for s in self.pslots:
            p = self.flat[:, s.start:s.start + s.numel].view(self.k, *s.shape).detach().requires_grad_()
            p.grad = self.grad[:, s.start:s.start + s.numel].view(self.k, *s.shape)
            self.params[s.name] = p
        self.buffers: dict[str, torch.Tensor] = {}
        for flat, slots in ((self.bflat, self.fslots), (self.iflat, self.islots)):
            for s in slots:
                start = s.start * self.k
                self.buffers[s.name] = flat[start:start + s.numel * self.k].view(self.k, *s.shape)

    def attach(self) -> None:
        """Point every run's module at its slices: each parameter object is kept (an optimizer built on the module
        still holds it) and its data becomes a view of the stack; buffers are replaced by views."""
        for k, m in enumerate(self.modules):
            named = dict(m.named_parameters())  # tied parameters appear once
            for s in self.pslots:
                named[s.name].data = self.flat[k, s.start:s.start + s.numel].view(s.shape)
            for name, _ in m.named_buffers(remove_duplicate=False):
                if name in self.buffers:
                    owner, leaf = _owner(m, name)
                    owner._buffers[leaf] = self.buffers[name][k]

    # -- optimizer state -----------------------------------------------------------------------
    def momentum_views(self, k: int) -> dict[str, torch.Tensor]:
        """Run ``k``'s momentum buffer of each parameter (views of ``momentum``), by parameter name."""
        return {s.name: self.momentum[k, s.start:s.start + s.numel].view(s.shape) for s in self.pslots}

    def column_values(self, value_of: dict[str, float]) -> torch.Tensor:
        """A ``(1, N)`` row holding ``value_of[name]`` in each parameter's columns (its weight decay)."""
        row = torch.empty(1, self.flat.shape[1], dtype=self.flat.dtype, device=self.device)
        for s in self.pslots:
            row[0, s.start:s.start + s.numel] = value_of[s.name]
        return row

    # -- state as a whole ----------------------------------------------------------------------
    def state(self) -> list[torch.Tensor]:
        """Every tensor a training step changes (what a warm-up before a graph capture must put back)."""
        return [self.flat, self.momentum, self.bflat, self.iflat]

    def keep(self, runs: Sequence[int]) -> None:
        """Keep only ``runs`` (indices into the current stack, in order): a run that stopped leaves the group.
        The kept modules are re-attached to the new, smaller tensors; the others keep their last values."""
        index = torch.tensor(list(runs), dtype=torch.long, device=self.device)
        self.flat, self.momentum = self.flat.index_select(0, index), self.momentum.index_select(0, index)
        self.grad = torch.zeros_like(self.flat)

        def select(flat: torch.Tensor, slots: list[_Slot]) -> torch.Tensor:
            blocks = [flat[s.start * self.k:(s.start + s.numel) * self.k].view(self.k, -1).index_select(0, index).reshape(-1)
                      for s in slots]
            return torch.cat(blocks) if blocks else flat[:0]

        self.bflat, self.iflat = select(self.bflat, self.fslots), select(self.iflat, self.islots)
        self.modules = [self.modules[i] for i in runs]
        self.k = len(runs)
        self.brun, self.irun = self._run_index(self.fslots), self._run_index(self.islots)
        self._make_views()
        self.attach()
