"""Passes over an exported ONNX graph that make it readable, and :func:`se_nodes` to read it back.

Node names. Both exporters lose the module path in node names: the dynamo exporter names nodes after the
FX node (``node_linear_1``) and keeps the path only in metadata; the TorchScript exporter writes
``/layer1/layer1.0/se/act/Relu``. After :func:`name_nodes` every node is ``<module path>/<op>``:

    layer1.0.se/mean          ReduceMean
    layer1.0.se/linear        Gemm
    layer1.0.se.act/relu      Relu
    layer1.0.se/linear_1      Gemm
    layer1.0.se.gate/sigmoid  Sigmoid
    layer1.0.se/addcmul/Mul   Mul      (one FX node -> two ONNX nodes: op type appended)
    layer1.0.se/addcmul/Add   Add

so typing ``layer1.0.se`` in Netron's search box (Ctrl+F) lists the block. Nodes at the root
module are ``/<op>``. :func:`se_nodes` reads the same names back::

    >>> se_nodes("se_resnet18.onnx")["layer1.0.se"]      # doctest: +SKIP
    ['ReduceMean', 'Gemm', 'Relu', 'Gemm', 'Sigmoid', 'Unsqueeze', 'Mul', 'Add', 'Relu']

Weights. :func:`fold_weight_reshapes` folds SqueezeExcite's ``w.reshape(out, in)`` into the weight
(the exporter's optimiser stops at 8192 elements) and :func:`name_folded_weights` gives the folded
weight its parameter's name back. :func:`name_batch_dim` calls torch.export's ``s77`` ``batch``.
"""
from __future__ import annotations

import ast
import json
import os
from collections import Counter
from collections.abc import Iterable

from ._extras import require

__all__ = ["se_nodes", "name_nodes", "name_scoped_nodes", "name_folded_weights", "name_batch_dim",
           "fold_weight_reshapes", "SE_BLOCKS_KEY"]

#: model metadata key listing the SqueezeExcite module paths of the exported model (a JSON list).
SE_BLOCKS_KEY = "se_inject.se_blocks"
#: aten ops whose result on a parameter gets folded into a new, FX-named initializer ...
_RESHAPES = ("view", "reshape", "_unsafe_view", "flatten")
#: ... and the ONNX ops they become.
_SHAPE_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")
#: dynamo exporter node metadata: the module path stack, ending with the FX node name.
_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
_CLASSES_KEY = "pkg.torch.onnx.class_hierarchy"


def _literal(raw: str | None) -> list:
    """The list in a ``"['', 'layer1', ...]"`` metadata string, ``[]`` when absent or malformed."""
    try:
        value = ast.literal_eval(raw) if raw else []
    except (ValueError, SyntaxError):
        return []
    return value if isinstance(value, list) else []


def _unique(name: str, taken: set[str]) -> str:
    candidate, i = name, 1
    while candidate in taken:
        i += 1
        candidate = f"{name}_{i}"
    taken.add(candidate)
    return candidate


def _all_nodes(graph) -> list:
    import onnx_ir as ir
    return list(ir.traversal.RecursiveGraphIterator(graph))


def name_nodes(graph) -> int:
    """Rename a dynamo-exported ``onnx_ir`` graph's nodes to ``<module path>/<fx node>``; returns count.

    The path comes from the exporter's ``pkg.torch.onnx.name_scopes`` metadata; nodes without it
    (added by the optimiser) keep their names.
    """
    nodes = _all_nodes(graph)
    scoped: list[tuple[object, str, str]] = []
    for node in nodes:
        scopes = _literal(node.metadata_props.get(_SCOPES_KEY))
        if scopes:
            scoped.append((node, scopes[-2] if len(scopes) > 1 else "", scopes[-1]))
    per_fx = Counter((scope, fx) for _, scope, fx in scoped)
    renamed = {id(node) for node, _, _ in scoped}
    taken = {n.name for n in nodes if id(n) not in renamed and n.name}
    for node, scope, fx in scoped:
        base = f"{scope}/{fx}" if per_fx[scope, fx] == 1 else f"{scope}/{fx}/{node.op_type}"
        node.name = _unique(base, taken)
    return len(scoped)


def name_scoped_nodes(graph, module_paths: Iterable[str]) -> int:
    """Rename TorchScript-exported nodes ``/layer1/layer1.0/se/act/Relu`` -> ``layer1.0.se.act/Relu``.

    TorchScript scopes are attribute names (``se``), except that a container's children are
    ``<container scope>.<index>`` (``layer1.0``); nodes whose rebuilt path is not one of
    ``module_paths`` keep their names.
    """
    known = set(module_paths)
    nodes = _all_nodes(graph)
    taken = {n.name for n in nodes if n.name}
    count = 0
    for node in nodes:
        parts = (node.name or "").split("/")
        if len(parts) < 3 or parts[0] != "":
            continue  # unscoped ("Constant_31") or root ("/ReduceMean"): already fine
        path, prev = "", ""
        for part in parts[1:-1]:
            # a Sequential/ModuleList child's scope is "<its container's scope>.<index>"
            name = part[len(prev) + 1:] if prev and part.startswith(prev + ".") else part
            path, prev = f"{path}.{name}" if path else name, part
        if path not in known:
            continue
        taken.discard(node.name)
        node.name = _unique(f"{path}/{parts[-1]}", taken)
        count += 1
    return count


def fold_weight_reshapes(model) -> None:
    """Fold Reshape/Flatten/(Un)Squeeze of a weight used nowhere else into the weight itself.

    SqueezeExcite runs its 1x1-conv weights as ``F.linear(s, w.reshape(out, in))``; the exporter's
    optimiser folds that reshape only for weights of at most 8192 elements, leaving a Reshape node
    before each FC of larger blocks (ResNet-50's 512 -> 32 and up). Folding it costs no size (the
    original weight goes away), and onnxruntime would fold it at load time anyway.
    """
    import onnx_ir as ir
    from onnxscript.optimizer import fold_constants

    def should_fold(node) -> bool | None:
        if node.domain == "" and node.op_type in _SHAPE_OPS and node.inputs and node.inputs[0] is not None:
            data = node.inputs[0]
            if data.is_initializer() and len(data.uses()) == 1 and all(v is None or v.const_value is not None
                                                                       for v in node.inputs[1:]):
                return True
        return None

    fold_constants(model, should_fold=should_fold)
    ir.passes.common.RemoveUnusedNodesPass()(model)


def name_batch_dim(graph) -> None:
    """Call the input's symbolic batch dim ``batch`` everywhere (torch.export names it ``s77``)."""
    import onnx_ir as ir

    shape = graph.inputs[0].shape if graph.inputs else None
    if not shape or not isinstance(shape[0], ir.SymbolicDim) or not isinstance(shape[0].value, str):
        return
    old = shape[0].value
    values = [*graph.inputs, *(v for n in ir.traversal.RecursiveGraphIterator(graph) for v in n.outputs)]
    for value in values:
        dims = list(value.shape or ())
        if any(isinstance(d, ir.SymbolicDim) and d.value == old for d in dims):
            value.shape = ir.Shape(["batch" if isinstance(d, ir.SymbolicDim) and d.value == old else d for d in dims])


def name_folded_weights(graph, exported_program) -> int:
    """Give a folded reshape of a parameter the parameter's name; returns how many were renamed.

    The folded initializer is named after the FX node (``view``); as ``layer1.0.se.fc1.weight`` (a
    ``(out, in)`` matrix where PyTorch holds ``(out, in, 1, 1)``) Netron shows whose weight it is.
    """
    params = exported_program.graph_signature.inputs_to_parameters
    count = 0
    for node in exported_program.graph.nodes:
        arg = node.args[0] if node.args else None
        name = getattr(node.target, "__name__", "").split(".")[0]  # aten.view.default -> "view"
        if (node.op == "call_function" and name in _RESHAPES and getattr(arg, "name", None) in params
                and node.name in graph.initializers and params[arg.name] not in graph.initializers):
            graph.initializers[node.name].name = params[arg.name]
            count += 1
    return count


def _module_of(node) -> str | None:
    """The module path encoded in a renamed node's name (``''`` for the root, None if unnamed)."""
    name = node.name or ""
    return name.split("/", 1)[0] if "/" in name else None


def se_nodes(model_or_path) -> dict[str, list[str]]:
    """SE module path -> op types of its ONNX nodes (graph order, ``Constant`` nodes left out).

    Accepts an ``onnx.ModelProto``, an ``onnx_ir.Model`` or a path to a model written by
    :func:`se_inject.export_onnx`. The SE modules are those listed in the model's
    ``se_inject.se_blocks`` metadata, else the nodes the dynamo exporter tagged as coming from a
    ``SqueezeExcite`` module.
    """
    require("onnx", for_="se_inject.se_nodes")
    import onnx
    import onnx_ir as ir

    if isinstance(model_or_path, (str, os.PathLike)):
        model = ir.load(os.fspath(model_or_path))
    elif isinstance(model_or_path, onnx.ModelProto):
        model = ir.from_proto(model_or_path)
    else:
        model = model_or_path
    nodes = _all_nodes(model.graph)
    raw = model.metadata_props.get(SE_BLOCKS_KEY)
    if raw is not None:
        blocks = list(json.loads(raw))
    else:
        blocks = []
        for node in nodes:
            scopes, classes = (_literal(node.metadata_props.get(k)) for k in (_SCOPES_KEY, _CLASSES_KEY))
            for scope, cls in zip(scopes, classes):  # the two lists run in step, root first
                if cls.endswith(".SqueezeExcite") and scope not in blocks:
                    blocks.append(scope)
    found: dict[str, list[str]] = {b: [] for b in blocks}
    for node in nodes:
        path = _module_of(node)
        if path is None or node.op_type == "Constant":
            continue
        for block in blocks:
            if path == block or path.startswith(block + "."):
                found[block].append(node.op_type)
                break
    return found
