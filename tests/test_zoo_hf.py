"""The transformers sweep (``benchmarks/zoo.py --source hf``) on a sample: a handful of model types at
small configs and input sizes, through the same harness as the whole sweep (plan, apply, forward and
backward, output shapes, SE gradients, ONNX export and onnxruntime parity)."""
import dataclasses

import pytest

pytest.importorskip("transformers", reason="the hf extra: pip install 'se-inject[hf]'")


#: small configs of the sample's types (the sweep builds the default ones)
SMALL = {
    "resnet": dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1]),
    "regnet": dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 2], groups_width=8),   # RegNetY: SE in every block
    "convnext": dict(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2),                     # channels-last MLP
    "efficientnet": dict(width_coefficient=0.25, depth_coefficient=1.0, image_size=64, hidden_dim=320),   # SE in MBConv
    "vit": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
                patch_size=8),                                                                # tokens: nlc, off by default
}


@pytest.fixture
def small(zoo, monkeypatch):
    from backbones.hf import create_hf
    source = zoo.SOURCES["hf"]
    monkeypatch.setitem(zoo.SOURCES, "hf", dataclasses.replace(source, create=lambda name: create_hf(name, **SMALL[name])))


def test_the_sample_is_of_the_sweeps_types(zoo):
    assert set(SMALL) <= set(zoo.SOURCES["hf"].names())
    assert {zoo.SOURCES["hf"].category(n) for n in SMALL} == {"classification"}
    assert zoo.SOURCES["hf"].category("vitdet") == "backbone"


@pytest.mark.parametrize("name,se", [("resnet", 2), ("convnext", 2)])
def test_rewritten_models_run_train_and_export(zoo, small, name, se):
    out = zoo.full_one(name, export=True, source="hf")
    assert "error_stage" not in out, out
    assert out["se_applied"] == se and out["sites"] == {"residual": se}
    assert out["forward_ok"] and out["backward_ok"] and out["shape_ok"] and out["se_grad_ok"]
    assert out["se_export_ok"] and out["se_export"]["rel_diff"] < 1e-4


@pytest.mark.parametrize("name,gated", [("regnet", 3), ("efficientnet", 9)])
def test_models_with_their_own_se_get_none_on_top(zoo, small, name, gated):
    out = zoo.full_one(name, export=False, source="hf")
    assert "error_stage" not in out, out
    assert out["se"] == 0 and out["se_applied"] == 0
    assert out["skipped"] == {"already gated": gated}


def test_token_models_are_left_alone_by_default(zoo, small):
    out = zoo.full_one("vit", export=False, source="hf")
    assert "error_stage" not in out and out["se"] == 0
    assert out["found_kinds"] == ["residual"] and "token layout" in next(iter(out["skipped"]))
