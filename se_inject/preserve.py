"""Leave a model exactly as it was: undo whatever a forward pass did to the objects it can reach.

Planning runs the user's model on stand-in tensors (meta, fake) and se-inject's own checks run the
rewritten model once. A forward may rebind plain attributes while it runs: torchvision's
``AnchorGenerator`` replaces its ``cell_anchors`` list on every call, so after a pass on fake
tensors the model held a ``FakeTensor`` and its next real forward failed (issue 10). Parameters,
buffers and the state dict were unchanged, so no key check saw it.

:func:`preserved` snapshots every object reachable from the model (modules, registered or held in
plain attributes; the containers and plain objects they hold) and, on leaving, puts back every
attribute binding, every container's content and the value of every buffer and loose tensor a
forward changed in place, success or failure:

    >>> import torch
    >>> from torch import nn
    >>> class Cache(nn.Linear):
    ...     def forward(self, x):
    ...         self.last = [x]                      # rebinds an attribute while it runs
    ...         return super().forward(x)
    >>> m = Cache(2, 2)
    >>> m.last = []
    >>> before = m.last
    >>> with preserved(m):
    ...     _ = m(torch.zeros(1, 2))
    >>> m.last is before and m.last == []
    True

Parameters are not copied (they may be gigabytes): a forward that writes into its own weights is
reported by :func:`preserved` as an error instead of being silently kept.
"""
from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ._torch_compat import version_of
from .errors import SEInjectError

__all__ = ["preserved", "Snapshot"]

#: values that hold no state of their own worth walking into
_ATOMIC = (str, bytes, int, float, complex, bool, type(None), type, types.FunctionType, types.BuiltinFunctionType,
           types.MethodType, types.ModuleType, torch.dtype, torch.device, torch.memory_format, torch.layout)
#: how far below a module the walk follows plain (non-module) objects
_PLAIN_DEPTH = 3


class Snapshot:
    """The state of every object reachable from ``root``; :meth:`restore` puts it back."""

    def __init__(self, root: nn.Module) -> None:
        self._objects: dict[int, tuple[Any, str, Any]] = {}   # id -> (object, kind, saved state)
        self._tensors: dict[int, tuple[torch.Tensor, int, torch.Tensor | None]] = {}  # id -> (t, version, copy)
        self._walk(root, 0)

    def _walk(self, root: Any, depth: int) -> None:
        stack = [(root, depth)]
        while stack:
            obj, depth = stack.pop()
            key = id(obj)
            if isinstance(obj, _ATOMIC) or key in self._objects or key in self._tensors:
                continue
            if isinstance(obj, torch.Tensor):
                if obj.is_inference():
                    continue  # no version counter, and no write into it outside inference mode
                # a forward may write into a buffer or a cached tensor: keep a copy to put back
                copy = None if isinstance(obj, nn.Parameter) else obj.detach().clone()
                self._tensors[key] = (obj, version_of(obj), copy)
                continue
            if isinstance(obj, nn.Module):
                self._objects[key] = (obj, "object", (obj.__class__, dict(obj.__dict__)))
                stack += [(v, 0) for v in obj.__dict__.values()]
            elif isinstance(obj, list):
                self._objects[key] = (obj, "list", list(obj))
                stack += [(v, depth) for v in obj]
            elif isinstance(obj, dict):
                self._objects[key] = (obj, "dict", list(obj.items()))
                stack += [(v, depth) for v in obj.values()]
            elif isinstance(obj, set):
                self._objects[key] = (obj, "set", set(obj))
            elif isinstance(obj, (tuple, frozenset)):
                self._objects[key] = (obj, "immutable", None)
                stack += [(v, depth) for v in obj]
            elif hasattr(obj, "__dict__") and isinstance(getattr(obj, "__dict__", None), dict) and depth < _PLAIN_DEPTH:
                # a plain helper object (torchvision's BoxCoder, a config): one more level of state
                self._objects[key] = (obj, "object", (obj.__class__, dict(obj.__dict__)))
                stack += [(v, depth + 1) for v in obj.__dict__.values()]

    def restore(self) -> None:
        """Put every binding, container and changed buffer back; raise if a parameter was written."""
        for obj, kind, state in self._objects.values():
            if kind == "object":
                cls, attrs = state
                if obj.__class__ is not cls:
                    obj.__class__ = cls
                current = obj.__dict__
                for k in [k for k in current if k not in attrs]:
                    del current[k]
                for k, v in attrs.items():
                    if k not in current or current[k] is not v:
                        current[k] = v
            elif kind == "list":
                if len(obj) != len(state) or any(a is not b for a, b in zip(obj, state)):
                    obj[:] = state
            elif kind == "dict":
                if len(obj) != len(state) or any(k not in obj or obj[k] is not v for k, v in state):
                    obj.clear()
                    obj.update(state)
            elif kind == "set" and obj != state:
                obj.clear()
                obj.update(state)
        written = []
        for t, version, copy in self._tensors.values():
            if version_of(t) == version:
                continue
            if copy is None:
                written.append(tuple(t.shape))
                continue
            with torch.no_grad():
                if t.shape == copy.shape:
                    t.copy_(copy)
                else:
                    t.set_(copy)
        if written:
            raise SEInjectError(f"the model's forward wrote into {len(written)} of its own parameters (shapes "
                                f"{written[:3]}) while se-inject ran it; run se-inject on a copy of the model")


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[Snapshot]:
    """Everything reachable from ``model`` is as it was when the block exits, whatever happened in it."""
    snap = Snapshot(model)
    try:
        yield snap
    finally:
        snap.restore()
