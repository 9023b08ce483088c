"""se_inject.rewrite: graph surgery details (fusion, in-place reuse, names, rollback)."""
import warnings

import pytest
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
    assert "def forward(self, x, shortcut" in tree.code
    assert "children : typing_Union[typing_List[torch.Tensor],NoneType] = None" in tree.code  # its annotation too
    x = torch.randn(1, 32, 56, 56)
    with torch.no_grad():
        tree(x, children=None)  # callers that pass the argument by name still work


class _SharedUnit(torch.nn.Module):
    """A residual conv unit that one model holds and two of its blocks run (CoaT's cpe/crpe)."""

    def __init__(self, c: int = 16):
        super().__init__()
        self.conv, self.bn = torch.nn.Conv2d(c, c, 3, padding=1), torch.nn.BatchNorm2d(c)

    def forward(self, x):
        return x + self.bn(self.conv(x))


class _Block(torch.nn.Module):
    def __init__(self, shared: torch.nn.Module, c: int = 16):
        super().__init__()
        self.pos, self.mix = shared, torch.nn.Conv2d(c, c, 1)

    def forward(self, x):
        return self.mix(self.pos(x)).relu()


class _SharedNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.pos = _SharedUnit()
        self.blocks = torch.nn.Sequential(_Block(self.pos), _Block(self.pos))

    def forward(self, x):
        return self.blocks(self.stem(x)).mean((2, 3))


def test_a_shared_module_is_rewritten_wherever_it_is_held():
    """The shared unit is planned once (at its first path) and every block runs the rewritten one:
    its SE block runs twice a forward and gets a gradient."""
    torch.manual_seed(0)
    net = se_inject.apply(_SharedNet(), input_size=(3, 8, 8), init="identity")
    blocks = [m for m in net.modules() if isinstance(m, SqueezeExcite)]
    assert len(blocks) == 1
    assert net.blocks[0].pos is net.pos and net.blocks[1].pos is net.pos
    calls = []
    blocks[0].register_forward_hook(lambda *_: calls.append(1))
    net.train()
    net(torch.randn(2, 3, 8, 8)).sum().backward()
    assert len(calls) == 2
    assert all(p.grad is not None for p in blocks[0].parameters())


class _PlainListNet(torch.nn.Module):
    """Runs its blocks through a plain list that holds the original modules: the rewrite replaces them in the
    ModuleList, so the list still runs the originals, without their SE blocks."""

    def __init__(self):
        super().__init__()
        from torchvision.models.resnet import BasicBlock
        self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.blocks = torch.nn.ModuleList([BasicBlock(16, 16), BasicBlock(16, 16)])
        self.run_these = list(self.blocks)

    def forward(self, x):
        x = self.stem(x)
        for block in self.run_these:
            x = block(x)
        return x.mean((2, 3))


def test_blocks_that_the_check_forward_never_ran_are_named_in_a_warning(timm_model):
    from se_inject.api import BlocksNotRun
    with pytest.warns(BlocksNotRun) as caught:
        se_inject.apply(_PlainListNet(), input_size=(3, 8, 8))
    assert [str(w.message) for w in caught if w.category is BlocksNotRun] == [
        "se_inject.apply: 2 of 2 SE blocks did not run in the check's forward (eval mode): blocks.0.se, blocks.1.se; "
        "the model may call those modules through a plain list or attribute that still holds the originals, or they "
        "sit on a branch that runs only in training"]
    assert caught[0].filename == __file__  # points at the caller's apply
    with warnings.catch_warnings():
        warnings.simplefilter("error", BlocksNotRun)  # every block of a plain model runs: nothing to say
        se_inject.apply(timm_model("resnet18"))
