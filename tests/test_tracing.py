"""se_inject.tracing: one-level traces, shape backends, untraceable modules."""
import pytest
import torch
from torch import nn

from se_inject import TraceError
from se_inject.tracing import default_input_size, forward_shapes, trace_model


def test_owner_graphs_keep_children_as_leaves(timm_model):
    traced = trace_model(timm_model("resnet18"))
    g = traced.graphs["layer1.0"].graph
    targets = [n.target for n in g.nodes if n.op == "call_module"]
    assert targets[:3] == ["conv1", "bn1", "drop_block"]
    add = next(n for n in g.nodes if n.op == "call_function")
    assert add.meta["shape"] == (1, 64, 56, 56)


def test_meta_pass_leaves_weights_and_modes_alone(timm_model):
    m = timm_model("resnet18").train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    traced = trace_model(m)
    assert traced.backend == "meta"
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # BN stats untouched
    assert all(mod.training for mod in m.modules())


def test_model_on_meta_device_plans_without_memory():
    import timm
    with torch.device("meta"):
        m = timm.create_model("resnet50")
    traced = trace_model(m)
    assert traced.backend == "meta" and traced.output_shapes == (1, 1000)


def test_input_size_from_pretrained_cfg(timm_model):
    assert default_input_size(timm_model("inception_v3")) == (3, 299, 299)
    assert default_input_size(nn.Linear(2, 2)) == (3, 224, 224)


class DataDependent(nn.Module):
    """Control flow on tensor values: fx cannot trace it, its children still can be."""

    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())

    def forward(self, x):
        if x.sum() > 0:
            return self.block(x)
        return self.block(-x)


def test_untraceable_module_is_not_a_dead_end():
    traced = trace_model(DataDependent(), (3, 8, 8), backend="real")
    assert not traced.graphs[""].ok and "fx cannot trace DataDependent.forward" in traced.graphs[""].error
    assert traced.graphs["block"].ok


def test_model_that_fails_its_forward_names_the_size(timm_model):
    with pytest.raises(TraceError, match=r"VisionTransformer fails its forward at input size \(3, 64, 64\): meta: .*224"):
        trace_model(timm_model("vit_tiny_patch16_224"), (3, 64, 64))


def test_forward_shapes(timm_model):
    assert forward_shapes(timm_model("resnet18"), (3, 64, 64)) == (1, 1000)
