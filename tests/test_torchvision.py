"""torchvision as a first-class source: its own SE recognised, detectors and segmenters handled, the
paper's placement on its families, and feature maps of any rank (video: 3-D, sequences: 1-D)."""
from collections import Counter

import pytest
import torch
import torchvision
from torch import nn

import se_inject
from se_inject import SqueezeExcite


def tv(name, **kw):
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None, **kw).eval()


def n_se(model):
    return sum(isinstance(m, SqueezeExcite) for m in model.modules())


@pytest.mark.parametrize("name,added,gated", [
    ("efficientnet_b0", 0, 9),       # timm's efficientnet_b0: 0 added, "already gated"
    ("regnet_y_400mf", 0, 16),       # timm regnety_004: 0
    ("mobilenet_v3_small", 1, 5),    # timm mobilenetv3_small_100: 1 (the one residual block without SE)
    ("regnet_x_400mf", 22, 0),       # no SE of its own: every block gets one
])
def test_torchvision_se_is_an_existing_gate(name, added, gated):
    plan = se_inject.plan(tv(name), count_flops=False)
    assert len(plan.placements) == added
    assert plan.skipped_by_reason().get("already gated", 0) == gated


def test_shufflenet_gets_se_in_every_unit_before_the_shuffle():
    model = tv("shufflenet_v2_x0_5")
    plan = se_inject.plan(model, count_flops=False)
    assert plan.by_kind() == {"inception": 3, "split": 13}     # 3 downsampling units, 13 channel-split ones
    out = se_inject.apply(model)
    unit = out.stage2[1]
    assert "self.se(cat)" in unit.code and unit.code.index("self.se(cat)") < unit.code.index("transpose")
    x = torch.randn(2, 3, 64, 64)
    assert out(x).shape == (2, 1000)


def test_densenet_gets_se_at_each_dense_block_output():
    plan = se_inject.plan(tv("densenet121"), count_flops=False)
    assert plan.by_kind() == {"concat": 4}
    assert [p.module_path for p in plan.placements] == [f"features.denseblock{i}.se" for i in range(1, 5)]
    assert any("dense-block outputs" in n for n in plan.notes)


def test_detector_gets_se_in_its_backbone_and_still_detects():
    model = tv("fasterrcnn_mobilenet_v3_large_320_fpn", weights_backbone=None, min_size=128, max_size=160)
    images = [torch.rand(3, 128, 160), torch.rand(3, 120, 128)]
    out = se_inject.apply(model)
    plan = se_inject.plan(model, count_flops=False)
    assert plan.traced.root == "backbone" and plan.model_name == "FasterRCNN.backbone"
    assert n_se(out) == len(plan.placements) > 0
    assert all(p.module_path.startswith("backbone.") for p in plan.placements)
    with torch.no_grad():
        detections = out(images)
    assert len(detections) == 2 and set(detections[0]) == {"boxes", "labels", "scores"}
    out.train()
    losses = out(images, [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 80.0]]), "labels": torch.tensor([1])}] * 2)
    sum(losses.values()).backward()
    assert any(m.fc2.weight.grad is not None for m in out.modules() if isinstance(m, SqueezeExcite))


def test_dilated_segmentation_backbone_stages_follow_the_network():
    """DeepLabV3 trades the last two strides for dilation: layer3 and layer4 are stages 4 and 5
    as in the undilated ResNet, not all stage 3 (their maps are all 1/8 of the input)."""
    plan = se_inject.plan(tv("deeplabv3_resnet50", weights_backbone=None, aux_loss=False), count_flops=False)
    stages = Counter(p.label.split("_")[1] for p in plan.placements if p.module_path.startswith("backbone.layer"))
    assert stages == {"2": 3, "3": 4, "4": 6, "5": 3}
    x = torch.randn(1, 3, 64, 64)
    assert se_inject.apply(tv("fcn_resnet50", weights_backbone=None))(x)["out"].shape == (1, 21, 64, 64)


@pytest.mark.parametrize("name", ["r3d_18", "r2plus1d_18"])
def test_video_nets_get_3d_se(name):
    model = tv(name)
    out = se_inject.apply(model, init="identity")
    blocks = [m for m in out.modules() if isinstance(m, SqueezeExcite)]
    assert len(blocks) == 8 and all(b.spatial_dims == 3 for b in blocks)
    x = torch.randn(1, 3, 8, 56, 56)
    with torch.no_grad():
        assert torch.equal(out(x), model(x))   # identity init: the clip's logits unchanged
    out.train()
    out(x).sum().backward()
    assert all(b.fc2.weight.grad.abs().sum() > 0 for b in blocks)


class Residual1d(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv1d(c, c, 9, padding=4, bias=False), nn.BatchNorm1d(c)
        self.conv2, self.bn2 = nn.Conv1d(c, c, 9, padding=4, bias=False), nn.BatchNorm1d(c)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class AudioNet(nn.Module):
    """A 1-D ResNet on raw waveforms (torchaudio M5-style stem)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv1d(1, 32, 80, stride=16), nn.BatchNorm1d(32), nn.ReLU(), nn.MaxPool1d(4))
        self.blocks = nn.Sequential(Residual1d(32), Residual1d(32))
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean(-1))


def test_one_dimensional_maps_get_se():
    model = AudioNet().eval()
    plan = se_inject.plan(model)   # input size from the first conv: (1, 16000)
    assert plan.input_size == (1, 16000) and len(plan.placements) == 2
    assert {(p.site.layout, p.site.spatial) for p in plan.placements} == {("nchw", (249,))}
    out = se_inject.apply(model)
    assert all(m.spatial_dims == 1 for m in out.modules() if isinstance(m, SqueezeExcite))
    assert out(torch.randn(2, 1, 8000)).shape == (2, 10)   # another length works too


def test_new_blocks_follow_their_owner_mode():
    model = tv("resnet18")
    assert not any(m.training for m in se_inject.apply(model).modules())
    assert all(m.training for m in se_inject.apply(model.train()).modules() if isinstance(m, SqueezeExcite))


def test_swin_v2_post_norm_se_gates_channels_at_any_size():
    """Swin V2's attention registers its position MLP (``Linear(512, heads)``) after its output
    projection: the SE after ``norm1`` must still read ``(B, H, W, C)`` as channels last (it gated the
    56 rows of a 224 px map, and raised at any other size)."""
    model = se_inject.apply(tv("swin_v2_t").eval(), input_size=(3, 96, 96))
    se = model.features[1][0].se1
    assert se.fc1.in_features == 96   # the block's channels, not the map's height
    with torch.no_grad():
        for side in (96, 128):
            assert model(torch.randn(1, 3, side, side)).shape == (1, 1000)
