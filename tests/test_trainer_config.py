"""trainers.config / trainers.schema: one validated config, one-line errors naming the key, nothing starts."""
from __future__ import annotations

import dataclasses

import pytest

from trainer_runs import REPO, command, env
from trainers.config import (TrainConfig, config_reference, dump_config, list_recipes, load_config)
from trainers.errors import ConfigError


def test_defaults_are_the_fashion_mnist_run():
    cfg = load_config()
    assert (cfg.data.dataset, cfg.model.name, cfg.model.se, cfg.ema) == ("fashion-mnist", "cifar_resnet20", None, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.run.epochs = 3  # type: ignore[misc]


def test_set_overrides_parse_values_as_yaml():
    cfg = load_config(None, ["optim.lr=1e-3", "data.mean=[0.5]", "model.se.r=8", "ema.decay=0.99",
                             "model.kwargs={drop_rate: 0.1}", "checkpoint.every_steps=null"])
    assert cfg.optim.lr == 0.001 and cfg.data.mean == (0.5,)
    assert cfg.model.se.policy == "paper" and cfg.model.se.overrides == {"r": 8}  # se: null -> section turned on
    assert cfg.ema.decay == 0.99 and cfg.model.kwargs == {"drop_rate": 0.1}


@pytest.mark.parametrize("overrides,message", [
    (["optim.lrr=0.1"], "--set optim.lrr=0.1: key 'optim.lrr' is not a config key (did you mean 'optim.lr'?)"),
    (["run.outdir=x"], "key 'run.outdir' is not a config key (did you mean 'run.out_dir'?)"),
    (["optim.lr=fast"], "--set optim.lr=fast: key 'optim.lr' must be a number >= 0, got 'fast' (str)"),
    (["optim.lr=-1"], "--set optim.lr=-1: key 'optim.lr' must be a number >= 0, got -1 (int)"),
    (["run.amp=bf61"], "key 'run.amp' must be one of none, bf16, fp16, got 'bf61' (did you mean 'bf16'?)"),
    (["run.compile=yes please"], "key 'run.compile' must be true or false, got 'yes please' (str)"),
    (["data.batch_size=0"], "key 'data.batch_size' must be an integer >= 1, got 0 (int)"),
    (["data.input_size=[1, 28]"], "key 'data.input_size' must be a list of 3 integers >= 1 or null, got [1, 28] (list)"),
    (["data.mean=[0.5, x]"], "key 'data.mean[1]' must be a number, got 'x' (str)"),
    (["data.mean=[0.5"], "key 'data.mean' must be a list of numbers or null, got '[0.5' (str)"),
    (["optim.opt=sgdd"], "key 'optim.opt': 'sgdd' is not a timm optimizer (did you mean 'sgd'?)"),
    (["model.name=cifar_resnet21"], "key 'model.name': unknown backbone 'cifar_resnet21' (did you mean"),
    (["model.se.rr=4"], "--set model.se.rr=4: key 'model.se.rr' is not a policy key (did you mean 'model.se.r'?)"),
    (["model.se={policy: paper, r: 0}"], "--set model.se={policy: paper, r: 0}: key 'model.se.r' must be a finite number > 0"),
    (["model.se.policy=papr"], "key 'model.se.policy': papr: not a preset"),
    (["optim=0.1"], "key 'optim' must be a mapping of keys (opt, lr, lr_base_batch, momentum, ...), got 0.1 (float)"),
    (["data.dataset=imagefolder"], "data.root is required for data.dataset=imagefolder"),
    (["data.aug={scale: [1, 0.5]}"], "--set data.aug={scale: [1, 0.5]}: key 'data.aug.scale' must be [low, high] with low <= high"),
    (["lr"], "expected key=value"),
])
def test_bad_overrides_are_one_line_errors_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_errors_in_a_file_name_the_file(tmp_path):
    bad = tmp_path / "run.yaml"
    bad.write_text("optim:\n  lr: 0.1\n  momentun: 0.9\n")
    with pytest.raises(ConfigError, match=r"run.yaml: key 'optim.momentun' is not a config key \(did you mean 'optim.momentum'\?\)"):
        load_config(str(bad))
    bad.write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match=r"run.yaml:2: not valid YAML: expected ',' or '\]'"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="config 'nope.yaml' not found; pass a YAML path or a recipe"):
        load_config("nope.yaml")


@pytest.mark.parametrize("recipe", list_recipes())
def test_recipes_load_and_round_trip_through_run_yaml(recipe, tmp_path):
    cfg = load_config(recipe, ["data.root=/somewhere"])
    path = tmp_path / "run.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(str(path)) == cfg


def test_reference_in_the_docs_is_generated_from_the_dataclasses():
    page = (REPO / "docs" / "training.md").read_text()
    assert config_reference() in page, "regenerate: python -c 'from trainers.config import config_reference; print(config_reference())'"
    keys = [line.split("`")[1] for line in config_reference().splitlines()[2:]]
    for f in dataclasses.fields(TrainConfig):
        assert any(k.startswith(f.name + ".") or k == f.name for k in keys)


def test_cli_config_error_is_one_line_and_nothing_starts(tmp_path):
    import subprocess
    out = tmp_path / "run"
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"run:\n  out_dir: {out}\nsched:\n  nmae: cosine\n")
    p = subprocess.run(command(["--config", str(bad)]), cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip() == f"ConfigError: {bad}: key 'sched.nmae' is not a config key (did you mean 'sched.name'?)"
    assert p.stdout == "" and not out.exists()
