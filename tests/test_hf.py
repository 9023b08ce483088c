"""backbones.hf: transformers vision models by model type (``hf:<type>``), random weights, no download;
planned, rewritten, trained and exported like timm's and torchvision's."""
from __future__ import annotations

import sys
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the hf extra: pip install 'se-inject[hf]'")

import se_inject  # noqa: E402
from backbones import BackboneError, create_backbone, list_backbones, resolve_backbone  # noqa: E402
from backbones import hf  # noqa: E402
from se_inject.codes import Code  # noqa: E402

SMALL_RESNET = dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1])


def test_names_resolve_with_their_prefix_only():
    assert resolve_backbone("hf:regnet") == ("hf", "regnet")
    assert "hf:resnet" in list_backbones("hf") and "hf:vitdet" in list_backbones("hf")
    with pytest.raises(BackboneError, match=r"^unknown backbone 'hf:resnt' \(did you mean 'hf:resnet'\?\)"):
        resolve_backbone("hf:resnt")
    with pytest.raises(BackboneError, match="^unknown backbone 'vitdet'"):
        resolve_backbone("vitdet")  # unprefixed: never transformers


def test_a_missing_transformers_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    hf._mappings.cache_clear()
    try:
        with pytest.raises(BackboneError, match=r"^hf: backbones need Hugging Face transformers: "
                                                r"pip install 'se-inject\[hf\]'$"):
            create_backbone("hf:resnet")
        assert not [n for n in list_backbones() if n.startswith("hf:")]  # listing all skips it quietly
    finally:
        hf._mappings.cache_clear()


def test_classifier_and_backbone_types():
    model = create_backbone("hf:resnet", num_classes=5, in_chans=1, **SMALL_RESNET)
    assert type(model).__name__ == "ResNetForImageClassification"
    assert model(torch.zeros(2, 1, 32, 32)).logits.shape == (2, 5)
    assert type(create_backbone("hf:vitdet", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64, image_size=32, pretrain_image_size=32)).__name__ == "VitDetBackbone"
    with pytest.raises(BackboneError, match=r"^hf:vitdet is a backbone .*num_classes does not apply"):
        create_backbone("hf:vitdet", num_classes=3)
    with pytest.raises(BackboneError, match=r"^hf:resnet: pretrained weights need a download"):
        create_backbone("hf:resnet", pretrained=True)


def test_default_input_size_is_the_configs():
    from se_inject.shapes import default_input_size
    assert default_input_size(create_backbone("hf:vit", image_size=64, hidden_size=32, num_hidden_layers=1,
                                              num_attention_heads=2, intermediate_size=64)) == (3, 64, 64)


def test_regnety_default_config_gets_nothing_on_top_of_its_own_se():
    """transformers' RegNetY has an SE layer (RegNetSELayer) in each of its 22 blocks."""
    from transformers import RegNetConfig, RegNetForImageClassification
    plan = se_inject.plan(RegNetForImageClassification(RegNetConfig()), input_size=(3, 64, 64), count_flops=False)
    assert not plan.placements
    assert plan.skipped_by_reason() == {Code.ALREADY_GATED.message: 22}
    assert not any(".se." in s.site.path or "attention" in s.site.path for s in plan.skipped)


def test_apply_forward_backward_and_the_trainer_adapter():
    from trainers.config import load_config
    from trainers.factory import build_model
    cfg = load_config(None, ["model.name=hf:resnet", f"model.kwargs={SMALL_RESNET}", "model.se.policy=paper"])
    model = build_model(cfg, num_classes=10, input_size=(1, 28, 28))
    assert isinstance(model, hf.Logits)
    assert sum(isinstance(m, se_inject.SqueezeExcite) for m in model.modules()) == 2
    out = model(torch.randn(3, 1, 28, 28))
    assert isinstance(out, torch.Tensor) and out.shape == (3, 10)
    out.sum().backward()
    se = [p for m in model.modules() if isinstance(m, se_inject.SqueezeExcite) for p in m.parameters()]
    assert all(p.grad is not None for p in se)


def test_cli_plan_takes_an_hf_name(capsys):
    from se_inject_cli import main
    assert main(["plan", "hf:regnet", "--input-size", "3", "64", "64"]) == 0
    out = capsys.readouterr().out
    assert "RegNetForImageClassification" in out and "0 SE blocks" in out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["plan", "hf:resnet", "--input-size", "3", "64", "64"]) == 0
    assert "16 SE blocks" in capsys.readouterr().out


def test_a_rewritten_module_that_returns_a_model_output_keeps_returning_one(tmp_path):
    """fx writes a returned ModelOutput as a plain dict; transformers' callers index it (``outputs[0]``)."""
    model = create_backbone("hf:efficientnet", width_coefficient=0.25, depth_coefficient=0.25, image_size=64,
                            hidden_dim=320).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        se = se_inject.apply(model)
    assert isinstance(se.efficientnet.encoder.se, se_inject.SqueezeExcite)   # the encoder's own graph was rewritten
    x = torch.randn(2, 3, 64, 64)
    assert type(se(x)).__name__ == "ImageClassifierOutputWithNoAttention"
    torch.save(se, tmp_path / "se.pt")
    again = torch.load(tmp_path / "se.pt", weights_only=False)
    assert torch.equal(again(x).logits, se(x).logits)


def test_a_residual_whose_branch_begins_in_the_caller_is_gated_there():
    """transformers' EfficientNet adds the block's input to its branch inside ``projection``, which is
    given both: the SE (``squeeze_excite``) is on the branch, in the caller's graph."""
    model = create_backbone("hf:efficientnet", width_coefficient=0.25, depth_coefficient=1.0, image_size=64,
                            hidden_dim=320)
    plan = se_inject.plan(model, count_flops=False)
    residual = [s.site for s in plan.skipped if s.site.kind == "residual"]
    assert residual and all(s.status is Code.ALREADY_GATED and s.path.endswith(".projection") for s in residual)
    assert not plan.placements


def test_transformer_layers_trace_and_take_token_se_with_nlc():
    """transformers' ViT layers hide their forward behind a checkpointing wrapper and pass **kwargs on:
    traced as the function they wrap, their residual sites are found (tokens: skipped by default)."""
    model = create_backbone("hf:vit", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, image_size=32, patch_size=8).eval()
    plan = se_inject.plan(model, count_flops=False)
    assert not plan.placements and sum(plan.skipped_by_reason().values()) == 4   # attention + MLP, 2 layers
    se = se_inject.apply(model, layouts=["nchw", "nhwc", "nlc"])
    blocks = [m for m in se.modules() if isinstance(m, se_inject.SqueezeExcite)]
    assert len(blocks) == 4
    x = torch.randn(2, 3, 32, 32)
    se.train()
    se(x).logits.sum().backward()
    assert all(p.grad is not None for b in blocks for p in b.parameters())
