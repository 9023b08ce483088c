"""trainers.checkpoint: atomic, verified checkpoints; broken ones are named in one line, auto-resume falls back."""
from __future__ import annotations

import json
import subprocess

import pytest
import torch

from trainer_runs import REPO, assert_identical, command, env, run
from trainers.checkpoint import (EMA_FILE, MANIFEST_FILE, MODEL_FILE, STATE_FILE, find_latest, list_checkpoints,
                                 load_checkpoint, save_checkpoint)
from trainers.errors import CheckpointError


def _save(root, step, value=1.0, state=None):
    return save_checkpoint(root, step, {"w": torch.full((4,), value)}, {"w": torch.zeros(4)},
                           state if state is not None else {"step": step}, keep_last=3)


def test_round_trip_with_manifest(tmp_path):
    path = _save(tmp_path, 5, 2.0)
    assert sorted(p.name for p in path.iterdir()) == sorted([MODEL_FILE, EMA_FILE, STATE_FILE, MANIFEST_FILE])
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    assert set(manifest["files"]) == {MODEL_FILE, EMA_FILE, STATE_FILE}
    c = load_checkpoint(path / MODEL_FILE)  # any file of the checkpoint names it
    assert c.model["w"].tolist() == [2.0] * 4 and c.ema["w"].tolist() == [0.0] * 4 and c.state == {"step": 5}


def test_keeps_the_newest_and_cleans_interrupted_writes(tmp_path):
    (tmp_path / ".tmp-step-00000009-123").mkdir(parents=True)  # a write killed half-way
    for step in range(1, 6):
        _save(tmp_path, step)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000005", "step-00000004", "step-00000003"]
    assert not list(tmp_path.glob(".tmp-*"))


def test_channels_last_weights_save(tmp_path):
    w = torch.randn(8, 3, 3, 3).contiguous(memory_format=torch.channels_last)
    path = save_checkpoint(tmp_path, 1, {"w": w}, None, {})
    assert torch.equal(load_checkpoint(path).model["w"], w)


def _truncate(f):
    f.write_bytes(f.read_bytes()[:-7])


def _flip_byte(f):
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))


@pytest.mark.parametrize("name,damage,reason", [
    (MODEL_FILE, _truncate, "is truncated or corrupt"),
    (STATE_FILE, _truncate, "is truncated or corrupt"),
    (EMA_FILE, _flip_byte, "is corrupt (SHA-256 differs"),
    (MANIFEST_FILE, lambda f: f.unlink(), "is incomplete"),
    (MANIFEST_FILE, lambda f: f.write_text("{"), "is corrupt"),
])
def test_damage_is_a_one_line_error_naming_the_file(tmp_path, name, damage, reason):
    path = _save(tmp_path, 3)
    damage(path / name)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    message = str(e.value)
    assert reason in message and "\n" not in message
    assert str(path / name) in message or (name == MANIFEST_FILE and str(path) in message)


class Custom:  # a pickled class: what torch.load(weights_only=True) refuses to execute
    pass


def test_trainer_state_loads_weights_only(tmp_path):
    path = _save(tmp_path, 1, state={"x": Custom()})
    with pytest.raises(CheckpointError, match=f"{STATE_FILE} does not load"):
        load_checkpoint(path)


def test_find_latest_falls_back_with_a_warning(tmp_path):
    _save(tmp_path, 1, 1.0)
    _save(tmp_path, 2, 2.0)
    _truncate(tmp_path / "step-00000002" / MODEL_FILE)
    warnings = []
    c = find_latest(tmp_path, warnings.append)
    assert c.path.name == "step-00000001" and c.model["w"][0] == 1.0
    assert len(warnings) == 1 and "step-00000002/model.safetensors is truncated" in warnings[0]
    assert warnings[0].endswith("falling back to step-00000001")
    _truncate(tmp_path / "step-00000001" / STATE_FILE)
    with pytest.raises(CheckpointError, match="no readable checkpoint in"):
        find_latest(tmp_path, warnings.append)
    assert find_latest(tmp_path / "nothing-here", warnings.append) is None


@pytest.mark.slow
def test_trainer_falls_back_on_auto_and_refuses_a_named_broken_checkpoint(tmp_path):
    out = tmp_path / "run"
    args = ["--set", f"run.out_dir={out}", "--set", "run.deterministic=true", "--set", "run.epochs=2",
            "--set", "run.progress=false", "--set", "data.dataset=synthetic", "--set", "data.synthetic.train_samples=256",
            "--set", "data.synthetic.val_samples=32", "--set", "data.synthetic.size=[3,16,16]", "--set", "data.batch_size=32",
            "--set", "data.workers=0", "--set", "model.name=cifar_resnet8", "--set", "ema.decay=0.9",
            "--set", "checkpoint.every_steps=3", "--set", "checkpoint.keep_last=2"]
    run(args)
    from safetensors.torch import load_file
    reference = load_file(str(out / "model.safetensors"))
    newest, older = list_checkpoints(out / "checkpoints")
    assert (newest.name, older.name) == ("step-00000016", "step-00000015")

    _truncate(newest / MODEL_FILE)
    expected = json.loads((newest / MANIFEST_FILE).read_text())["files"][MODEL_FILE]["bytes"]
    problem = (f"checkpoint file {newest / MODEL_FILE} is truncated or corrupt "
               f"({(newest / MODEL_FILE).stat().st_size} bytes, manifest says {expected})")
    p = subprocess.run(command(args + ["--resume", str(newest)]), cwd=REPO, env=env(), capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [f"CheckpointError: {problem}"]

    resumed = run(args + ["--resume", "auto"])
    warnings = [line for line in resumed.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {problem}; falling back to step-00000015"]
    assert f"resumed from {older} at epoch 1, batch 7/8 (step 15)" in resumed.stdout
    # the redone step lands where the uninterrupted run did
    assert_identical(reference, load_file(str(out / "model.safetensors")), "model")
    assert load_checkpoint(out / "checkpoints" / "step-00000016").path.name == "step-00000016"
