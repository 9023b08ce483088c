"""se_inject_cli: the commands as users type them (in-process, through main())."""
import subprocess
import sys

import torch

from se_inject_cli import main


def test_plan_prints_table_and_totals(capsys):
    assert main(["plan", "resnet50", "--r", "16"]) == 0
    out = capsys.readouterr().out
    assert "SE_5_3  residual  layer4.2" in out and "(+2,530,992, +9.90%)" in out


def test_plan_with_policy_and_set(capsys):
    assert main(["plan", "resnet50", "--policy", "paper-no-last-stage", "--set", "exclude=[layer1.*]"]) == 0
    assert "10 SE blocks" in capsys.readouterr().out


def test_bad_override_is_one_line_exit_2(capsys):
    assert main(["plan", "resnet18", "--set", "rr=3"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "se-inject plan: PolicyError: --set rr=3: key 'rr' is not a policy key (did you mean 'r'?)"


def test_unknown_model(capsys):
    assert main(["plan", "resnet5O"]) == 2
    assert "unknown backbone 'resnet5O' (did you mean 'resnet50'?)" in capsys.readouterr().err


def test_apply_saves_model_and_weights(tmp_path, capsys):
    out = tmp_path / "se_resnet18.pt"
    assert main(["apply", "resnet18", "--divisor", "8", "-o", str(out)]) == 0
    model = torch.load(out, weights_only=False)
    assert type(model).__name__ == "ResNet" and "layer1.0.se.fc1.weight" in model.state_dict()
    weights = tmp_path / "w.safetensors"
    assert main(["apply", "resnet18", "-o", str(weights)]) == 0
    from safetensors.torch import load_file
    assert "layer4.1.se.fc2.bias" in load_file(weights)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_apply_writes_a_folder_that_load_pretrained_reads(tmp_path, capsys):
    import se_inject
    out = tmp_path / "se_cifar_resnet8"
    assert main(["apply", "cifar_resnet8", "--r", "4", "--input-size", "3", "32", "32", "-o", str(out)]) == 0
    assert f"se_inject.load_pretrained('{out}')" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    model = se_inject.load_pretrained(out)
    assert model.layer1[0].se.reduced == 4
    assert main(["apply", "cifar_resnet8", "-o", str(tmp_path / "w.safetensors")]) == 0   # weights alone, as before
    assert "note: weights only; -o" in capsys.readouterr().out
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    assert main(["apply", "cifar_resnet8", "-o", str(tmp_path / "taken")]) == 2
    assert "exists and is not a folder save_pretrained wrote" in capsys.readouterr().err


def test_apply_to_missing_directory_fails_before_work(tmp_path, capsys):
    assert main(["apply", "resnet18", "-o", str(tmp_path / "nope" / "m.pt")]) == 2
    assert "does not exist; create it or choose another -o" in capsys.readouterr().err


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "se_inject_cli", "--help"], capture_output=True, text=True, check=True)
    assert "plan" in out.stdout and "apply" in out.stdout


def test_policy_command(capsys):
    assert main(["policy"]) == 0
    assert "paper-no-last-stage" in capsys.readouterr().out
    assert main(["policy", "paper-no-last-stage"]) == 0
    assert "skip_last_stage: true" in capsys.readouterr().out
    assert main(["policy", "--reference"]) == 0
    assert "| `r` | `16` |" in capsys.readouterr().out


def test_policy_none_plans_and_applies_the_plain_backbone(tmp_path, capsys):
    assert main(["plan", "resnet18", "--policy", "none"]) == 0
    out = capsys.readouterr().out
    assert "0 SE blocks" in out and "the plain backbone" in out
    path = tmp_path / "plain.pt"
    assert main(["apply", "resnet18", "--policy", "none", "-o", str(path)]) == 0
    assert not any(".se." in k for k in torch.load(path, weights_only=False).state_dict())


def test_torchvision_name_suggested_with_its_prefix(capsys):
    assert main(["plan", "tv:resnet5"]) == 2
    assert "unknown backbone 'tv:resnet5' (did you mean 'tv:resnet50'?)" in capsys.readouterr().err


def test_written_files_follow_the_umask(tmp_path, capsys):
    import os
    old = os.umask(0o022)
    try:
        out = tmp_path / "m.safetensors"
        assert main(["apply", "resnet18", "-o", str(out)]) == 0
        assert out.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


def test_old_entry_point_still_works_and_says_where_to_go(capsys):
    import pytest

    from se_inject import cli as old
    with pytest.deprecated_call(match="se_inject_cli"):
        assert old.main(["policy"]) == 0
    assert "paper-no-last-stage" in capsys.readouterr().out


def test_export_shares_the_model_options(tmp_path, capsys):
    """--set/--init/--divisor reach the plan, which is made at --input-size (issue 12)."""
    out = tmp_path / "m.onnx"
    assert main(["export", "resnet18", "--divisor", "8", "--set", "exclude=[layer4.*]", "--input-size", "3", "64", "64",
                 "--no-check", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "layer1.0.se" in text and "layer4" not in text.split("SE blocks:")[1].split("\n")[0]
