"""se_inject.rewrite: graph surgery details (fusion, in-place reuse, names, rollback)."""
import torch

import se_inject
from se_inject import SqueezeExcite


def test_fused_and_unfused_agree(timm_model):
    model = timm_model("resnet50")
    fused = se_inject.apply(model)
    unfused = se_inject.apply(model, fuse_add=False)
    unfused.load_state_dict(fused.state_dict())
    assert "self.se(bn3, downsample)" in fused.layer1[0].code and "add" not in fused.layer1[0].code
    assert "self.se(bn3)" in unfused.layer1[0].code
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert (fused(x) - unfused(x)).abs().max() <= 1e-5


def test_inference_reuses_only_fresh_branch_outputs(timm_model):
    """In no-grad mode the fused add may write into the branch output (as timm's `x += shortcut`
    does), but never into a view such as DPN's channel slices."""
    resnet = se_inject.apply(timm_model("resnet50"))
    assert all(m.reuse_input for m in resnet.modules() if isinstance(m, SqueezeExcite))
    dpn = timm_model("dpn68")
    se_dpn = se_inject.apply(dpn, init="identity")
    flags = [m.reuse_input for m in se_dpn.modules() if isinstance(m, SqueezeExcite)]
    assert flags and not any(flags)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert (se_dpn(x) - dpn(x)).abs().max() <= 1e-6


def test_identity_tail_is_bypassed_not_lost(timm_model):
    """A zero-rate drop path between the branch and the add is bypassed by the fused add; the
    module itself stays (state dict, attribute)."""
    model = timm_model("cspresnet50")
    out = se_inject.apply(model)
    block = out.stages[0].blocks[0]
    assert "self.se(conv3" in block.code and hasattr(block, "drop_path")
    assert [n for n, _ in model.named_modules() if n] == [n for n, _ in out.named_modules() if n and ".se" not in n]


def test_specialised_arguments_keep_their_names(timm_model):
    model = se_inject.apply(timm_model("dla34"))
    tree = model.level2.tree1
    assert "def forward(self, x, shortcut" in tree.code and "children = None" in tree.code
    x = torch.randn(1, 32, 56, 56)
    with torch.no_grad():
        tree(x, children=None)  # callers that pass the argument by name still work
