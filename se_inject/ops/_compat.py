"""The private torch and Triton APIs ``se_inject.ops`` relies on, behind one door.

Each is a one-line check; ``tests/test_ops.py::test_private_apis_exist`` fails loudly on an
upgrade that moves one, instead of a dispatch quietly taking the wrong path.
"""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

__all__ = ["holds_data", "is_interpreted", "declare_op_kernels"]


def holds_data(*tensors: torch.Tensor | None) -> bool:
    """True when every tensor is a plain tensor with real storage and no dispatch mode is active.

    Triton's interpreter reads tensors through NumPy, so it cannot run on the fake/functional
    tensors that ``torch.compile`` and ``register_fake`` trace with; those take the PyTorch twin.
    """
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
    an edited kernel could be served from a stale compiled artifact.
    """
    import torch._library.triton as triton_lib
    table = getattr(triton_lib, "triton_ops_to_kernels", None)  # torch releases without the cache
    if table is not None:
        table[op_name] = list(kernels)
