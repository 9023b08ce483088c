"""se_inject.shapes: the stand-in forward passes (meta, fake, real), recorded calls, input sizes."""
import pytest
import torch
from torch import nn

from se_inject import TraceError
from se_inject.shapes import (BACKENDS, check_input_size, default_input_size, expected_input, forward_shapes,
                              record_calls)


class Twice(nn.Module):
    """Calls one child twice and passes a list (DenseNet's pattern) that it appends to afterwards."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.cat = Cat()

    def forward(self, x):
        feats = [x]
        y = self.cat(feats)
        feats.append(self.conv(x))
        return self.conv(y[:, :3])


class Cat(nn.Module):
    def forward(self, xs):
        return torch.cat(xs, 1)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_every_backend_gives_the_real_shapes_and_leaves_weights_real(timm_model, backend):
    model = timm_model("resnet18")
    assert forward_shapes(model, (3, 64, 64), backend) == (1, 1000)
    assert all(p.device.type == "cpu" and not p.is_meta for p in model.parameters())


def test_recorded_calls_count_repeats_and_copy_containers():
    model = Twice()
    backend = BACKENDS["meta"](model)
    calls = record_calls(model, backend, backend.input((1, 3, 8, 8), torch.device("cpu")))
    assert calls["conv"].count == 2 and calls["cat"].count == 1
    assert len(calls["cat"].args[0]) == 1          # the list as it was when passed, not after the append
    assert calls[""].order < calls["cat"].order < calls["conv"].order


def test_default_input_size_follows_the_model(timm_model):
    assert default_input_size(timm_model("inception_v3")) == (3, 299, 299)      # pretrained_cfg
    assert default_input_size(nn.Sequential(nn.Conv1d(2, 4, 3))) == (2, 16000)   # the first conv's rank
    assert default_input_size(nn.Sequential(nn.Conv3d(3, 4, 3))) == (3, 16, 112, 112)
    assert default_input_size(nn.Linear(2, 2)) == (3, 224, 224)


@pytest.mark.parametrize("size", [(64, 64), (3, 64, 64), (1, 3, 8, 8)])
def test_check_input_size_accepts_two_to_four_positive_ints(size):
    assert check_input_size(size, nn.Conv2d(3, 3, 1)) == size


@pytest.mark.parametrize("size", [(3,), (1, 2, 3, 4, 5), (3, -1, 8), (3, 8.0, 8), "3x8x8", None, (True, 8, 8)])
def test_check_input_size_says_what_is_expected(size):
    with pytest.raises(TraceError, match=r"is not the input's shape without the batch: its first layer is a Conv2d "
                                         r"taking 3 channels: input_size is \(C, H, W\), e.g. \(3, 224, 224\)"):
        check_input_size(size, nn.Sequential(nn.Conv2d(3, 3, 1)))
    assert "(C, L)" in expected_input(nn.Conv1d(1, 2, 3))
