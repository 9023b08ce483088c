"""se_inject.save_pretrained / load_pretrained: one folder in, the same net out, bit for bit; bad input in one line."""
from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
import torch
from torch import nn

import se_inject
from backbones import create_backbone
from se_inject.errors import PretrainedError
from se_inject.pretrained import BaseNotRecorded


def _blocks(model):
    return [(path, m.channels, m.reduced, m.post_act) for path, m in model.named_modules()
            if isinstance(m, se_inject.SqueezeExcite)]


def _round_trip(model, tmp_path, size, **save):
    """Save ``model``, load it back, and check the two are the same net, output for output."""
    folder = se_inject.save_pretrained(model, tmp_path / "saved", **save)
    loaded = se_inject.load_pretrained(folder)
    assert not loaded.training and _blocks(loaded) == _blocks(model)
    assert list(loaded.state_dict()) == list(model.state_dict())
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = model.eval()(x), loaded(x)
    if hasattr(want, "logits"):  # a transformers model returns its ModelOutput, rewritten or loaded
        assert type(got) is type(want)
        want, got = want.logits, got.logits
    assert torch.equal(got, want)
    return loaded


@pytest.mark.parametrize("name, kwargs, size", [
    ("timm:resnet50", {"num_classes": 10}, (3, 64, 64)),
    ("timm:resnext26ts", {}, (3, 64, 64)),                 # ResNeXt: grouped convs
    ("tv:googlenet", {"num_classes": 10, "init_weights": False}, (3, 64, 64)),  # Inception: SE after the concats
    ("cifar_resnet20", {"num_classes": 10, "in_chans": 1}, (1, 28, 28)),  # the project's own
    ("timm:vgg11_bn", {"num_classes": 10}, (3, 32, 32)),  # blocks inside the Sequential's layers (features.2.se)
    ("timm:xception41", {"num_classes": 10}, (3, 96, 96)),  # blocks inside the branch's last layer (holder stack.conv3)
    pytest.param("hf:resnet", {"num_labels": 10, "depths": [1, 1, 1, 1]}, (3, 64, 64),  # transformers, config arguments
                 marks=pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                          reason="the hf extra (transformers) is not installed")),
])
def test_round_trip_by_name_is_bit_for_bit(tmp_path, name, kwargs, size):
    model = se_inject.apply(create_backbone(name, **kwargs), input_size=size)
    _round_trip(model, tmp_path, size)


def test_timm_model_made_by_timm_records_its_arguments(tmp_path):
    import timm
    model = se_inject.apply(timm.create_model("resnet18", num_classes=7, in_chans=1), r=8, divisor=8,
                            input_size=(1, 48, 48))
    loaded = _round_trip(model, tmp_path, (1, 48, 48))
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["base"]["source"] == "timm" and config["base"]["kwargs"]["num_classes"] == 7
    assert loaded.layer1[0].se.reduced == 8


def test_torchvision_model_built_directly_names_its_base(tmp_path):
    import torchvision
    model = se_inject.apply(torchvision.models.resnet18(num_classes=10), input_size=(3, 64, 64))
    _round_trip(model, tmp_path, (3, 64, 64), base="tv:resnet18", base_kwargs={"num_classes": 10})


def test_two_applications_and_a_second_save_round_trip(tmp_path):
    model = create_backbone("cifar_resnet20", num_classes=10)
    model = se_inject.apply(model, include=["layer1.*"], r=4, input_size=(3, 32, 32))
    model = se_inject.apply(model, include=["layer3.*"], r=8, gate="hard_sigmoid", input_size=(3, 32, 32))
    loaded = _round_trip(model, tmp_path, (3, 32, 32))
    again = se_inject.save_pretrained(loaded, tmp_path / "again")
    assert (again / "config.json").read_text() == (tmp_path / "saved" / "config.json").read_text()


def test_a_plain_backbone_round_trips(tmp_path):
    model = create_backbone("cifar_resnet8", num_classes=10)
    loaded = _round_trip(model, tmp_path, (3, 32, 32))
    assert _blocks(loaded) == [] and json.loads((tmp_path / "saved" / "config.json").read_text())["applications"] == []


def test_a_half_precision_model_comes_back_in_its_dtype(tmp_path):
    model = se_inject.apply(create_backbone("cifar_resnet8", num_classes=10), input_size=(3, 32, 32)).to(torch.bfloat16)
    folder = se_inject.save_pretrained(model, tmp_path / "bf16")
    loaded = se_inject.load_pretrained(folder)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    x = torch.randn(2, 3, 32, 32, dtype=torch.bfloat16)
    assert torch.equal(loaded(x), model.eval()(x))


def test_planner_changes_cannot_change_a_loaded_net(tmp_path, monkeypatch):
    """The load takes every decision from the record: with the planner planning nothing (or not at all),
    the saved net comes back as saved."""
    import se_inject.planner as planner
    model = se_inject.apply(create_backbone("cifar_resnet20", num_classes=10), r=4, input_size=(3, 32, 32))
    folder = se_inject.save_pretrained(model, tmp_path / "net")

    from se_inject.codes import Code
    monkeypatch.setattr(planner, "_skip_reason", lambda *a: (Code.EXCLUDED, "a later rule skips every site"))
    with pytest.warns(se_inject.api.NothingInserted):   # the new rules would place nothing...
        assert _blocks(se_inject.apply(create_backbone("cifar_resnet20", num_classes=10))) == []

    def no_planning(*args, **kwargs):
        raise AssertionError("load_pretrained planned")
    monkeypatch.setattr(planner, "make_plan", no_planning)
    monkeypatch.setattr(planner, "find_sites", no_planning)
    loaded = se_inject.load_pretrained(folder)           # ...the saved net is rebuilt all the same
    x = torch.randn(2, 3, 32, 32)
    assert _blocks(loaded) == _blocks(model) and torch.equal(loaded(x), model.eval()(x))


@pytest.mark.slow
def test_trainer_run_loads_as_trained(tmp_path):
    """A tiny real Fashion-MNIST run of an SE net: its run directory loads into the trained model."""
    pytest.importorskip("matplotlib", reason="the train extra is not installed")
    from trainers import load_config, train
    out = tmp_path / "run"
    result = train(load_config("fashion-mnist", [
        f"run.out_dir={out}", "run.epochs=1", "run.progress=false", "data.batch_size=32", "data.workers=0",
        "data.limit_train_batches=4", "data.limit_val_batches=1", "model.name=cifar_resnet8", "model.se.policy=paper",
        "model.se.r=4", "sched.warmup_epochs=0"]))
    assert (out / "config.json").is_file()
    x = torch.randn(4, 1, 28, 28)
    want = result.model.eval()(x)
    loaded = se_inject.load_pretrained(out)
    assert _blocks(loaded) == _blocks(result.model) and len(_blocks(loaded)) == 3
    assert torch.equal(loaded(x), want)
    from trainers import load_run_model
    assert torch.equal(load_run_model(out)(x), want)
    (out / "config.json").unlink()                         # a run from before config.json: rebuilt from run.yaml
    assert torch.equal(load_run_model(out)(x), want)
    with pytest.raises(se_inject.PretrainedError, match="written before runs saved config.json: load it with "
                                                        r"trainers.load_run_model\(run_dir\)"):
        se_inject.load_pretrained(out)


# -- bad input: one line, nothing half-loaded or half-written -----------------------------------

@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A saved small SE net and the model it came from."""
    model = se_inject.apply(create_backbone("cifar_resnet8", num_classes=10), r=4, input_size=(3, 32, 32))
    folder = se_inject.save_pretrained(model, tmp_path_factory.mktemp("small") / "net")
    return model, folder


def _copy(folder, tmp_path):
    return shutil.copytree(folder, tmp_path / "copy")


def _one_line(excinfo, *parts):
    text = str(excinfo.value)
    assert "\n" not in text, text
    for part in parts:
        assert part in text, text


def test_folder_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(PretrainedError) as e:
        se_inject.load_pretrained(tmp_path)
    _one_line(e, "has no config.json", "save_pretrained")
    with pytest.raises(PretrainedError) as e:
        se_inject.load_pretrained(tmp_path / "model.safetensors")
    _one_line(e, "is a file")


def test_config_of_a_newer_major_format(small, tmp_path):
    folder = _copy(small[1], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "format_version": "2.0", "se_inject_version": "9.0.0"}))
    with pytest.raises(PretrainedError) as e:
        se_inject.load_pretrained(folder)
    _one_line(e, "format 2.0 was written by se-inject 9.0.0", "upgrade se-inject")


def test_config_of_a_newer_minor_format_loads(small, tmp_path):
    folder = _copy(small[1], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["format_version"] = "1.7"
    config["notes"] = "a key a later 1.x adds"
    config["applications"][0]["blocks"][0]["new_key"] = 1
    (folder / "config.json").write_text(json.dumps(config))
    assert _blocks(se_inject.load_pretrained(folder)) == _blocks(small[0])


def test_a_bad_config_value_names_the_key(small, tmp_path):
    folder = _copy(small[1], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["applications"][0]["blocks"][1]["channels"] = "many"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(PretrainedError) as e:
        se_inject.load_pretrained(folder)
    _one_line(e, "applications[0].blocks[1].channels")


def test_weights_that_do_not_match_the_recorded_plan(small, tmp_path):
    folder = _copy(small[1], tmp_path)
    other = se_inject.apply(create_backbone("cifar_resnet8", num_classes=10), r=2, input_size=(3, 32, 32))
    shutil.copy(se_inject.save_pretrained(other, tmp_path / "other") / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(PretrainedError) as e:
        se_inject.load_pretrained(folder)
    _one_line(e, "does not fit the net config.json describes", "layer1.0.se.fc1.weight is [4, 16, 1, 1]")


def test_a_recorded_site_the_base_does_not_have(small, tmp_path):
    folder = _copy(small[1], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["applications"][0]["blocks"][0]["node"] = "bn9"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(PretrainedError) as e:
        se_inject.load_pretrained(folder)
    _one_line(e, "recorded SE block layer1.0.se", "no graph node 'bn9'")


def test_a_recorded_holder_the_base_does_not_have(tmp_path):
    model = se_inject.apply(create_backbone("timm:vgg11_bn", num_classes=10), input_size=(3, 32, 32))
    folder = se_inject.save_pretrained(model, tmp_path / "saved")
    config = json.loads((folder / "config.json").read_text())
    block = config["applications"][0]["blocks"][0]
    assert (block["holder"], block["module_path"]) == ("2", "features.2.se")
    block["holder"], block["module_path"] = "99", "features.99.se"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(PretrainedError) as e:
        se_inject.load_pretrained(folder)
    _one_line(e, "recorded SE block features.99.se", "features (Sequential) has no layer '99' to hold it")


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))

    def forward(self, x):
        return torch.relu(x + self.body(x))


class MyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.layer = nn.Sequential(Residual(), Residual())
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.layer(self.stem(x)).mean((2, 3)))


def test_a_users_own_model_needs_base_model(tmp_path):
    model = se_inject.apply(MyResNet(), r=4, input_size=(3, 16, 16))
    assert len(_blocks(model)) == 2
    with pytest.warns(BaseNotRecorded, match="base_model="):
        folder = se_inject.save_pretrained(model, tmp_path / "mine")
    with pytest.raises(PretrainedError) as e:
        se_inject.load_pretrained(folder)
    _one_line(e, "test_pretrained.MyResNet, which se-inject cannot build by name", "base_model=MyResNet(...)")
    plain = MyResNet()
    loaded = se_inject.load_pretrained(folder, base_model=plain)
    assert _blocks(plain) == []                             # the model given is not changed
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(loaded(x), model.eval()(x))
    with pytest.raises(PretrainedError) as e:
        se_inject.load_pretrained(folder, base_model=model)
    _one_line(e, "base_model already holds SE blocks")


def test_save_checks_the_base_it_records(tmp_path):
    import torchvision
    model = se_inject.apply(torchvision.models.resnet18(num_classes=10), input_size=(3, 64, 64))
    with pytest.raises(PretrainedError) as e:
        se_inject.save_pretrained(model, tmp_path / "x", base="tv:resnet18")      # num_classes=1000 by default
    _one_line(e, "the base tv:resnet18() does not build this model", "fc.weight is [1000, 512] in the base")
    with pytest.raises(PretrainedError) as e:
        se_inject.save_pretrained(model, tmp_path / "x", base="tv:resnet1")
    _one_line(e, "base='tv:resnet1'", "did you mean")
    assert not (tmp_path / "x").exists()


def test_save_refuses_a_model_changed_since_apply(tmp_path):
    model = se_inject.apply(create_backbone("cifar_resnet8", num_classes=10), input_size=(3, 32, 32))
    model.layer1[0].se = nn.Identity()
    with pytest.raises(PretrainedError) as e:
        se_inject.save_pretrained(model, tmp_path / "x")
    _one_line(e, "layer1.0.se is a Identity now", "torch.save(model)")
    plain = create_backbone("cifar_resnet8", num_classes=10)
    plain.layer1[0].extra = se_inject.SqueezeExcite(16)
    with pytest.raises(PretrainedError) as e:
        se_inject.save_pretrained(plain, tmp_path / "x")
    _one_line(e, "SqueezeExcite at layer1.0.extra was not placed by a recorded se_inject.apply")
    assert list(tmp_path.iterdir()) == []


def test_folder_is_written_whole_or_not_at_all(small, tmp_path, monkeypatch):
    model, _ = small
    target = tmp_path / "net"
    se_inject.save_pretrained(model, target)
    before = (target / "model.safetensors").read_bytes()
    se_inject.save_pretrained(model, target)                # an earlier save is replaced
    assert (target / "model.safetensors").read_bytes() == before

    import safetensors.torch

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(PretrainedError) as e:
        se_inject.save_pretrained(model, tmp_path / "new")
    _one_line(e, "not written (No space left on device)")
    with pytest.raises(PretrainedError):
        se_inject.save_pretrained(model, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net"]   # no partial folder, no temporary left
    assert (target / "model.safetensors").read_bytes() == before  # the earlier save intact

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(PretrainedError) as e:
        se_inject.save_pretrained(model, other)
    _one_line(e, "exists and is not a folder save_pretrained wrote")
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_a_timm_folder_is_pointed_to_timm(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "resnet50", "num_classes": 1000}))
    with pytest.raises(PretrainedError) as e:
        se_inject.load_pretrained(tmp_path)
    _one_line(e, "is a timm model config", "timm.create_model('local-dir:")
