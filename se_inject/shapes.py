"""Shapes without compute: one forward pass of a model on stand-in tensors, with every call recorded.

Backends, tried in order: ``meta`` (the model's weights are swapped for meta tensors for the pass: no
compute, no memory), ``fake`` (FakeTensorMode over the real weights), ``real`` (a real batch-1 pass
in eval mode, for models that create tensors on a fixed device inside their forward). The pass runs
in eval mode and every module's own ``training`` flag is restored afterwards.

    >>> import timm
    >>> forward_shapes(timm.create_model("resnet18"), (3, 64, 64))
    (1, 1000)
"""
from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.func import functional_call

from ._torch_compat import ConvNd, fake_tensor_mode, pytree
from .errors import first_line
from .modes import eval_mode

__all__ = ["Call", "BACKENDS", "record_calls", "annotate_shapes", "forward_shapes", "shapes_of", "eval_mode",
           "model_device", "default_input_size", "check_input_size", "expected_input", "first_line"]


@dataclass
class Call:
    """The first call of a module during the shape pass."""
    order: int                    # position among the model's module calls (execution order)
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: Any = None
    count: int = 1                # how many times the module ran during the pass



#: the input a net of each input rank is planned at when it names none: images 224x224, 1-D signals
#: of 16,000 samples (one second at 16 kHz), clips of 16 frames of 112x112 (torchvision's video nets).
DEFAULT_SPATIAL = {1: (16000,), 2: (224, 224), 3: (16, 112, 112)}


def _first_conv(model: nn.Module) -> ConvNd | None:
    return next((m for m in model.modules() if isinstance(m, ConvNd)), None)


def _config_input_size(model: nn.Module) -> tuple[int, ...] | None:
    """A transformers model's ``config.image_size`` and ``num_channels`` (of its vision part in CLIP-like
    configs), as ``(C, H, W)``; None for other models."""
    if not type(model).__module__.startswith("transformers."):
        return None
    config = getattr(model, "config", None)
    for cfg in (config, getattr(config, "vision_config", None)):
        side, chans = getattr(cfg, "image_size", None), getattr(cfg, "num_channels", None)
        if isinstance(side, int) and not isinstance(side, bool):
            side = (side, side)
        if (isinstance(side, (tuple, list)) and len(side) == 2 and all(isinstance(s, int) and s > 0 for s in side)
                and isinstance(chans, int) and chans > 0):
            return (chans, *side)
    return None


def default_input_size(model: nn.Module) -> tuple[int, ...]:
    """``pretrained_cfg['input_size']`` (timm), else a transformers model's ``config.image_size``, else
    what the first convolution takes (its input channels and rank, at :data:`DEFAULT_SPATIAL`), else
    ``(3, 224, 224)``.

        >>> from torch import nn
        >>> default_input_size(nn.Sequential(nn.Conv1d(2, 8, 3), nn.ReLU()))
        (2, 16000)
    """
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    if size:
        return tuple(int(s) for s in size)
    size = _config_input_size(model)
    if size:
        return size
    conv = _first_conv(model)
    if conv is not None and len(conv.kernel_size) in DEFAULT_SPATIAL:
        return (int(conv.in_channels), *DEFAULT_SPATIAL[len(conv.kernel_size)])
    return (3, 224, 224)


def expected_input(model: nn.Module) -> str:
    """What input the model's first convolution asks for, as a hint for error messages."""
    conv = _first_conv(model)
    if conv is None:
        return "input_size is the input's shape without the batch, e.g. (3, 224, 224)"
    rank = len(conv.kernel_size)
    names = {1: "(C, L)", 2: "(C, H, W)", 3: "(C, T, H, W)"}.get(rank, f"{rank + 1} sizes")
    example = (int(conv.in_channels), *DEFAULT_SPATIAL.get(rank, (224,) * rank))
    return f"its first layer is a {type(conv).__name__} taking {conv.in_channels} channels: input_size is {names}, e.g. {example}"


def check_input_size(input_size: Any, model: nn.Module) -> tuple[int, ...]:
    """``input_size`` as a tuple of 2 to 4 positive ints, or a :class:`TraceError` that says what is expected
    (a size the model then rejects is reported by the forward that fails, with the same hint)."""
    from .errors import TraceError
    try:
        size = tuple(input_size)
    except TypeError:
        size = None
    if (size is None or not 2 <= len(size) <= 4
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
        raise TraceError(f"input_size={input_size!r} is not the input's shape without the batch: {expected_input(model)}")
    return size



class _Backend:
    """Runs modules on stand-in tensors. ``meta``: weights swapped for meta tensors;
    ``fake``: FakeTensorMode over the real weights; ``real``: a real batch-1 pass (last resort)."""

    name = "real"

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def context(self) -> contextlib.AbstractContextManager[Any]:
        return torch.no_grad()

    def input(self, size: tuple[int, ...], device: torch.device) -> torch.Tensor:
        return torch.zeros(size, device=device)

    def run_module(self, path: str, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return module(*args, **kwargs)

    def attr(self, qualified_name: str, value: Any) -> Any:
        return value


class _MetaBackend(_Backend):
    name = "meta"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
        self.state = {k: torch.empty_like(v, device="meta") for k, v in named}
        self.identity = {k: id(v) for k, v in named}  # a shared module has several names per tensor

    def input(self, size: tuple[int, ...], device: torch.device) -> torch.Tensor:
        return torch.empty(size, device="meta")

    def _substate(self, path: str) -> dict[str, torch.Tensor]:
        """The stand-ins under ``path``, one name per tensor: swapping a shared tensor twice would
        restore it to the first stand-in, leaving the real model with meta weights."""
        prefix = f"{path}." if path else ""
        out, seen = {}, set()
        for k, v in self.state.items():
            if k.startswith(prefix) and self.identity[k] not in seen:
                seen.add(self.identity[k])
                out[k[len(prefix):]] = v
        return out

    def run_module(self, path: str, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return functional_call(module, self._substate(path), args, kwargs, tie_weights=False, strict=False)

    def attr(self, qualified_name: str, value: Any) -> Any:
        if qualified_name in self.state:
            return self.state[qualified_name]
        if isinstance(value, torch.Tensor):
            return torch.empty_like(value, device="meta")
        return value


class _FakeBackend(_Backend):
    name = "fake"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.mode = fake_tensor_mode()

    def context(self) -> contextlib.AbstractContextManager[Any]:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad())
        stack.enter_context(self.mode)
        return stack

    def input(self, size: tuple[int, ...], device: torch.device) -> torch.Tensor:
        with self.mode:
            return torch.empty(size, device=device)


BACKENDS: dict[str, type[_Backend]] = {"meta": _MetaBackend, "fake": _FakeBackend, "real": _Backend}



def model_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def record_calls(model: nn.Module, backend: _Backend, x: torch.Tensor) -> dict[str, Call]:
    calls: dict[str, Call] = {}
    counter = iter(range(1 << 62))
    handles = []

    def pre_hook(path: str):
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            order = next(counter)
            if path in calls:
                calls[path].count += 1
            else:
                # copy the containers: DenseNet passes a list that the caller appends to afterwards
                calls[path] = Call(order, pytree.tree_map(lambda v: v, args), pytree.tree_map(lambda v: v, dict(kwargs)))
        return hook

    def post_hook(path: str):
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            if calls[path].output is None:
                calls[path].output = output
        return hook

    for path, module in model.named_modules(remove_duplicate=False):
        handles.append(module.register_forward_pre_hook(pre_hook(path), with_kwargs=True))
        handles.append(module.register_forward_hook(post_hook(path), with_kwargs=True))
    try:
        with backend.context():
            backend.run_module("", model, (x,), {})
    finally:
        for h in handles:
            h.remove()
    return calls


class _ShapeInterpreter(fx.Interpreter):
    """Runs an owner's graph on stand-in tensors, writing ``node.meta['shape']``. A child that ran
    exactly once in the model pass is not run again: its recorded output is reused."""

    def __init__(self, module: nn.Module, graph: fx.Graph, path: str, backend: _Backend,
                 calls: dict[str, Call], constants: dict[str, torch.Tensor]) -> None:
        super().__init__(module, garbage_collect_values=False, graph=graph)
        self.path, self.backend, self.calls, self.constants = path, backend, calls, constants

    def _qualified(self, target: str) -> str:
        return f"{self.path}.{target}" if self.path else target

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        n.meta["shape"] = tuple(out.shape) if isinstance(out, torch.Tensor) else None
        return out

    def get_attr(self, target: str, args: Any, kwargs: Any) -> Any:
        constant = self.constants.get(target)
        value = constant if constant is not None else super().get_attr(target, args, kwargs)
        return self.backend.attr(self._qualified(target), value)

    def call_module(self, target: str, args: Any, kwargs: Any) -> Any:
        qualified = self._qualified(target)
        call = self.calls.get(qualified)
        if call is not None and call.count == 1 and call.output is not None:
            return call.output
        return self.backend.run_module(qualified, self.fetch_attr(target), args, kwargs)


def bound_args(module: nn.Module, call: Call) -> tuple[Any, ...]:
    """A recorded call's arguments, positional, defaults filled in (as fx placeholders expect them)."""
    bound = inspect.signature(module.forward).bind(*call.args, **call.kwargs)
    bound.apply_defaults()
    return tuple(bound.arguments.values())


def shapes_of(tree: Any) -> Any:
    """The same structure with every tensor replaced by its shape tuple."""
    return pytree.tree_map(lambda t: tuple(t.shape) if isinstance(t, torch.Tensor) else t, tree)


def forward_shapes(model: nn.Module, input_size: tuple[int, ...], backend: str = "meta") -> Any:
    """Output shapes of one batch-1 forward on the given backend, in eval mode (model untouched)."""
    chosen = BACKENDS[backend](model)
    with eval_mode(model), chosen.context():
        out = chosen.run_module("", model, (chosen.input((1, *input_size), model_device(model)),), {})
    return shapes_of(out)


def annotate_shapes(module: nn.Module, graph: fx.Graph, path: str, backend: "_Backend", calls: dict[str, Call],
                    constants: dict[str, torch.Tensor] | None = None) -> None:
    """Interpret ``graph`` (``module``'s own forward, reading ``constants``) with the arguments it
    received in the recorded pass, writing ``node.meta["shape"]`` on every node."""
    with backend.context():
        _ShapeInterpreter(module, graph, path, backend, calls, constants or {}).run(*bound_args(module, calls[path]))
