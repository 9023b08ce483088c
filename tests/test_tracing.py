"""se_inject.tracing: one-level traces, shape backends, untraceable modules."""
import pickle
from typing import List, Optional

import pytest
import torch
from torch import nn

import se_inject
from se_inject import TraceError
from se_inject.tracing import trace_model


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


class _TokensToMap(nn.Module):
    """Twins' PosConv pattern: tokens + a size argument, a residual conv on the map."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.proj = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        fmap = x.transpose(1, 2).view(b, c, *size)
        return (self.proj(fmap) + fmap).flatten(2).transpose(1, 2)


class _SizeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.block = _TokensToMap()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        size = x.shape[-2:]
        return self.block(x.flatten(2).transpose(1, 2), (int(size[0]), int(size[1])))


class _ConstantBlock(nn.Module):
    """A forward that builds a tensor from constants (fx makes it a `_tensor_constant`)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * torch.tensor([0.5]) + x


class _SharedNet(nn.Module):
    """CoaT's pattern: one module reachable under two names, called from a child's forward."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.shared = _ConstantBlock()
        self.blocks = nn.ModuleList([_Caller(self.shared), _Caller(self.shared)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for b in self.blocks:
            x = b(x)
        return x


class _Caller(nn.Module):
    def __init__(self, shared: nn.Module) -> None:
        super().__init__()
        self.shared = shared
        self.conv = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.shared(x)) + x


def test_size_arguments_stay_arguments():
    import se_inject
    m = _SizeNet().eval()
    se = se_inject.apply(m, init="identity", input_size=(3, 8, 8))
    assert se.block.se.channels == 16
    for hw in (8, 12):  # traced at 8x8, runs at any size
        x = torch.randn(2, 3, hw, hw)
        torch.testing.assert_close(se(x), m(x), atol=1e-6, rtol=0)


def test_shared_modules_keep_their_weights_and_constants_leave_no_trace():
    import copy
    import pickle

    import se_inject
    m = _SharedNet().eval()
    se_inject.plan(m)
    assert all(t.device.type == "cpu" for t in list(m.parameters()) + list(m.buffers()))
    assert not any(k.startswith("_tensor_constant") for mod in m.modules() for k in vars(mod))
    se = se_inject.apply(m, init="identity")
    assert all(p.device.type == "cpu" for p in se.parameters())
    assert not any("constant" in k for k in se.state_dict())  # constants are non-persistent buffers
    x = torch.randn(2, 3, 8, 8)
    for model in (se, copy.deepcopy(se), pickle.loads(pickle.dumps(se))):
        torch.testing.assert_close(model(x), m(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["coat_lite_tiny", "twins_pcpvt_small", "csatv2"])
def test_timm_models_with_shared_blocks_sizes_and_constants(timm_model, name):
    """coat: a CPE module shared by blocks; twins: PosConv(x, size); csatv2: tensor constants."""
    import se_inject
    m = timm_model(name).eval()
    se = se_inject.apply(m, init="identity", input_size=(3, 224, 224))
    assert all(p.device.type == "cpu" for p in list(m.parameters()) + list(se.parameters()))
    x = torch.randn(1, 3, 256, 256) if name != "coat_lite_tiny" else torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(se(x), m(x), atol=1e-5, rtol=0)


class _Masked(nn.Module):
    """A residual block with arguments its parent fixes: a ``None`` mask, a flag and a scale."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None, flag: bool = True, scale=2.0):
        y = self.bn(self.conv(x))
        if mask is not None:
            y = y * mask
        if flag:
            y = y * scale
        return y + x


def _script(model: nn.Module) -> torch.jit.ScriptModule:
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated
        return torch.jit.script(model)


class _MaskedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = _Masked()

    def forward(self, x):
        return self.block(self.stem(x), None, True, 2.0)


def test_specialised_arguments_leave_nothing_torchscript_cannot_read():
    """fx checks an argument fixed to None with ``_assert_is_none(value: object, ...)``, which
    TorchScript cannot compile, and drops the argument's annotation: a rewritten owner holding them
    would not script where the original does (timm's dla34)."""
    from se_inject._torch_compat import FX_ASSERT_IS_NONE
    from se_inject.tracing import assert_is_none
    net = _MaskedNet().eval()
    model = se_inject.apply(net, input_size=(3, 8, 8))
    graph = model.block.graph
    assert not graph.find_nodes(op="call_function", target=FX_ASSERT_IS_NONE)
    assert len(graph.find_nodes(op="call_function", target=assert_is_none)) == 1
    types = {n.target: n.type for n in graph.find_nodes(op="placeholder")}
    assert types["mask"] == Optional[torch.Tensor] and types["flag"] is bool and types["scale"] is float
    x = torch.randn(2, 3, 8, 8)
    scripted = _script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))
        for block in (model.block, scripted.block):       # the checks still run, eager and scripted
            with pytest.raises(Exception, match="mask has been specialized"):
                block(torch.randn(2, 8, 8, 8), torch.ones(1))
            with pytest.raises(Exception, match="flag has been specialized"):
                block(torch.randn(2, 8, 8, 8), None, False)
    again = pickle.loads(pickle.dumps(model))             # unpickling re-traces the code: the check stays a call
    assert len(again.block.graph.find_nodes(op="call_function", target=assert_is_none)) == 1
    assert torch.equal(again(x), model(x))


class _Appends(nn.Sequential):
    """VoVNet's SequentialAppendList: a list argument the trace fixes to its length."""

    def forward(self, x: torch.Tensor, feats: List[torch.Tensor]) -> torch.Tensor:
        for module in self:
            feats.append(module(feats[-1] if feats else x))
        return torch.cat(feats, dim=1)


class _AppendsNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.mid = _Appends(nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1))

    def forward(self, x):
        x = self.stem(x)
        return self.mid(x, [x])


def test_a_list_argument_stays_one_argument_torchscript_reads():
    """fx passes a list argument fixed to its length through pytree code (``fx_pytree.tree_flatten_spec``)
    that TorchScript cannot compile: it is one annotated argument again, its items ``getitem``s."""
    net = _AppendsNet().eval()
    model = se_inject.apply(net, input_size=(3, 8, 8), kinds=["concat"])
    mid = model.mid
    assert type(mid.graph._codegen) is torch.fx.graph.CodeGen and hasattr(mid, "se")
    assert [(n.target, n.type) for n in mid.graph.find_nodes(op="placeholder")] == [
        ("x", torch.Tensor), ("feats", List[torch.Tensor])]
    x = torch.randn(2, 3, 8, 8)
    scripted = _script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))
        assert torch.equal(pickle.loads(pickle.dumps(model))(x), model(x))
        assert torch.equal(torch.fx.symbolic_trace(model)(x), model(x))
        for m in (mid, scripted.mid):
            with pytest.raises(Exception, match="feats has been specialized to have 1 items"):
                m(torch.randn(2, 8, 8, 8), [torch.randn(2, 8, 8, 8)] * 2)
