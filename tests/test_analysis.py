"""se_inject.analysis: per-class excitations (paper §6.3, Fig. 8)."""
import pytest
import torch

import se_inject
from se_inject.analysis import Excitations, plot_excitations, record_excitations


def batches(n=3, classes=4, size=48):
    g = torch.Generator().manual_seed(0)
    for _ in range(n):
        y = torch.arange(8) % classes
        # class-dependent inputs so that late blocks can tell classes apart
        x = torch.randn(8, 3, size, size, generator=g) + y[:, None, None, None].float()
        yield x, y


def test_per_class_means_match_a_manual_average(timm_model):
    model = se_inject.apply(timm_model("resnet18", num_classes=4)).eval()
    exc = record_excitations(model, list(batches()))
    assert exc.blocks[0] == "layer1.0.se" and exc.labels["layer1.0.se"] == "SE_2_1"
    assert exc.counts.tolist() == [6, 6, 6, 6]
    # recompute one block's class-0 mean by hand
    seen = []
    h = model.layer1[0].se.gate.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        for x, y in batches():
            model(x)
    h.remove()
    acts = torch.cat(seen)
    labels = torch.cat([y for _, y in batches()])
    torch.testing.assert_close(exc.per_class["layer1.0.se"][0], acts[labels == 0].mean(0), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(exc.overall["layer1.0.se"], acts.mean(0), atol=1e-6, rtol=1e-5)
    assert all(0 <= exc.saturation(b) <= 1 and exc.spread(b) >= 0 for b in exc.blocks)
    assert "SE_5_2" in exc.summary()


def test_save_load_and_plot(timm_model, tmp_path):
    model = se_inject.apply(timm_model("resnet18", num_classes=4))
    exc = record_excitations(model, list(batches(1)))
    exc.save(tmp_path / "exc.pt")
    again = Excitations.load(tmp_path / "exc.pt")
    assert again.blocks == exc.blocks and torch.equal(again.per_class["layer4.1.se"], exc.per_class["layer4.1.se"])
    png = plot_excitations(exc, tmp_path / "fig8.png", classes=[0, 1, 2])
    assert png.stat().st_size > 10_000


def test_model_without_se_is_a_clear_error(timm_model):
    with pytest.raises(se_inject.SEInjectError, match="has no SqueezeExcite block: apply se_inject first"):
        record_excitations(timm_model("resnet18"), list(batches(1)))
