"""se_inject.graph_facts: what the nodes of an owner's graph are and how they relate."""
import torch
import torchvision
from torch import nn

from se_inject.graph_facts import GraphFacts
from se_inject.tracing import trace_model


def facts(model, path, size=(3, 64, 64)):
    return GraphFacts(trace_model(model, size).graphs[path])


def node(g, predicate):
    return next(n for n in g.mg.graph.nodes if predicate(n))


def test_fork_is_the_adds_immediate_dominator_and_depths_count_learned_layers(timm_model):
    g = facts(timm_model("resnet50"), "layer1.0")
    add = node(g, g.is_add)
    fork = g.idom[add]
    assert fork.op == "placeholder"
    assert sorted(g.depth(fork, t) for t in add.args) == [1, 3]    # downsample conv vs the 3-conv branch


def test_slices_are_carried_not_computed():
    g = facts(torchvision.models.shufflenet_v2_x0_5(), "stage2.1")
    cat = node(g, lambda n: n.target is torch.cat)
    carried, learned = cat.args[0]
    fork = g.idom[cat]
    assert g.is_slice(fork) and g.is_carried(fork, carried) and not g.is_carried(fork, learned)


def test_a_gate_inside_a_container_is_held():
    g = facts(torchvision.models.efficientnet_b0(), "features.2.1")    # MBConv: .block holds the SE
    block = node(g, lambda n: n.op == "call_module" and n.target == "block")
    assert g.holds_gate(block) and not g.is_gate(block)


class Dilated(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
        self.b = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        return x + self.b(self.a(x))


def test_dilation_is_the_smallest_spatial_conv_dilation():
    g = GraphFacts(trace_model(nn.Sequential(nn.Conv2d(3, 8, 1), Dilated()), (3, 16, 16)).graphs["1"])
    add = node(g, g.is_add)
    assert g.dilation(g.region(g.idom[add], add)) == 2              # the 1x1 conv does not count


def test_transparent_tails_are_stepped_over(timm_model):
    g = facts(timm_model("resnet18", drop_path_rate=0.1), "layer1.1")
    add = node(g, g.is_add)
    branch = next(a for a in add.args if a.op == "call_module" and a.target == "drop_path")
    assert g.is_transparent(branch) and g.skip_back(branch).target == "bn2"
