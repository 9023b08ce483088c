"""ONNX export with a parity check: the last stage of trace -> sites -> plan -> rewrite -> export.

    >>> import timm, se_inject
    >>> model = timm.create_model("resnet18", pretrained=False)
    >>> report = se_inject.export_onnx(model, "resnet18.onnx", (3, 96, 96))   # doctest: +SKIP
    >>> print(report)                                                          # doctest: +SKIP
    resnet18.onnx: 46.8 MB, dynamo exporter (torch.export non-strict at batch 1), opset 20, 4.1 s
      input  input [batch, 3, 96, 96] -> output
      onnxruntime vs PyTorch at batch 1, 3: max abs diff 9.7e-08, max rel diff 3.6e-07
      SE blocks: none

The torch.export-based exporter (``dynamo=True``) is tried first; the TorchScript exporter only
when it fails, and the report says why. The file appears only when everything succeeded: the model
is written and checked in a temporary folder next to ``path``, then renamed into place.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ._extras import require
from .block import SqueezeExcite
from ._torch_compat import pytree, size_oblivious_export
from .errors import ExportError, TraceError
from .files import publish
from .modes import eval_mode
from .shapes import check_input_size, default_input_size, expected_input
from .onnx_graph import (SE_BLOCKS_KEY, _unique, fold_weight_reshapes, name_batch_dim, name_folded_weights,
                         name_nodes, name_scoped_nodes, se_nodes)

__all__ = ["export_onnx", "ExportReport", "se_nodes"]

#: Above this many bytes of weights, weights go to ``<name>.onnx.data`` (protobuf's limit is 2 GB;
#: torch's exporter uses the same margin).
EXTERNAL_DATA_BYTES = 1536 * 1024 * 1024
_TINY = 1e-12


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_onnx` wrote and how well onnxruntime matches PyTorch on it."""

    path: str
    exporter: str  # "dynamo" or "torchscript"
    fallback_reason: str | None  # first line of the dynamo exporter's error when it fell back
    opset: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    input_size: tuple[int, ...]
    dynamic_batch: bool
    trace: str  # how the graph was captured: "torch.export non-strict at batch 1", "torch.jit.trace at batch 1"
    batch_sizes: tuple[int, ...]  # batch sizes run in onnxruntime; () with check=False
    max_abs_diff: float | None
    max_rel_diff: float | None  # max |ort - torch| / max |torch|, worst output and batch
    se_blocks: tuple[str, ...]  # SqueezeExcite module paths, findable by name in the graph
    external_data: str | None  # weights file next to path, for models over ~1.5 GB
    file_bytes: int
    seconds: float

    def __str__(self) -> str:
        batch = "batch" if self.dynamic_batch else "1"
        size = ", ".join(map(str, self.input_size))
        lines = [f"{self.path}: {self.file_bytes / 1e6:.1f} MB, {self.exporter} exporter ({self.trace}), "
                 f"opset {self.opset}, {self.seconds:.1f} s"]
        if self.fallback_reason:
            lines.append(f"  dynamo exporter failed: {self.fallback_reason}")
        lines.append(f"  input  {', '.join(self.input_names)} [{batch}, {size}] -> {', '.join(self.output_names)}")
        if self.batch_sizes:
            lines.append(f"  onnxruntime vs PyTorch at batch {', '.join(map(str, self.batch_sizes))}: "
                         f"max abs diff {self.max_abs_diff:.1e}, max rel diff {self.max_rel_diff:.1e}")
        else:
            lines.append("  not checked (check=False)")
        shown = ", ".join(self.se_blocks[:4]) + (f", ... ({len(self.se_blocks)} in all)" if len(self.se_blocks) > 4 else "")
        lines.append(f"  SE blocks: {shown or 'none'}")
        if self.external_data:
            lines.append(f"  weights in {self.external_data}")
        return "\n".join(lines)


def _reason(error: BaseException) -> str:
    """One line for an exporter error: the innermost cause, plus the user's code line if named."""
    inner = error
    while (nxt := inner.__cause__ or (None if inner.__suppress_context__ else inner.__context__)) is not None:
        inner = nxt
    text = next((ln.strip() for ln in str(inner).splitlines() if ln.strip()), "")
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    text = re.split(r"(?<=[\w)\]])\.\s", text, maxsplit=1)[0].rstrip(".")  # first sentence
    line = f"{type(inner).__name__}: {text}" if text else type(inner).__name__
    line = line if len(line) <= 160 else line[:157] + "..."
    where = re.findall(r'File "([^"]+)", line (\d+), in (\w+)', str(error))
    if where:
        file, lineno, fn = where[-1]
        line += f" (at {os.path.basename(file)}:{lineno} in {fn})"
    return line


def _data_dependent(error: BaseException) -> bool:
    """Whether torch.export failed on control flow that depends on tensor values."""
    while error is not None:
        if "DataDependent" in type(error).__name__:
            return True
        error = error.__cause__ or error.__context__
    return False


@contextlib.contextmanager
def _quiet():
    """Silence exporter chatter: warnings, torch's WARNING logs, and the partial graph torch.export
    prints to stderr on failure. Failures still raise, and their reason goes into our error."""
    torch_log = logging.getLogger("torch")
    level = torch_log.level
    torch_log.setLevel(logging.CRITICAL)  # strict torch.export logs its failures at ERROR
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        torch_log.setLevel(level)


@contextlib.contextmanager
def _eval_on_cpu(model: nn.Module):
    """Eval mode on CPU for the export; every module's training flag and the device restored after."""
    devices = {t.device for t in (*model.parameters(), *model.buffers())}
    if len(devices) > 1:
        raise ExportError(f"model spans devices {sorted(map(str, devices))}; move it to one device "
                          "(export runs on CPU) and export again")
    device = devices.pop() if devices else torch.device("cpu")
    with eval_mode(model):
        try:
            if device.type != "cpu":
                model.to("cpu")
            yield
        finally:
            if device.type != "cpu":
                model.to(device)


def _flat_outputs(out) -> tuple[list[str], list[torch.Tensor]]:
    """Output names and tensors in the exporters' (pytree) order: ``output``; ``output_0``, ``output_1``
    for a tuple; the keys for a dict (``logits``, ``aux_0``)."""
    pairs, _ = pytree.tree_flatten_with_path(out)
    bad = [(pytree.keystr(k), type(v).__name__) for k, v in pairs if not isinstance(v, torch.Tensor)]
    if bad or not pairs:
        what = f"a {bad[0][1]} at output{bad[0][0]}" if bad else "no tensor"
        raise ExportError(f"model returns {what}; ONNX outputs are tensors: "
                          "make forward return a tensor, or a tuple/dict of tensors")
    names: list[str] = []
    for keys, _ in pairs:
        parts = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in keys]
        name = re.sub(r"\W", "_", "_".join(parts))
        name = name if name and not name[0].isdigit() else "_".join(filter(None, ("output", name)))
        names.append(_unique(name, set(names)))
    return names, [v for _, v in pairs]


def _rel_diff(ort_out, ref: torch.Tensor) -> tuple[float, float]:
    import numpy as np

    a = np.asarray(ort_out, dtype=np.float64)
    b = ref.detach().double().numpy()
    if a.shape != b.shape:
        return float("inf"), float("inf")
    diff = np.abs(a - b)
    diff[(a == b) | (np.isnan(a) & np.isnan(b))] = 0.0  # same inf or same nan: agree
    abs_diff = float(np.nan_to_num(diff, nan=np.inf).max(initial=0.0))
    scale = float(np.abs(b[np.isfinite(b)]).max(initial=0.0))
    return abs_diff, abs_diff / max(scale, _TINY)


def _capture(model: nn.Module, x: torch.Tensor, dynamic_batch: bool) -> tuple[torch.export.ExportedProgram, str]:
    """torch.export, non-strict then strict (the ONNX exporter's own order), batch 1 then 2.

    A size-1 dim invites torch.export to specialise it (0/1 specialisation) even with torch.onnx's
    ``backed_size_oblivious``; models that then fix the batch (ConvNeXt) are traced at batch 2. The
    exported graph is the same for every batch.
    """
    shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    examples = [x, x.expand(2, *x.shape[1:]).contiguous()] if dynamic_batch else [x]
    first: Exception | None = None
    for strict in (False, True):
        for example in examples:
            try:
                # backed_size_oblivious: what torch.onnx's own capture does to keep a size-1 dim dynamic.
                with size_oblivious_export():
                    exported = torch.export.export(model, (example,), dynamic_shapes=shapes, strict=strict)
                return exported, \
                    f"torch.export {'strict' if strict else 'non-strict'} at batch {example.shape[0]}"
            except Exception as e:  # noqa: BLE001 - next strategy; the first error is the telling one
                first = first or e
                if "Constraints violated (batch)" not in str(e):
                    break
    raise first  # type: ignore[misc]


def _export_dynamo(model, x, tmp_file: Path, names, dynamic_batch: bool, opset: int | None, se_paths):
    import onnx_ir as ir

    exported, trace = _capture(model, x, dynamic_batch)
    program = torch.onnx.export(exported, (), None, dynamo=True, input_names=names[0], output_names=names[1],
                                opset_version=opset, verbose=False)
    got = program.model.opset_imports.get("", None)
    if opset is not None and got != opset:  # it converts down from 18 only where it can
        raise RuntimeError(f"it wrote opset {got} when asked for opset {opset}")
    graph = program.model.graph
    fold_weight_reshapes(program.model)
    name_batch_dim(graph)
    name_nodes(graph)
    name_folded_weights(graph, program.exported_program)
    program.model.metadata_props[SE_BLOCKS_KEY] = json.dumps(se_paths)
    weights = sum(v.const_value.nbytes for v in graph.initializers.values() if v.const_value is not None)
    data = f"{tmp_file.name}.data" if weights > EXTERNAL_DATA_BYTES else None
    ir.save(program.model, tmp_file, external_data=data)
    return data, trace


def _export_torchscript(model, x, tmp_file: Path, names, dynamic_batch: bool, opset: int | None, se_paths):
    import onnx_ir as ir

    weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    if weights > EXTERNAL_DATA_BYTES:
        raise RuntimeError(f"weights are {weights / 2**30:.1f} GB: the TorchScript exporter cannot write "
                           "them to one file")
    axes = {n: {0: "batch"} for n in (*names[0], *names[1])} if dynamic_batch else None
    torch.onnx.export(model, (x,), str(tmp_file), dynamo=False, input_names=names[0], output_names=names[1],
                      opset_version=opset, dynamic_axes=axes)
    model_ir = ir.load(tmp_file)
    name_scoped_nodes(model_ir.graph, dict(model.named_modules()))
    model_ir.metadata_props[SE_BLOCKS_KEY] = json.dumps(se_paths)
    ir.save(model_ir, tmp_file)
    return None, f"torch.jit.trace at batch {x.shape[0]}"


#: exporter name -> function(model, x, tmp_file, names, dynamic_batch, opset, se_paths) -> (external
#: data file name or None, how the graph was traced); tried in this order, the next only if the previous raised.
EXPORTERS = {"dynamo": _export_dynamo, "torchscript": _export_torchscript}


def _check(tmp_file: Path, model, x, names, refs: dict[int, list[torch.Tensor]], rtol: float, exporter: str):
    """onnx.checker, then onnxruntime vs PyTorch at each batch size; returns (max abs, max rel)."""
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(str(tmp_file))  # the path form: works past 2 GB
        session = ort.InferenceSession(str(tmp_file), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - any failure here is the export's
        raise ExportError(f"the {exporter}-exported graph is invalid: {_reason(e)}; "
                          "export with check=False to inspect it") from None
    worst = (0.0, 0.0)
    for batch, ref in refs.items():
        try:
            outs = session.run(None, {names[0][0]: x[:batch].numpy()})
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"onnxruntime fails at batch {batch} on the {exporter}-exported graph: {_reason(e)}; "
                              "the graph may fix the batch size: export with dynamic_batch=False") from None
        for name, out, r in zip(names[1], outs, ref):
            if tuple(out.shape) != tuple(r.shape):
                raise ExportError(f"output {name!r} at batch {batch}: onnxruntime shape {tuple(out.shape)} != "
                                  f"PyTorch {tuple(r.shape)} ({exporter} exporter): the graph fixed a size PyTorch "
                                  "computes at run time; keep shapes independent of values, or export with "
                                  "dynamic_batch=False")
            abs_diff, rel = _rel_diff(out, r)
            if rel > rtol:
                raise ExportError(f"output {name!r} at batch {batch}: onnxruntime differs from PyTorch by max rel "
                                  f"diff {rel:.1e} > rtol {rtol:.0e} (max abs {abs_diff:.1e}, {exporter} exporter); "
                                  "pass a larger rtol if that is acceptable")
            worst = (max(worst[0], abs_diff), max(worst[1], rel))
    return worst


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: tuple[int, ...] | None = None,
    *,
    dynamic_batch: bool = True,
    opset: int | None = None,
    check: bool = True,
    second_batch: int = 3,
    rtol: float = 1e-4,
) -> ExportReport:
    """Export ``model`` to ONNX at ``path``; with ``check``, prove onnxruntime gives PyTorch's numbers.

        >>> import se_inject, timm
        >>> model = se_inject.apply(timm.create_model("resnet50"), r=16)          # doctest: +SKIP
        >>> report = se_inject.export_onnx(model, "se_resnet50.onnx")             # doctest: +SKIP
        >>> report.exporter, report.batch_sizes, report.max_rel_diff < 1e-4       # doctest: +SKIP
        ('dynamo', (1, 3), True)
        >>> se_inject.se_nodes("se_resnet50.onnx")["layer1.0.se"]                # doctest: +SKIP
        ['ReduceMean', 'Gemm', 'Relu', 'Gemm', 'Sigmoid', 'Unsqueeze', 'Mul', 'Add', 'Relu']

    Args:
        model: any module taking one ``(B, C, H, W)`` tensor; left as it was (mode, device, weights).
        path: the ``.onnx`` file to write (its folder must exist); replaced only on success.
        input_size: the input's shape without the batch (``(C, H, W)``; ``(C, L)``, ``(C, T, H, W)`` for
            1-D and 3-D nets); defaults to timm's ``pretrained_cfg["input_size"]``, else what the
            first conv takes (:func:`se_inject.shapes.default_input_size`).
        dynamic_batch: export the batch dimension as ``batch`` (else fixed at 1).
        opset: ONNX opset; None for the exporter's default.
        check: run ``onnx.checker`` and compare onnxruntime (CPU) with PyTorch at batch 1 and
            ``second_batch`` on one random input: ``max|ort - torch| / max|torch| <= rtol`` per output.

    Raises:
        ExportError: unwritable path, an input size the model rejects, a model neither exporter
            handles, or a failed check; nothing is left at ``path`` (nor temporary files).
    """
    require("onnx", for_="se_inject.export_onnx")   # before any work: the dynamo exporter needs onnxscript
    start = time.perf_counter()
    path = _check_destination(Path(path))
    size = _check_size(input_size, model)
    if second_batch < 1:
        raise ExportError(f"second_batch={second_batch} must be >= 1")
    with _eval_on_cpu(model):
        batches = [1, second_batch] if dynamic_batch and second_batch != 1 else [1]
        x, names, refs = _reference_outputs(model, size, batches if check else [1])
        se_paths = [n for n, m in model.named_modules() if isinstance(m, SqueezeExcite)]
        with _scratch_dir(path) as tmp_dir:
            tmp_file = tmp_dir / path.name
            exporter, reasons, data, trace = _first_export_that_works(model, x[:1], tmp_file, names, dynamic_batch,
                                                                      opset, se_paths)
            got_opset, found = _read_back(tmp_file, exporter, opset)
            diffs = _check(tmp_file, model, x, names, refs, rtol, exporter) if check else (None, None)
            nbytes = tmp_file.stat().st_size + ((tmp_dir / data).stat().st_size if data else 0)
            if data:
                publish(tmp_dir / data, path.parent / f"{path.name}.data")
            publish(tmp_file, path)

    return ExportReport(
        path=str(path), exporter=exporter, fallback_reason=reasons.get("dynamo"), opset=got_opset,
        input_names=tuple(names[0]), output_names=tuple(names[1]), input_size=size,  # type: ignore[arg-type]
        dynamic_batch=dynamic_batch, trace=trace, batch_sizes=tuple(batches) if check else (), max_abs_diff=diffs[0],
        max_rel_diff=diffs[1], se_blocks=found, external_data=f"{path.name}.data" if data else None,
        file_bytes=nbytes, seconds=time.perf_counter() - start)


def _check_destination(path: Path) -> Path:
    """``path`` if a file can be written there; else the one-line reason (before any work)."""
    if not path.parent.is_dir():
        raise ExportError(f"cannot write {path}: folder {path.parent} does not exist; create it or choose another path")
    if path.is_dir():
        raise ExportError(f"cannot write {path}: it is a folder; give a file name such as {path / 'model.onnx'}")
    if not os.access(path.parent, os.W_OK):
        raise ExportError(f"cannot write {path}: folder {path.parent} is not writable; choose another path")
    return path


def _check_size(input_size: tuple[int, ...] | None, model: nn.Module) -> tuple[int, ...]:
    """The input's shape without the batch (2 to 4 positive ints), the model's default when None."""
    if input_size is None:
        return default_input_size(model)
    try:
        return check_input_size(input_size, model)
    except TraceError as e:
        raise ExportError(str(e)) from None


def _reference_outputs(model: nn.Module, size: tuple[int, ...], batches: list[int]):
    """One seeded input batch, the output names, and PyTorch's outputs at each batch size."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    x = torch.randn((max(batches), *size), generator=torch.Generator().manual_seed(0)).to(dtype)
    with torch.no_grad():
        try:
            out = model(x[:1])
        except Exception as e:  # noqa: BLE001 - the model's own error, reported by size
            raise ExportError(f"{type(model).__name__} rejects input size {size}: {_reason(e)}; "
                              f"pass an input_size it accepts ({expected_input(model)})") from None
        output_names, first = _flat_outputs(out)
        refs = {1: first}
        refs.update({b: _flat_outputs(model(x[:b]))[1] for b in batches[1:]})
    return x, (["input"], output_names), refs


@contextlib.contextmanager
def _scratch_dir(path: Path):
    """A temporary folder beside ``path`` (same file system: the final rename is atomic), removed after."""
    try:
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as e:
        raise ExportError(f"cannot write {path}: creating a file in {path.parent} fails ({e.strerror}); "
                          "choose a writable folder") from None
    try:
        yield tmp_dir
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _first_export_that_works(model, x, tmp_file: Path, names, dynamic_batch: bool, opset: int | None, se_paths):
    """``(exporter, reasons the others failed, external data file, trace)`` of the first exporter of
    :data:`EXPORTERS` that writes ``tmp_file``; an :class:`ExportError` with every reason if none does."""
    reasons: dict[str, str] = {}
    for name, export in EXPORTERS.items():
        if name in reasons:
            continue
        try:
            with _quiet():
                data, trace = export(model, x, tmp_file, names, dynamic_batch, opset, se_paths)
            return name, reasons, data, trace
        except Exception as e:  # noqa: BLE001 - next exporter, reason kept
            reasons[name] = _reason(e)
            for f in tmp_file.parent.iterdir():
                f.unlink()
            if _data_dependent(e):
                # torch.export proved forward branches on tensor values: a TorchScript trace
                # would keep the branch this input takes and pass the check, wrong for others.
                reasons.setdefault("torchscript", "not tried: a trace keeps one branch of that "
                                                  "data-dependent control flow")
    tried = "; ".join(f"{k} exporter: {v}" for k, v in reasons.items())
    raise ExportError(f"cannot export {type(model).__name__} to ONNX ({tried}); make forward traceable "
                      "(tensors in and out, no Python branches on tensor values)")


def _read_back(tmp_file: Path, exporter: str, opset: int | None) -> tuple[int, tuple[str, ...]]:
    """The written file's opset (checked against the one asked for) and the SE blocks found in it."""
    import onnx

    proto = onnx.load(str(tmp_file), load_external_data=False)
    got_opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if opset is not None and got_opset != opset:
        raise ExportError(f"the {exporter} exporter wrote opset {got_opset}, not the opset {opset} asked for; "
                          f"pass opset={got_opset} or newer")
    return got_opset, tuple(b for b, ops in se_nodes(proto).items() if ops)

