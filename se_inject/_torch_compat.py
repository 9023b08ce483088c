"""The private PyTorch APIs se-inject relies on, behind one door.

Everything here is a private name of torch (a leading underscore, or a module torch does not
document), used because no public API does the job. Each entry says what it is for. On a torch
upgrade, ``tests/test_torch_compat.py`` runs :func:`check`, which fails loudly naming every entry
that moved or changed behaviour, instead of a planning or export error far from the cause.

    >>> check()   # [] on the pinned torch: nothing moved
    []
"""
from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree  # torch's pytree: the exporters' output order (no public twin)
from torch import nn

__all__ = ["pytree", "CodeOnlyModule", "format_import_block", "forward_from_src", "sys_importer", "MODULE_STATE",
           "qualified_name", "drop_dotted_wraps", "plain_codegen", "FX_ASSERT_IS_NONE", "traceable_assert",
           "fake_tensor_mode", "size_oblivious_export", "version_of",
           "ConvNd", "NormBase", "holds_data", "is_interpreted", "declare_op_kernels", "check"]

# ---- torch.fx.graph_module: rebuilding a GraphModule from its generated code (pickling, deepcopy),
# as torch's own GraphModule.__reduce__/__deepcopy__ do.
from torch.fx.graph_module import _CodeOnlyModule as CodeOnlyModule  # noqa: E402
from torch.fx.graph_module import _format_import_block as format_import_block  # noqa: E402
from torch.fx.graph_module import _forward_from_src as forward_from_src  # noqa: E402
from torch.package import sys_importer  # noqa: E402

#: nn.Module's private slots that GraphModule.__init__ rebuilds from the graph alone; a rewritten
#: owner takes them whole from the module it replaces (its children, hooks, state-dict hooks).
MODULE_STATE = ("_modules", "_parameters", "_buffers", "_non_persistent_buffers_set", "training",
                "_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks",
                "_backward_pre_hooks", "_state_dict_hooks", "_state_dict_pre_hooks",
                "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks", "_is_full_backward_hook")

#: layer base classes (no public base class covers Conv1d/2d/3d and the transposed ones, or the norms)
ConvNd = nn.modules.conv._ConvNd
NormBase = nn.modules.batchnorm._NormBase


def qualified_name(target: Any) -> str:
    """fx's dotted name of a call target (``torch.fx._symbolic_trace._assert_is_none``)."""
    try:
        return fx.node._get_qualified_name(target)
    except Exception:
        return getattr(target, "__name__", "")


def drop_dotted_wraps() -> None:
    """Remove fx's process-wide registrations of dotted wrapped names.

    fx marks wrapped calls so that generated code re-registers them with ``wrap("name")``; for a
    torch function the name is dotted (``torch.fx._symbolic_trace._assert_is_none``, emitted for a
    specialised ``None`` argument), and that registration breaks every later fx trace in the
    process with a KeyError (torch 2.14). Only such entries are removed; the registry is untouched
    when it holds none.
    """
    from torch.fx import _symbolic_trace as st
    dotted = [k for k in st._wrapped_fns_to_patch if "." in k[1]]
    for key in dotted:
        del st._wrapped_fns_to_patch[key]


def plain_codegen(graph: fx.Graph) -> bool:
    """Give ``graph`` fx's plain code generator where a concrete argument without leaves (an empty
    ``**kwargs``) made fx wrap it in pytree flattening (``_PyTreeCodeGen``): that code is invalid
    Python (an empty target list, torch 2.14) and adds nothing when every input is one placeholder.
    The output, flattened for that generator, is built again from its spec. Whether it was done
    (False: a graph whose inputs really are nested keeps its generator)."""
    codegen = graph._codegen
    info = getattr(codegen, "pytree_info", None)
    if not isinstance(codegen, fx.graph._PyTreeCodeGen) or info is None:
        return False
    specs = info.in_spec.children() if info.in_spec is not None else []
    if any(not (spec.is_leaf() or spec.num_leaves == 0) for spec in specs):
        return False
    output = next(n for n in reversed(graph.nodes) if n.op == "output")
    if info.out_spec is not None:
        output.args = (pytree.tree_unflatten(list(output.args[0]), info.out_spec),)
    graph._codegen = fx.graph.CodeGen()
    return True


#: what fx calls in a graph for an argument specialised to ``None`` (``concrete_args``); its
#: ``value: object`` annotation is one TorchScript cannot read (tracing.assert_is_none replaces it)
from torch.fx._symbolic_trace import _assert_is_none as FX_ASSERT_IS_NONE  # noqa: E402
#: the assert fx writes for an argument fixed to a value, which fx records and TorchScript compiles
traceable_assert = torch._assert


def fake_tensor_mode() -> Any:
    """A FakeTensorMode that accepts real tensors (the model's weights) as inputs."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    return FakeTensorMode(allow_non_fake_inputs=True)


@contextlib.contextmanager
def size_oblivious_export() -> Iterator[None]:
    """What torch.onnx's own capture does to keep a size-1 dim (batch 1) dynamic in torch.export."""
    import torch.fx.experimental._config as fx_config
    with fx_config.patch(backed_size_oblivious=True):
        yield


def version_of(t: torch.Tensor) -> int:
    """A tensor's in-place write counter (no public accessor): a forward that wrote into a buffer."""
    return t._version


# ---- the fused kernels (se_inject.ops)

def holds_data(*tensors: torch.Tensor | None) -> bool:
    """True when every tensor is a plain tensor with real storage and no dispatch mode is active.

    Triton's interpreter reads tensors through NumPy, so it cannot run on the fake/functional
    tensors that ``torch.compile`` and ``register_fake`` trace with; those take the PyTorch twin.
    """
    from torch.utils._python_dispatch import is_in_torch_dispatch_mode
    if is_in_torch_dispatch_mode():
        return False
    return all(t is None or type(t) is torch.Tensor for t in tensors)


def is_interpreted(kernel: object) -> bool:
    """True when ``@triton.jit`` made an interpreter function (``TRITON_INTERPRET=1`` at import)."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:
        return False
    return isinstance(kernel, InterpretedFunction)


def declare_op_kernels(op_name: str, kernels: tuple) -> None:
    """Tell torch which Triton kernels a ``triton_op`` launches.

    ``triton_op`` finds them by reading the op's source for ``wrap_triton(name)`` calls, which does
    not see through our launchers; AOTAutograd's cache hashes the kernels it lists, so without this
    an edited kernel could be served from a stale compiled artifact. A no-op on torch releases
    without that table (the GPU machines' 2.11).
    """
    import torch._library.triton as triton_lib
    table = getattr(triton_lib, "triton_ops_to_kernels", None)
    if table is not None:
        table[op_name] = list(kernels)


class _SpecialisedNone(nn.Module):
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return x


def check() -> list[str]:
    """What moved or changed in this torch, one line each ([] when everything is where it was)."""
    problems = []
    try:
        probe = nn.Module()
        missing = [k for k in MODULE_STATE if k not in probe.__dict__ and k != "_is_full_backward_hook"]
        if missing:
            problems.append(f"nn.Module no longer has the private slots {missing} (graph_module.OwnerGraphModule)")
        extra = [k for k in probe.__dict__ if k.startswith("_") and k not in MODULE_STATE]
        if extra:
            problems.append(f"nn.Module has new private slots {extra}: add them to MODULE_STATE if a rewritten "
                            "owner must keep them")
    except Exception as e:  # pragma: no cover - a broken torch
        problems.append(f"nn.Module(): {e}")
    try:
        qualified_name(torch.add)
        from torch.fx import _symbolic_trace as st
        if not isinstance(st._wrapped_fns_to_patch, dict):
            problems.append("torch.fx._symbolic_trace._wrapped_fns_to_patch is no longer a dict (drop_dotted_wraps)")
    except Exception as e:
        problems.append(f"fx private names moved: {type(e).__name__}: {e}")
    if not (hasattr(fx.graph, "_PyTreeCodeGen") and hasattr(fx.graph._PyTreeCodeGen, "gen_fn_def")):
        problems.append("torch.fx.graph._PyTreeCodeGen moved (plain_codegen)")
    try:
        with fake_tensor_mode():
            torch.empty(2)
    except Exception as e:
        problems.append(f"FakeTensorMode(allow_non_fake_inputs=True) fails: {e}")
    try:
        with size_oblivious_export():
            pass
    except Exception as e:
        problems.append(f"torch.fx.experimental._config.backed_size_oblivious is gone: {e}")
    try:
        t = torch.zeros(1)
        v = version_of(t)
        t.add_(1)
        if version_of(t) == v:
            problems.append("Tensor._version no longer counts in-place writes (preserve.py)")
    except Exception as e:
        problems.append(f"Tensor._version: {e}")
    if not (issubclass(nn.Conv3d, ConvNd) and issubclass(nn.BatchNorm2d, NormBase)):
        problems.append("nn.modules.conv._ConvNd / batchnorm._NormBase no longer the layer base classes")
    try:
        pytree.tree_flatten_with_path({"a": 1})
        pytree.keystr(((pytree.MappingKey("a")),))
    except Exception as e:
        problems.append(f"torch.utils._pytree path API changed: {e}")
    try:
        holds_data(torch.zeros(1))
        importlib.import_module("torch._library.triton")
    except Exception as e:
        problems.append(f"the kernels' private torch names moved (holds_data / torch._library.triton): {e}")
    try:
        graph = fx.Tracer().trace(_SpecialisedNone(), concrete_args={"mask": None})
        if not any(n.target is FX_ASSERT_IS_NONE for n in graph.nodes):
            problems.append("fx no longer asserts a None-specialised argument with _assert_is_none "
                            "(tracing._scriptable_specialisations)")
    except Exception as e:
        problems.append(f"fx concrete_args=None tracing changed: {e}")
    for name in ("CodeOnlyModule", "format_import_block", "forward_from_src"):
        if globals().get(name) is None:
            problems.append(f"torch.fx.graph_module.{name} is gone")
    return problems
