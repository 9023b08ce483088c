"""se_inject.apply / plan end to end: golden equivalence with timm's hand-written SE nets."""
import copy
import pickle

import pytest
import torch

import se_inject
from se_inject import PolicyError, SqueezeExcite, TraceError
from conftest import state_equal


@pytest.mark.parametrize("plain,hand_written,overrides", [
    ("resnet50", "seresnet50", {}),
    ("resnext50_32x4d", "seresnext50_32x4d", {}),
    ("resnet18", "seresnet18", {"divisor": 8}),
])
def test_apply_equals_timm_se_variant(timm_model, plain, hand_written, overrides):
    ours = se_inject.apply(timm_model(plain), r=16, **overrides)
    ref = timm_model(hand_written)
    shapes = lambda m: [(k, tuple(v.shape)) for k, v in m.state_dict().items()]
    assert shapes(ours) == shapes(ref)          # same names, same shapes, same order
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max() <= 1e-5


def test_input_model_untouched_unless_inplace(timm_model):
    model = timm_model("resnet18")
    before = copy.deepcopy(model)
    out = se_inject.apply(model)
    assert out is not model and state_equal(model, before)
    assert type(model.layer1[0]).__name__ == "BasicBlock" and not hasattr(model.layer1[0], "code")
    same = se_inject.apply(model, inplace=True)
    assert same is model and "layer1.0.se.fc1.weight" in model.state_dict()


def test_class_and_timm_methods_kept(timm_model):
    model = se_inject.apply(timm_model("resnet50"))
    assert type(model).__name__ == "ResNet" and model.pretrained_cfg["architecture"] == "resnet50"
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (1, 2048, 3, 3)
        assert model.forward_head(feats).shape == (1, 1000)
    model.reset_classifier(7)
    with torch.no_grad():
        assert model(x).shape == (1, 7)
    block = model.layer1[0]
    assert type(block).__name__ == "Bottleneck"
    assert se_inject.graph_module.original_class_name(block) == "timm.models.resnet.Bottleneck"


def test_every_original_parameter_keeps_name_and_value(timm_model):
    model = timm_model("inception_v3")
    out = se_inject.apply(model)
    original, new = model.state_dict(), out.state_dict()
    assert all(torch.equal(original[k], new[k]) for k in original)
    added = [k for k in new if k not in original]
    assert added and all(".se." in k for k in added)


def test_apply_twice_inserts_nothing(timm_model):
    once = se_inject.apply(timm_model("resnet50"))
    from se_inject.api import NothingInserted
    with pytest.warns(NothingInserted, match="16 sites skipped: already gated"):  # says so, once
        twice = se_inject.apply(once)
    assert list(twice.state_dict()) == list(once.state_dict())
    plan = se_inject.plan(once)
    assert not plan.placements and plan.skipped_by_reason() == {"already gated": 16}
    from se_inject.codes import Code
    assert plan.skipped_by_code() == {Code.ALREADY_GATED: 16}   # programs compare codes, not sentences


@pytest.mark.parametrize("name", ["resnet50", "inception_v3", "inception_resnet_v2", "vgg11_bn", "convnext_tiny",
                                  "repvgg_a2", "densenet121", "dpn68", "regnetx_002"])
def test_identity_init_keeps_outputs(timm_model, name):
    model = timm_model(name)
    out = se_inject.apply(model, init="identity")
    assert sum(isinstance(m, SqueezeExcite) for m in out.modules()) > 0
    x = torch.randn(2, 3, 128, 128)  # planned at the model's own size, checked at a cheaper one
    with torch.no_grad():
        assert (out(x) - model(x)).abs().max() <= 1e-6


def test_deepcopy_pickle_save_and_train(timm_model, tmp_path):
    torch.manual_seed(0)
    # zero_init_last=False: timm zeroes each branch's last BN weight, which keeps SE gradients at 0
    model = se_inject.apply(timm_model("resnet18", zero_init_last=False))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    path = tmp_path / "m.pt"
    torch.save(model, path)
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model)), torch.load(path, weights_only=False)):
        other.eval()
        assert list(other.state_dict()) == list(model.state_dict())
        assert type(other.layer1[0]).__name__ == "BasicBlock"
        with torch.no_grad():
            assert torch.equal(other(x), ref)
    # trains: SE weights get gradients and the loss goes down
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    target = torch.tensor([1, 2])
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), target)
        loss.backward()
        ses = [m for m in model.modules() if isinstance(m, SqueezeExcite)]
        assert all(se.fc2.bias.grad.abs().sum() > 0 for se in ses)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_runs_under_torch_compile(timm_model):
    model = se_inject.apply(timm_model("resnet10t"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model)(x)
    assert (compiled - eager).abs().max() <= 1e-4


def test_bad_policy_leaves_model_untouched(timm_model, tmp_path):
    model = timm_model("resnet18")
    before = copy.deepcopy(model)
    bad = tmp_path / "policy.yaml"
    bad.write_text("rr: 16\n")
    with pytest.raises(PolicyError, match=r"policy.yaml: key 'rr' is not a policy key \(did you mean 'r'\?\)"):
        se_inject.apply(model, str(bad), inplace=True)
    with pytest.raises(PolicyError, match=r"key 'include': glob 'layer9.\*' matches no module of ResNet \(module paths look like"):
        se_inject.apply(model, include=["layer9.*"], inplace=True)
    with pytest.raises(PolicyError, match="key 'r' must be a finite number > 0"):
        se_inject.apply(model, r=0, inplace=True)
    assert state_equal(model, before) and type(model.layer1[0]) is type(before.layer1[0])


def test_failed_rewrite_restores_the_model(timm_model, monkeypatch):
    model = timm_model("resnet18")
    before = copy.deepcopy(model)
    import se_inject.rewrite as rw

    def broken(*a, **k):
        raise RuntimeError("simulated failure after the swap")
    monkeypatch.setattr(rw, "_check_forward", broken)
    with pytest.raises(TraceError, match="the model was restored"):
        se_inject.apply(model, inplace=True)
    assert state_equal(model, before) and type(model.layer1[0]) is type(before.layer1[0])


class ValueBranch(torch.nn.Module):
    """Branches on tensor values: fx cannot trace it."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv = torch.nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y + x if y.mean() > 0 and y.shape == x.shape else y


class Untraceable(torch.nn.Module):
    """Every module that owns weights branches on tensor values: nothing fx can read."""

    def __init__(self):
        super().__init__()
        self.stem = ValueBranch(3, 8)
        self.body = ValueBranch(8, 8)

    def forward(self, x):
        y = self.stem(x)
        return self.body(y) if y.sum() != 0 else y


def test_untraceable_model_names_module_and_reason():
    model = Untraceable()
    with pytest.raises(TraceError, match=r"Untraceable: fx cannot trace Untraceable.forward: .*control flow"):
        se_inject.apply(model, input_size=(3, 8, 8))


def test_vit_plan_says_why_and_what_to_set(timm_model):
    model = timm_model("vit_tiny_patch16_224")
    plan = se_inject.plan(model)
    assert not plan.placements
    assert "token layout (B, N, C): add nlc to the policy's layouts" in str(plan)
    gated = se_inject.apply(model, layouts=["nchw", "nhwc", "nlc"], init="identity")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (gated(x) - model(x)).abs().max() <= 1e-6
    assert sum(isinstance(m, SqueezeExcite) for m in gated.modules()) == 24


@pytest.mark.parametrize("bad,message", [
    (None, "se_inject.apply takes a model .*got NoneType; pass a torch.nn.Module instance"),
    ("resnet50", r"got the string 'resnet50'; pass a model object, e.g. timm.create_model\('resnet50'\)"),
    ({"conv1.weight": torch.zeros(1)}, r"got a mapping \(a state dict\?\); build the model, load the weights"),
    (torch.nn.Conv2d, r"got the class Conv2d; pass an instance: Conv2d\(...\)"),
])
def test_not_a_model_is_one_line(bad, message):
    with pytest.raises(se_inject.SEInjectError, match=message) as info:
        se_inject.apply(bad)
    assert "\n" not in str(info.value)
    with pytest.raises(se_inject.SEInjectError, match=message.replace("apply", "plan")):
        se_inject.plan(bad)


@pytest.mark.parametrize("size,message", [
    ((64, 64), r"ResNet fails its forward at input size \(64, 64\): .*its first layer is a Conv2d taking 3 channels: "
               r"input_size is \(C, H, W\), e.g. \(3, 224, 224\)"),
    ((3, 0, 64), r"input_size=\(3, 0, 64\) is not the input's shape without the batch: .*\(C, H, W\)"),
    ("3x64x64", r"input_size='3x64x64' is not the input's shape without the batch"),
])
def test_bad_input_size_says_what_is_expected(timm_model, size, message):
    with pytest.raises(TraceError, match=message) as info:
        se_inject.plan(timm_model("resnet18"), input_size=size)
    assert "\n" not in str(info.value)


def test_default_input_size_follows_the_first_conv():
    from backbones import create_backbone
    model = create_backbone("cifar_resnet20", in_chans=1)
    plan = se_inject.plan(model, count_flops=False)        # no input_size: the first conv wants 1 channel
    assert plan.input_size[0] == 1 and len(plan.placements) == 9


def test_r_per_stage_must_name_a_stage_of_the_model(timm_model):
    with pytest.raises(PolicyError, match=r"key 'r_per_stage': stage 9 matches no site of ResNet \(its stages: 2, 3, 4, 5"):
        se_inject.plan(timm_model("resnet18"), r_per_stage={9: 32})


@pytest.mark.parametrize("name,overrides,reason", [
    ("vit_tiny_patch16_224", {}, "token layout"),
    ("resnet18", {"exclude": ["*"]}, "matched by exclude"),
])
def test_apply_that_inserts_nothing_warns(timm_model, name, overrides, reason):
    with pytest.warns(se_inject.api.NothingInserted, match=f"no SE block inserted into .*{reason}"):
        se_inject.apply(timm_model(name), **overrides)


def test_untraceable_blocks_warn_with_the_reason():
    model = torch.nn.Sequential(ValueBranch(3, 8), ValueBranch(8, 8))
    with pytest.warns(se_inject.api.NothingInserted, match="no site found"):
        se_inject.apply(model, input_size=(3, 8, 8))


def test_policy_none_inserts_nothing_silently(timm_model):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = se_inject.apply(timm_model("resnet18"), "none")
    assert not any(isinstance(m, SqueezeExcite) for m in out.modules())


def test_apply_takes_a_plan_and_does_not_trace_again(timm_model, monkeypatch):
    model = timm_model("resnet18")
    the_plan = se_inject.plan(model, r=8, exclude=["layer4.*"])
    monkeypatch.setattr("se_inject.planner.trace_model", lambda *a, **k: pytest.fail("traced again"))
    copied = se_inject.apply(model, the_plan)                  # a copy: the plan maps onto it by path
    assert copied is not model and model.layer1[0].se is None           # timm's placeholder, untouched
    assert [p.module_path for p in the_plan.placements] == [n for n, m in copied.named_modules()
                                                               if isinstance(m, SqueezeExcite)]
    assert se_inject.apply(model, the_plan, inplace=True) is model and model.layer1[0].se.reduced == 8
    with pytest.raises(PolicyError, match="a plan is given, so the policy keys and input_size are decided"):
        se_inject.apply(model, the_plan, r=4)
    with pytest.raises(TraceError, match="this plan was made for another model"):
        se_inject.apply(timm_model("resnet34"), the_plan)
