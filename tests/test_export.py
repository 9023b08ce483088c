"""se_inject.export: ONNX export, parity with onnxruntime, SE blocks findable by module path, bad input."""
from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch
from torch import nn

import se_inject
from se_inject import ExportError, SqueezeExcite, export_onnx, se_nodes
import se_inject_cli as cli
from se_inject import export as export_mod

#: SE as the paper draws it (Fig. 2): pool -> FC -> ReLU -> FC -> sigmoid -> scale. FCs may come
#: out as Gemm, MatMul or 1x1 Conv; other ops (a Reshape of the gate, the residual Add) may sit between.
SE_PATTERN = (("ReduceMean", "GlobalAveragePool"), ("Gemm", "MatMul", "Conv"), ("Relu",),
              ("Gemm", "MatMul", "Conv"), ("Sigmoid",), ("Mul",))


def is_se(ops: list[str]) -> bool:
    it = iter(ops)
    return all(any(op in step for op in it) for step in SE_PATTERN)


class Residual(nn.Module):
    """A residual block whose SE also performs the add: ``relu(se(bn(conv(x)), x))``."""

    def __init__(self, channels: int, r: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.se = SqueezeExcite(channels, r=r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.se(self.bn(self.conv(x)), x))


class TinySENet(nn.Module):
    # 256 -> 128 SE weights have 32k elements: over the exporter's 8192-element folding limit.
    def __init__(self, channels: int = 256, r: float = 2) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.layer1 = nn.Sequential(Residual(channels, r), Residual(channels, r))
        self.head = nn.Linear(channels, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer1(self.stem(x)).mean((2, 3)))


class SEAfter(nn.Module):
    """Wrap a block so that SE gates its output (no engine needed)."""

    def __init__(self, block: nn.Module, channels: int, r: float = 16) -> None:
        super().__init__()
        self.block = block
        self.se = SqueezeExcite(channels, r=r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.se(self.block(x))


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.sum() > 0:  # Python branch on a tensor value: no exporter can keep both branches
            return y * 2
        return y


class ReturnsString(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> dict:
        return {"features": self.conv(x), "note": "not a tensor"}


def ort_vs_torch(path, model: nn.Module, x: torch.Tensor) -> float:
    """Max relative diff of onnxruntime vs PyTorch on ``x``."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    assert out.shape == ref.shape
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def test_dynamo_export_matches_pytorch(tmp_path):
    model = timm.create_model("resnet18", pretrained=False)
    report = export_onnx(model, tmp_path / "resnet18.onnx", (3, 64, 64))
    assert report.exporter == "dynamo" and report.fallback_reason is None
    assert report.batch_sizes == (1, 3) and report.max_rel_diff <= 1e-4
    assert (report.input_names, report.output_names) == (("input",), ("output",))
    assert report.opset >= 18 and report.file_bytes == os.path.getsize(tmp_path / "resnet18.onnx")
    assert os.listdir(tmp_path) == ["resnet18.onnx"]  # no temporary file left beside it
    assert "dynamo exporter" in str(report) and "max rel diff" in str(report)
    from se_inject.files import current_umask
    assert os.stat(tmp_path / "resnet18.onnx").st_mode & 0o777 == 0o666 & ~current_umask()  # not the temp file's 0600


def test_batch1_export_runs_at_batch_7(tmp_path):
    """The issue's Must-show: export of SE-ResNet-50 at batch 1 runs in onnxruntime at batch 7."""
    model = se_inject.apply(timm.create_model("resnet50", pretrained=False), r=16)
    report = export_onnx(model, tmp_path / "se_resnet50.onnx", (3, 224, 224), check=False)
    assert report.trace.endswith("at batch 1")
    dim = onnx.load(str(tmp_path / "se_resnet50.onnx"), load_external_data=False).graph.input[0].type.tensor_type
    assert dim.shape.dim[0].dim_param == "batch"
    x = torch.randn(7, 3, 224, 224, generator=torch.Generator().manual_seed(7))
    assert ort_vs_torch(tmp_path / "se_resnet50.onnx", model, x) <= 1e-4
    blocks = se_nodes(tmp_path / "se_resnet50.onnx")
    assert blocks and report.se_blocks == tuple(blocks) and all(is_se(ops) for ops in blocks.values())


def test_se_blocks_findable_by_module_path(tmp_path):
    model = TinySENet()
    report = export_onnx(model, tmp_path / "tiny.onnx", (3, 8, 8))
    assert report.se_blocks == ("layer1.0.se", "layer1.1.se")
    blocks = se_nodes(tmp_path / "tiny.onnx")
    assert set(blocks) == {"layer1.0.se", "layer1.1.se"}
    for path, ops in blocks.items():
        assert is_se(ops), (path, ops)
        assert ops[-1] == "Add"  # se(x, shortcut) also does the residual add
        assert ops.count("Reshape") <= 1, ops  # the gate's (B, C) -> (B, C, 1, 1); weights are folded
    graph = onnx.load(str(tmp_path / "tiny.onnx")).graph
    names = [n.name for n in graph.node]
    assert any(n.startswith("layer1.0.se/") for n in names) and any(n.startswith("layer1.0.se.gate/") for n in names)
    weights = {i.name: tuple(i.dims) for i in graph.initializer}
    assert weights["layer1.0.se.fc1.weight"] == (128, 256)  # the parameter's name, as a (out, in) matrix


def test_se_in_a_timm_model_findable(tmp_path):
    model = timm.create_model("resnet18", pretrained=False)
    model.layer1[0] = SEAfter(model.layer1[0], 64)
    report = export_onnx(model, tmp_path / "r18.onnx", (3, 64, 64))
    assert report.max_rel_diff <= 1e-4
    blocks = se_nodes(tmp_path / "r18.onnx")
    assert list(blocks) == ["layer1.0.se"] and is_se(blocks["layer1.0.se"])


def test_se_in_an_fx_graph_module_findable(tmp_path):
    """What the engine hands over: a GraphModule in which SqueezeExcite is a called (leaf) module."""
    class SELeaf(torch.fx.Tracer):
        def is_leaf_module(self, m: nn.Module, name: str) -> bool:
            return isinstance(m, SqueezeExcite) or super().is_leaf_module(m, name)

    model = TinySENet(64, 4)
    graph_module = torch.fx.GraphModule(model, SELeaf().trace(model))
    report = export_onnx(graph_module, tmp_path / "gm.onnx", (3, 8, 8))
    assert report.se_blocks == ("layer1.0.se", "layer1.1.se")
    assert all(is_se(ops) for ops in se_nodes(tmp_path / "gm.onnx").values())


def test_falls_back_to_torchscript_and_says_why(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("dynamo is broken today\nsecond line")

    monkeypatch.setitem(export_mod.EXPORTERS, "dynamo", broken)
    model = nn.Sequential(TinySENet())  # nested containers: TorchScript scopes /0/layer1/layer1.0/se/...
    report = export_onnx(model, tmp_path / "tiny.onnx", (3, 8, 8))
    assert report.exporter == "torchscript"
    assert report.fallback_reason == "RuntimeError: dynamo is broken today"
    assert report.max_rel_diff <= 1e-4 and "dynamo exporter failed" in str(report)
    blocks = se_nodes(tmp_path / "tiny.onnx")
    assert set(blocks) == {"0.layer1.0.se", "0.layer1.1.se"} and all(is_se(ops) for ops in blocks.values())


def test_large_model_weights_go_next_to_it(tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "EXTERNAL_DATA_BYTES", 0)  # as if the model were over 1.5 GB
    model = TinySENet()
    report = export_onnx(model, tmp_path / "big.onnx", (3, 8, 8))
    assert report.external_data == "big.onnx.data" and report.max_rel_diff <= 1e-4
    assert sorted(os.listdir(tmp_path)) == ["big.onnx", "big.onnx.data"]
    assert os.path.getsize(tmp_path / "big.onnx") < 100_000 < os.path.getsize(tmp_path / "big.onnx.data")
    assert ort_vs_torch(tmp_path / "big.onnx", model, torch.randn(2, 3, 8, 8)) <= 1e-4  # still loads, renamed


def test_static_batch_and_opset(tmp_path):
    report = export_onnx(TinySENet(), tmp_path / "tiny.onnx", (3, 8, 8), dynamic_batch=False, opset=18)
    assert report.batch_sizes == (1,) and report.opset == 18 and report.exporter == "dynamo"
    shape = onnx.load(str(tmp_path / "tiny.onnx")).graph.input[0].type.tensor_type.shape
    assert [d.dim_value for d in shape.dim] == [1, 3, 8, 8]
    # the dynamo exporter writes opset 18 and up: an older runtime's opset takes the TorchScript one
    report = export_onnx(TinySENet(), tmp_path / "tiny.onnx", (3, 8, 8), opset=13)
    assert (report.exporter, report.opset) == ("torchscript", 13) and "opset 13" in report.fallback_reason


def _unwritable(tmp_path):
    if os.geteuid() == 0:  # root writes anywhere a mode allows: use a read-only file system
        return "/proc/model.onnx"
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    return folder / "model.onnx"


@pytest.mark.parametrize("case, expect", [
    ("missing folder", "does not exist"),
    ("unwritable folder", "choose a writable folder"),
    ("input size", "rejects input size (1, 64, 64)"),
    ("data-dependent branch", "torchscript exporter"),
    ("non-tensor output", "str at output['note']"),
])
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, case, expect):
    path = tmp_path / "model.onnx"
    model: nn.Module = timm.create_model("resnet18", pretrained=False)
    size = (3, 64, 64)
    if case == "missing folder":
        path = tmp_path / "no" / "such" / "model.onnx"
    elif case == "unwritable folder":
        path = _unwritable(tmp_path)
    elif case == "input size":
        size = (1, 64, 64)
    elif case == "data-dependent branch":
        model, size = DataDependent(), (3, 8, 8)
    else:
        model, size = ReturnsString(), (3, 8, 8)
    path_existed = os.path.exists(path)
    with pytest.raises(ExportError) as info:
        export_onnx(model, path, size)
    message = str(info.value)
    assert expect in message and "\n" not in message, message
    if case == "data-dependent branch":
        assert "dynamo exporter" in message and "make forward traceable" in message
    assert os.path.exists(path) == path_existed
    leftovers = [f for f in os.listdir(tmp_path) if f != "ro"]
    assert leftovers == [], leftovers


def test_failed_export_keeps_the_previous_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous export")
    with pytest.raises(ExportError):
        export_onnx(DataDependent(), path, (3, 8, 8))
    assert path.read_bytes() == b"previous export" and os.listdir(tmp_path) == ["model.onnx"]


def test_user_model_is_left_as_it_was(tmp_path):
    model = TinySENet().train()
    model.layer1[0].bn.eval()  # a mixed-mode model: frozen BN inside a training net
    flags = {name: m.training for name, m in model.named_modules()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, tmp_path / "tiny.onnx", (3, 8, 8))
    assert {name: m.training for name, m in model.named_modules()} == flags
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad and p.device.type == "cpu" for p in model.parameters())


@pytest.fixture
def cli_export_only():
    """The `se-inject` entry point, as the console script calls it."""
    return cli.main


@pytest.mark.parametrize("policy, shows", [(["--policy", "none"], "SE blocks: none"),
                                           (["--r", "16"], "layer1.0.se: ReduceMean -> Gemm -> Relu -> Gemm")])
def test_cli_exports_a_backbone(tmp_path, capsys, cli_export_only, policy, shows):
    argv = ["export", "resnet18", *policy, "--input-size", "3", "64", "64", "-o", str(tmp_path / "r18.onnx")]
    assert cli_export_only(argv) == 0
    out = capsys.readouterr().out
    assert "dynamo exporter" in out and "max rel diff" in out and shows in out
    assert os.listdir(tmp_path) == ["r18.onnx"]


def test_cli_bad_path_is_one_line(tmp_path, capsys, cli_export_only):
    argv = ["export", "resnet18", "--policy", "none", "-o", str(tmp_path / "missing" / "r18.onnx")]
    assert cli_export_only(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("se-inject export: ExportError: cannot write") and err.count("\n") == 1


def _vgg_like() -> nn.Module:
    torch.manual_seed(0)
    features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                             nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True), nn.MaxPool2d(2))
    return nn.Sequential(OrderedDict(features=features, head=nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 10))))


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_vgg_like_blocks_inside_their_layers_export_by_module_path(tmp_path, monkeypatch, exporter):
    """VGG's blocks run inside the ReLUs they gate (features.2.se): both exporters find them by that path."""
    if exporter == "torchscript":
        def off(*args, **kwargs):
            raise RuntimeError("the dynamo exporter is off in this test")
        monkeypatch.setitem(export_mod.EXPORTERS, "dynamo", off)
    model = se_inject.apply(_vgg_like().eval(), input_size=(3, 16, 16), r=4)
    report = export_onnx(model, tmp_path / "vgg.onnx", (3, 16, 16))
    assert report.exporter == exporter and report.max_rel_diff <= 1e-4
    assert report.se_blocks == ("features.2.se", "features.6.se")
    blocks = se_nodes(tmp_path / "vgg.onnx")
    assert set(blocks) == {"features.2.se", "features.6.se"} and all(is_se(ops) for ops in blocks.values())
