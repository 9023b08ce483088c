"""se_inject.planner + accounting: the paper's numbers (§4, Eq. 5) and the policy knobs."""
import torch

import se_inject
from se_inject.accounting import count_macs, count_params
from se_inject.block import SqueezeExcite


def eq5(r, stages):
    """Paper Eq. 5, 2/r * sum_s N_s * C_s^2, plus the FC biases (C/r + C per block)."""
    weights = sum(2 * n * c * (c // r) for n, c in stages)
    biases = sum(n * (c // r + c) for n, c in stages)
    return weights + biases


RESNET50_STAGES = [(3, 256), (4, 512), (6, 1024), (3, 2048)]  # Table 1


def test_resnet50_parameters_match_eq5(timm_model):
    model = timm_model("resnet50")
    plan = se_inject.plan(model, r=16)
    assert plan.params_added == eq5(16, RESNET50_STAGES) == 2_530_992  # paper §4: "~2.5 million"
    applied = se_inject.apply(model, r=16)
    assert count_params(applied) - count_params(model) == plan.params_added
    assert 9.5 < 100 * plan.params_added / plan.params_before < 10.5  # "~10% increase"


def test_resnet50_macs_increase(timm_model):
    """Paper §4: 3.86 -> 3.87 GFLOPs (+0.26%). We count pooling, the FCs and scaling: +0.33%."""
    model = timm_model("resnet50")
    plan = se_inject.plan(model)
    increase = 100 * plan.macs_added / plan.macs_before
    assert 0.15 < increase < 0.40
    measured = count_macs(se_inject.apply(model), (3, 224, 224))  # the analytic count is what runs
    assert measured == plan.macs_after


def test_no_last_stage_is_about_four_percent(timm_model):
    plan = se_inject.plan(timm_model("resnet50"), "paper-no-last-stage")
    assert plan.params_added == eq5(16, RESNET50_STAGES[:3])
    assert 3.5 < 100 * plan.params_added / plan.params_before < 4.5  # paper §4: "~4%"
    assert {p.site.stage for p in plan.placements} == {2, 3, 4}


def test_labels_follow_the_paper(timm_model):
    labels = [p.label for p in se_inject.plan(timm_model("resnet50")).placements]
    assert labels[:4] == ["SE_2_1", "SE_2_2", "SE_2_3", "SE_3_1"] and labels[-1] == "SE_5_3"


def test_r_per_stage_and_path(timm_model):
    plan = se_inject.plan(timm_model("resnet50"), r_per_stage={5: 32}, r_by_path={"layer1.*": 4})
    by_label = {p.label: p for p in plan.placements}
    assert by_label["SE_2_1"].reduced == 64 and by_label["SE_3_1"].reduced == 32 and by_label["SE_5_1"].reduced == 64


def test_include_exclude_min_channels(timm_model):
    model = timm_model("resnet50")
    assert {p.site.path for p in se_inject.plan(model, include=["layer3.*"]).placements} == {f"layer3.{i}" for i in range(6)}
    assert len(se_inject.plan(model, exclude=["layer1.*", "layer2.*"]).placements) == 9
    assert len(se_inject.plan(model, min_channels=1024).placements) == 9


def test_inception_v3_one_se_per_module(timm_model):
    model = timm_model("inception_v3")
    plan = se_inject.plan(model)
    assert plan.by_kind() == {"inception": 11}
    applied = se_inject.apply(model)
    owners = [n.rsplit(".", 1)[0] for n, m in applied.named_modules() if isinstance(m, SqueezeExcite)]
    assert owners == [p.site.path for p in plan.placements] and all(o.startswith("Mixed_") for o in owners)


def test_inception_resnet_v2_se_on_every_residual_branch(timm_model):
    model = timm_model("inception_resnet_v2")
    plan = se_inject.plan(model)
    residual_blocks = [n for n, m in model.named_modules() if type(m).__name__ in ("Block35", "Block17", "Block8")]
    assert sorted(p.site.path for p in plan.placements if p.site.kind == "residual") == sorted(residual_blocks)
    assert len(residual_blocks) == 40
    # the Inception-style reductions (Mixed_5b/6a/7a) get theirs after the concat
    assert sorted(p.site.path for p in plan.placements if p.site.kind == "inception") == ["mixed_5b", "mixed_6a", "mixed_7a"]
    # the inception preset gates concats only, including those inside the residual branches
    assert se_inject.plan(model, "inception").by_kind() == {"inception": 43}


def test_vgg_falls_back_to_conv_units(timm_model):
    plan = se_inject.plan(timm_model("vgg11_bn"))
    assert plan.by_kind() == {"conv": 8} and any("conv_fallback" in n for n in plan.notes)
    assert se_inject.plan(timm_model("vgg11_bn"), conv_fallback=False).placements == []


def test_every_conv_preset(timm_model):
    plan = se_inject.plan(timm_model("resnet50"), "every-conv")
    # conv1/conv2 units of every Bottleneck with >= 128 channels: layer2 (4x2), layer3 (6x2), layer4 (3x2)
    assert plan.by_kind() == {"conv": 26} and all(p.site.channels >= 128 for p in plan.placements)


def test_several_sites_in_one_owner_are_numbered(timm_model):
    plan = se_inject.plan(timm_model("vit_tiny_patch16_224"), layouts=["nlc"])
    names = {p.name for p in plan.placements if p.site.path == "blocks.0"}
    assert names == {"se1", "se2"}


def test_plan_prints_a_table(timm_model):
    text = str(se_inject.plan(timm_model("resnet50")))
    assert "SE_2_1  residual  layer1.0  256       16       16  8,464    nchw    56x56" in text
    assert "params: 25,557,032 -> 28,088,024 (+2,530,992, +9.90%)" in text


def test_plan_changes_nothing(timm_model):
    model = timm_model("resnet50")
    before = [(n, type(m)) for n, m in model.named_modules()]
    se_inject.plan(model)
    assert [(n, type(m)) for n, m in model.named_modules()] == before


def test_big_model_plans_on_meta_in_seconds():
    """Planning needs shapes only: a 1.5 B-parameter model on the meta device takes no memory."""
    import time
    import timm
    with torch.device("meta"):
        model = timm.create_model("resnet101", base_width=64 * 8)  # a 8x-wide ResNet-101
    assert count_params(model) > 1e9
    t0 = time.perf_counter()
    plan = se_inject.plan(model)
    assert len(plan.placements) == 33 and time.perf_counter() - t0 < 30
