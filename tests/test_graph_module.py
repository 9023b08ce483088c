"""se_inject.graph_module: a rewritten owner stays the module it replaced (class, children, hooks,
state), through deepcopy and pickling, and falls back gracefully where classes cannot combine."""
import copy
import pickle

import timm
import torch
from torch import nn

import se_inject
from se_inject.graph_module import OwnerGraphModule, original_class, original_class_name


def test_unused_children_hooks_and_attributes_survive_a_rewrite(timm_model):
    model = timm_model("resnet18", drop_path_rate=0.1)
    model.layer4[1].register_forward_hook(lambda m, i, o: None)
    model.layer4[1].note = "mine"
    before = [n for n, _ in model.layer4[1].named_children()]
    block = se_inject.apply(model).layer4[1]
    assert "drop_path" in before
    assert [n for n, _ in block.named_children() if n != "se"] == before  # every child kept, in order
    assert block.note == "mine" and len(block._forward_hooks) == 1
    assert original_class(block) is timm.models.resnet.BasicBlock
    assert original_class_name(block) == "timm.models.resnet.BasicBlock"


def test_deepcopy_and_pickle_keep_class_and_numbers(timm_model):
    block = se_inject.apply(timm_model("resnet18")).layer1[0]
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        ref = block(x)
    for other in (copy.deepcopy(block), pickle.loads(pickle.dumps(block))):
        assert isinstance(other, OwnerGraphModule) and isinstance(other, timm.models.resnet.BasicBlock)
        with torch.no_grad():
            assert torch.equal(other(x), ref)


class Odd(nn.Module):
    """A class with slots: an fx graph module cannot take its memory layout."""
    __slots__ = ("extra",)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return x + self.conv(x)


def test_a_class_that_cannot_be_combined_stays_a_plain_owner_graph_module():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), Odd())
    out = se_inject.apply(model, input_size=(3, 8, 8))
    owner = out[1]
    assert isinstance(owner, OwnerGraphModule) and not isinstance(owner, Odd)
    assert type(owner).__name__ == "Odd" and original_class_name(owner).endswith(".Odd")
    assert out(torch.randn(1, 3, 8, 8)).shape == (1, 4, 8, 8)


class Constant(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return x + self.conv(x) * torch.tensor([0.5])


def test_fx_constants_are_non_persistent_buffers_of_the_owner():
    out = se_inject.apply(nn.Sequential(nn.Conv2d(3, 4, 1), Constant()), input_size=(3, 8, 8))
    owner = out[1]
    constants = [n for n, _ in owner.named_buffers() if n.startswith("_tensor_constant")]
    assert constants and not any(k.startswith("1._tensor_constant") for k in out.state_dict())
    assert owner.to(torch.float64).get_buffer(constants[0]).dtype == torch.float64
