"""se_inject.preserve: plan, and an apply that fails, leave everything reachable from the model as it was.

Issue 10: planning torchvision's Faster R-CNN left a FakeTensor in ``rpn.anchor_generator.cell_anchors``
(its forward rebinds that list), and the next real forward failed. The check here is stronger than
a state dict: every attribute of every module (and of the containers and helper objects they hold)
must be the same object with the same value, and a real forward must give the same output.
"""
import copy

import pytest
import torch
import torchvision
from torch import nn

import se_inject
from se_inject import PolicyError, TraceError
from se_inject.preserve import Snapshot, preserved


class _Helper:
    def __init__(self) -> None:
        self.calls = 0
        self.last = None


class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn(self.conv(x)))


class CachingNet(nn.Module):
    """A residual net whose forward does what real models do to themselves: rebinds a list of
    tensors (torchvision's AnchorGenerator), appends to a list in place, fills a dict cache, bumps
    a buffer in place, and rebinds a field of a plain helper object."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.block = ResBlock(16)
        self.head = nn.Linear(16, 4)
        self.anchors = [torch.ones(2)]
        self.history: list = []
        self.cache: dict = {}
        self.helper = _Helper()
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        self.anchors = [a.to(x.dtype) * 1 for a in self.anchors]
        self.history.append(x.shape)
        self.cache[tuple(x.shape)] = x
        self.steps += 1
        self.helper.calls += 1
        self.helper.last = x
        return self.head(self.block(self.stem(x)).mean((2, 3)))


class Wrapper(nn.Module):
    """Blocks hold the caching net: sites live in submodules, which se-inject rewrites."""

    def __init__(self) -> None:
        super().__init__()
        self.net = CachingNet()

    def forward(self, x):
        return self.net(x)


def fingerprint(model: nn.Module) -> list:
    """Every module attribute as (module, name, identity), containers and helpers one level down,
    and every tensor's value."""
    out = []
    for path, m in model.named_modules():
        for k, v in vars(m).items():
            out.append((path, k, id(v)))
            if isinstance(v, (list, tuple)):
                out += [(path, k, i, id(e)) for i, e in enumerate(v)]
            elif isinstance(v, dict):
                out += [(path, k, kk, id(e)) for kk, e in v.items()]
            elif hasattr(v, "__dict__") and not isinstance(v, (nn.Module, torch.Tensor, type)):
                out += [(path, k, kk, id(e)) for kk, e in vars(v).items()]
    return out


def values(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(model, before_ids, before_values):
    assert fingerprint(model) == before_ids
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before_values.items())


def detectors():
    kw = dict(weights=None, weights_backbone=None)
    return {
        "fasterrcnn": lambda: torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(**kw),
        "retinanet": lambda: torchvision.models.detection.retinanet_resnet50_fpn(min_size=128, max_size=128, **kw),
        "ssdlite": lambda: torchvision.models.detection.ssdlite320_mobilenet_v3_large(**kw),
    }


def test_snapshot_restores_rebinds_appends_caches_and_buffers():
    model = Wrapper().eval()
    ids, vals = fingerprint(model), values(model)
    history, anchors = model.net.history, model.net.anchors
    with preserved(model):
        model(torch.randn(1, 3, 8, 8))
        assert model.net.anchors is not anchors and model.net.history and model.net.steps == 1
    assert model.net.anchors is anchors and model.net.history is history and history == []
    assert model.net.cache == {} and model.net.helper.calls == 0 and model.net.helper.last is None
    assert_same(model, ids, vals)


def test_snapshot_reports_a_forward_that_writes_its_weights():
    lin = nn.Linear(2, 2)
    snap = Snapshot(lin)
    with torch.no_grad():
        lin.weight.add_(1)
    with pytest.raises(se_inject.SEInjectError, match="wrote into 1 of its own parameters"):
        snap.restore()


@pytest.mark.parametrize("backend", ["meta", "fake", "real"])
def test_plan_leaves_the_model_untouched(backend, monkeypatch):
    """Each shape backend in turn (forcing it), as in the Faster R-CNN report."""
    from se_inject import tracing
    real_trace = tracing.trace_model
    monkeypatch.setattr("se_inject.planner.trace_model", lambda *a, **k: real_trace(*a, **k, backend=backend))
    model = Wrapper().eval()
    x = torch.randn(2, 3, 8, 8)
    ids, vals = fingerprint(model), values(model)
    plan = se_inject.plan(model, input_size=(3, 8, 8))
    assert plan.placements and plan.traced.backend == backend
    assert_same(model, ids, vals)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


def test_failed_apply_in_place_leaves_the_model_untouched():
    model = Wrapper().eval()
    ids, vals = fingerprint(model), values(model)
    with pytest.raises(PolicyError, match="stage 9 matches no site"):
        se_inject.apply(model, inplace=True, r_per_stage={9: 4}, input_size=(3, 8, 8))
    assert_same(model, ids, vals)


def test_failed_rewrite_check_rolls_back_and_restores(monkeypatch):
    model = Wrapper().eval()
    ids, vals = fingerprint(model), values(model)

    def broken(plan):
        plan.traced.module(torch.zeros(1, 3, 8, 8))  # the check runs the model (and its caches)...
        raise RuntimeError("injected")               # ...and fails
    monkeypatch.setattr("se_inject.rewrite._check_forward", broken)
    with pytest.raises(TraceError, match="the model was restored"):
        se_inject.apply(model, inplace=True, input_size=(3, 8, 8))
    assert_same(model, ids, vals)


@pytest.mark.parametrize("name", sorted(detectors()))
def test_detectors_plan_and_failed_apply_leave_them_untouched(name):
    torch.manual_seed(0)
    model = detectors()[name]().eval()
    images = [torch.rand(3, 96, 128)]
    with torch.no_grad():
        before = model(images)
    ids, vals = fingerprint(model), values(model)
    plan = se_inject.plan(model, input_size=(3, 128, 128), count_flops=False)
    assert plan.traced.root == "backbone" and plan.placements is not None
    with pytest.raises(PolicyError):  # fails after its backbone was traced and run on stand-ins
        se_inject.apply(model, inplace=True, input_size=(3, 128, 128), r_per_stage={9: 4})
    assert_same(model, ids, vals)
    with torch.no_grad():
        after = model(images)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(after, before) for k in a)
    copy.deepcopy(model)  # once crashed here (FakeTensors left in the model)


def test_whole_detector_forward_on_stand_ins_restores_its_anchor_cache():
    """The original report: the detector's own forward run on fake tensors (not only its backbone)."""
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None).eval()
    anchors = model.rpn.anchor_generator.cell_anchors
    cells = list(anchors)
    with pytest.raises(TraceError):
        se_inject.tracing.trace_model(model, (3, 128, 128), backend="fake")   # without preserved: the old path
    leaked = model.rpn.anchor_generator.cell_anchors
    model.rpn.anchor_generator.cell_anchors = anchors                          # undo the leak by hand
    assert leaked is not anchors  # the forward rebinds its cache while it runs
    with preserved(model):
        with pytest.raises(TraceError):
            se_inject.tracing.trace_model(model, (3, 128, 128), backend="fake")
    assert model.rpn.anchor_generator.cell_anchors is anchors and all(a is b for a, b in zip(anchors, cells))
