"""trainers.checkpoint: atomic, verified checkpoints; broken ones are named in one line, auto-resume falls back."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

from trainer_runs import REPO, assert_identical, command, complete_steps, env, run
from trainers.checkpoint import (EMA_FILE, MANIFEST_FILE, MODEL_FILE, STATE_FILE, find_latest, list_checkpoints,
                                 load_checkpoint, save_checkpoint, set_aside_later)
from trainers.errors import CheckpointError, CheckpointWriteError


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
    aside = out / "checkpoints" / "superseded-00000015"
    assert warnings == [f"warning: {problem}; falling back to step-00000015",
                        f"warning: resumed at step 15: the checkpoints past it (step-00000016) moved to {aside}, so new "
                        "checkpoints are kept and --resume auto continues this run"]
    assert f"resumed from {older} at epoch 1, batch 7/8 (step 15)" in resumed.stdout
    # the redone step lands where the uninterrupted run did
    assert_identical(reference, load_file(str(out / "model.safetensors")), "model")
    assert load_checkpoint(out / "checkpoints" / "step-00000016").path.name == "step-00000016"
    assert [p.name for p in aside.iterdir()] == ["step-00000016"]  # the broken one, kept for a look, out of the way


@pytest.mark.slow
def test_a_rewound_run_keeps_its_own_checkpoints_and_auto_resume_continues_it(tmp_path):
    """``--resume`` an older checkpoint: the old timeline past it must neither push the new checkpoints out of
    ``keep_last`` nor be what ``--resume auto`` picks next."""
    from trainers.train import main
    out = tmp_path / "run"
    sets = [f"run.out_dir={out}", "run.deterministic=true", "run.progress=false", "data.dataset=synthetic",
            "data.synthetic.train_samples=128", "data.synthetic.val_samples=16", "data.synthetic.size=[3,8,8]",
            "data.batch_size=16", "data.workers=0", "model.name=cifar_resnet8", "checkpoint.every_steps=2"]
    args = [a for s in sets for a in ("--set", s)]
    assert main(args + ["--set", "run.epochs=2", "--set", "checkpoint.keep_last=100"]) == 0  # 8 steps an epoch
    # rewind to step 4 and train to the end of epoch 0 (a lower lr, say): steps 6 and 8 again, keep_last 2
    assert main(args + ["--set", "run.epochs=1", "--set", "checkpoint.keep_last=2", "--set", "optim.lr=0.01",
                        "--resume", str(out / "checkpoints" / "step-00000004")]) == 0
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-00000008", "step-00000006"]
    aside = sorted(p.name for p in (out / "checkpoints" / "superseded-00000004").iterdir())
    assert aside == [f"step-{s:08d}" for s in (6, 8, 10, 12, 14, 16)]  # the old timeline, whole
    assert load_checkpoint(out / "checkpoints" / "step-00000008").state["config"].count("lr: 0.01") == 1
    # --resume auto continues the rewound run, not the old one
    assert main(args + ["--set", "run.epochs=2", "--set", "checkpoint.keep_last=2", "--set", "optim.lr=0.01",
                        "--resume", "auto"]) == 0
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-00000016", "step-00000014"]


@pytest.mark.slow
def test_an_elastic_restart_resumes_what_its_own_launch_chose_or_wrote(tmp_path, monkeypatch, capsys):
    """A rewind whose set-aside fails part-way leaves old-timeline checkpoints as the newest in the folder. torchrun
    restarts the group (TORCHELASTIC_RESTART_COUNT > 0): it must resume the checkpoint named again and end where a
    rewind never cut short ends. Once the launch has written checkpoints, a restart torchrun does not count (a node
    joined or left) goes on from the launch's own newest, though keep_last has pruned the checkpoint named."""
    from trainers import checkpoint as ckpt
    from trainers.train import main
    from safetensors.torch import load_file
    out, clean = tmp_path / "run", tmp_path / "clean"
    sets = ["run.deterministic=true", "run.progress=false", "data.dataset=synthetic", "data.synthetic.train_samples=128",
            "data.synthetic.val_samples=16", "data.synthetic.size=[3,8,8]", "data.batch_size=16", "data.workers=0",
            "model.name=cifar_resnet8", "checkpoint.every_steps=2"]
    args = [a for s in sets for a in ("--set", s)]
    assert main(args + ["--set", f"run.out_dir={out}", "--set", "run.epochs=2", "--set", "checkpoint.keep_last=100"]) == 0
    monkeypatch.chdir(out)
    named = "checkpoints/step-00000004/model.safetensors"  # relative, a file of it: as a user may type it
    rewind = args + ["--set", "optim.lr=0.01", "--set", "checkpoint.keep_last=2", "--resume", named]
    assert main(rewind + ["--set", f"run.out_dir={clean}", "--set", "run.epochs=1"]) == 0  # into a folder of its own
    assert ckpt.launch_of(clean / "checkpoints" / "step-00000008") == {"resume": named, "torchrun_run_id": ""}

    real_replace, moves = os.replace, []

    def replace_then_fail(src, dst):
        if Path(dst).parent.name.startswith("superseded-"):
            moves.append(Path(src).name)
            if len(moves) > 1:
                raise OSError(5, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", replace_then_fail)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch-1")  # torchrun's, the same in every attempt of one launch
    assert main(rewind + ["--set", f"run.out_dir={out}", "--set", "run.epochs=1"]) == 2  # only step-16 moved
    assert "cannot move the checkpoints past step 4" in capsys.readouterr().err
    assert [p.name for p in list_checkpoints(out / "checkpoints")][0] == "step-00000014"  # the old timeline's

    monkeypatch.setattr(ckpt.os, "replace", real_replace)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert main(rewind + ["--set", f"run.out_dir={out}", "--set", "run.epochs=1"]) == 0
    assert (f"elastic restart 1: no checkpoint of this launch yet in {out / 'checkpoints'}, choosing as it did "
            f"(--resume {named})") in capsys.readouterr().out
    assert_identical(load_file(str(clean / "model.safetensors")), load_file(str(out / "model.safetensors")), "model")
    aside = sorted(p.name for f in (out / "checkpoints").glob("superseded-00000004*") for p in f.iterdir())
    assert aside == [f"step-{s:08d}" for s in (6, 8, 10, 12, 14, 16)]  # the old timeline, in the two tries' folders
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-00000008", "step-00000006"]

    # the launch goes on after a restart torchrun does not count: from its own step 8 (step-4 is pruned by now)
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT")
    assert main(rewind + ["--set", f"run.out_dir={out}", "--set", "run.epochs=2"]) == 0
    printed = capsys.readouterr().out
    assert (f"torchrun run launch-1 already wrote checkpoints here (a restart after a node joined or left, or a "
            f"requeue): resuming from the newest complete checkpoint of this launch, {out / 'checkpoints'}/step-00000008"
            ) in printed and "(step 8)" in printed
    # another launch naming the same checkpoint (run id of its own) chooses afresh: step-4 is gone
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch-2")
    assert main(rewind + ["--set", f"run.out_dir={out}", "--set", "run.epochs=2"]) == 2
    assert f"checkpoint {named} not found" in capsys.readouterr().err


# -- writes that fail: a full disk, an I/O error mid-checkpoint --------------------------------------------------

def _enospc(*args, **kwargs):
    import errno
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["trainers.checkpoint.torch.save", "trainers.checkpoint._fsync_dir", "os.replace"])
def test_a_failed_write_leaves_the_previous_checkpoint_and_no_debris(tmp_path, monkeypatch, where):
    first = save_checkpoint(tmp_path, 1, {"w": torch.ones(4)}, None, {"step": 1}, keep_last=1)
    monkeypatch.setattr(where, _enospc)  # the model file is written by then: the failure is mid-checkpoint
    with pytest.raises(CheckpointWriteError) as e:
        save_checkpoint(tmp_path, 2, {"w": torch.zeros(4)}, None, {"step": 2}, keep_last=1)
    monkeypatch.undo()
    message = str(e.value)
    assert re.fullmatch(rf"checkpoint {tmp_path}/step-00000002 not written \(No space left on device, [\d.]+ MB free "
                        r"there\); step-00000001 is intact", message), message
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000001"]  # keep_last=1 removed nothing, no .tmp left
    assert find_latest(tmp_path, pytest.fail).path == first


def test_a_failed_write_names_the_set_aside_checkpoints_one_may_delete(tmp_path, monkeypatch):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"w": torch.ones(4)}, None, {"step": step}, keep_last=5)
    set_aside_later(tmp_path, 1)
    monkeypatch.setattr("trainers.checkpoint.torch.save", _enospc)
    aside = re.escape(str(tmp_path / "superseded-00000001"))
    with pytest.raises(CheckpointWriteError, match=rf"step-00000001 is intact; the checkpoints set aside in {aside} "
                                                   "take space too$"):
        save_checkpoint(tmp_path, 2, {"w": torch.zeros(4)}, None, {"step": 2})


def test_rewriting_a_step_keeps_the_old_one_if_the_new_one_cannot_be_moved_in(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 3, {"w": torch.ones(4)}, None, {"v": "old"})
    real_replace = os.replace

    def replace(src, dst):  # the old checkpoint may be moved aside, the new one not moved in
        if ".tmp-" in str(src):
            _enospc()
        real_replace(src, dst)

    monkeypatch.setattr("os.replace", replace)
    with pytest.raises(CheckpointWriteError, match="step-00000003 is intact"):
        save_checkpoint(tmp_path, 3, {"w": torch.zeros(4)}, None, {"v": "new"})
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "step-00000003").state == {"v": "old"}
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000003"]


def _small_run(out, *overrides):
    from trainers import load_config
    return load_config(None, [f"run.out_dir={out}", "run.epochs=1", "run.progress=false", "data.dataset=synthetic",
                              "data.synthetic.train_samples=96", "data.synthetic.val_samples=16",
                              "data.synthetic.size=[3,8,8]", "data.batch_size=16", "data.workers=0",
                              "model.name=cifar_resnet8", "checkpoint.every_steps=2", "checkpoint.keep_last=1",
                              *overrides])


def _fail_write_number(monkeypatch, n: int) -> None:
    """The n-th checkpoint this process writes from now on fails half-way (after its model file)."""
    import trainers.checkpoint as ckpt
    real, calls = ckpt.torch.save, []

    def save(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            _enospc()
        return real(*args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", save)


def test_a_run_stops_on_a_failed_checkpoint_write_by_default(tmp_path, monkeypatch):
    from trainers.trainer import train  # not trainers.train: once imported, the submodule shadows the function
    out = tmp_path / "run"
    _fail_write_number(monkeypatch, 2)  # step 2 is written, step 4 is not
    with pytest.raises(CheckpointWriteError) as e:
        train(_small_run(out))
    assert re.fullmatch(rf"checkpoint {out}/checkpoints/step-00000004 not written \(No space left on device, [\d.]+ MB "
                        r"free there\); step-00000002 is intact: free space and run again with --resume auto, or set "
                        r"checkpoint.on_write_error=continue", str(e.value)), str(e.value)
    assert complete_steps(out) == [2] and not list((out / "checkpoints").glob(".tmp-*"))


def test_a_run_goes_on_past_a_failed_checkpoint_write_if_told_to(tmp_path, monkeypatch, capsys):
    from trainers.trainer import train  # not trainers.train: once imported, the submodule shadows the function
    out = tmp_path / "run"
    _fail_write_number(monkeypatch, 2)
    result = train(_small_run(out, "checkpoint.on_write_error=continue"))
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].endswith(
        "; step-00000002 is intact; training goes on (checkpoint.on_write_error=continue)")
    assert result.num_updates == 6 and complete_steps(out) == [6]  # the next checkpoints were written
    assert (out / "model.safetensors").exists()


def test_final_weights_are_whole_or_not_there(tmp_path, monkeypatch):
    from trainers.checkpoint import save_weights
    target = tmp_path / "model.safetensors"
    save_weights({"w": torch.ones(4)}, target)
    monkeypatch.setattr("os.replace", _enospc)  # written beside it, never renamed into place
    with pytest.raises(CheckpointWriteError, match=rf"^{target} not written \(No space left on device\); the newest "):
        save_weights({"w": torch.zeros(4)}, target)
    monkeypatch.undo()
    from safetensors.torch import load_file
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    assert load_file(str(target))["w"].tolist() == [1.0] * 4  # the old weights, untouched
