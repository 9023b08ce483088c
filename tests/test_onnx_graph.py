"""se_inject.onnx_graph: node names after module paths, folded weights, the batch dim, se_nodes."""
import onnx
import pytest
import torch
from torch import nn

import se_inject
from se_inject.onnx_graph import _literal, _unique, se_nodes


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), se_inject.SqueezeExcite(16, r=4))
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    se_inject.export_onnx(model, path, (3, 8, 8))
    return path


def test_nodes_are_named_after_their_module(exported):
    names = [n.name for n in onnx.load(exported).graph.node]
    assert any(n.startswith("1/mean") for n in names) and any(n.startswith("1.gate/") for n in names)


def test_se_nodes_lists_each_block_in_order(exported):
    assert se_nodes(str(exported)) == {"1": ["ReduceMean", "Gemm", "Relu", "Gemm", "Sigmoid", "Unsqueeze", "Mul"]}


def test_weights_are_folded_named_and_the_batch_dim_named(exported):
    model = onnx.load(exported)
    assert {"1.fc1.weight", "1.fc2.weight"} <= {i.name for i in model.graph.initializer}
    assert not any(n.op_type in ("Reshape", "Flatten") for n in model.graph.node)  # folded into the weights
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_helpers():
    assert _literal("['', 'layer1']") == ["", "layer1"] and _literal("not a list") == [] and _literal(None) == []
    assert _unique("a", {"a", "a_2"}) == "a_3"
