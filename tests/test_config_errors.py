"""Every bad YAML file and ``--set`` value, through every command that reads one, is one stderr line
naming the key (or the file and line), exit status 2, and nothing starts: the policy commands fail
before a model is built, ``train`` before training, ``compare --dry-run`` before listing runs.

In-process (``main([...])``), so the whole matrix takes seconds."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from se_inject_cli import main

#: case -> (YAML policy file, --set item, what the error line must contain)
POLICY_CASES = {
    "yaml-syntax": ("r: [16\n", None, ["bad.yaml:2: not valid YAML"]),
    "unknown-key": ("rr: 8\n", "rr=8", ["key 'rr' is not a policy key (did you mean 'r'?)"]),
    "wrong-type": ("r: sixteen\n", "r=sixteen", ["key 'r' must be a finite number > 0, got 'sixteen' (str)"]),
    "out-of-range": ("divisor: 0\n", "divisor=0", ["key 'divisor' must be an integer >= 1, got 0 (int)"]),
    "list-item": ("kinds: [residual, inceptoin]\n", "kinds=[residual, inceptoin]",
                  ["key 'kinds[1]' must be one of", "(did you mean 'inception'?)"]),
    "set-no-equals": (None, "skip_last_stage", ["--set 'skip_last_stage': expected key=value"]),
    "set-not-yaml": (None, "layouts=[nchw", ["--set layouts=[nchw: key 'layouts' must be a list of nchw, nhwc, nlc, "
                                             "got '[nchw'"]),
}

TRAIN_CASES = {
    "yaml-syntax": ("optim: {lr: [0.1}\n", None, ["bad.yaml:1: not valid YAML"]),
    "unknown-key": ("optim: {momentun: 0.9}\n", "optim.momentun=0.9",
                    ["key 'optim.momentun' is not a config key (did you mean 'optim.momentum'?)"]),
    "wrong-type": ("optim: {lr: fast}\n", "optim.lr=fast", ["key 'optim.lr' must be a number >= 0, got 'fast' (str)"]),
    "out-of-range": ("data: {batch_size: 0}\n", "data.batch_size=0",
                     ["key 'data.batch_size' must be an integer >= 1, got 0 (int)"]),
    "policy-key": ("model: {se: {policy: paper, r: 0}}\n", "model.se.r=0",
                   ["key 'model.se.r' must be a finite number > 0, got 0 (int)"]),
    "set-no-equals": (None, "optim.lr", ["--set 'optim.lr': expected key=value"]),
    "set-not-yaml": (None, "data.mean=[0.5", ["--set data.mean=[0.5: key 'data.mean' must be a list of numbers or null, "
                                              "got '[0.5'"]),
}

COMPARE = """
config: fashion-mnist
set: {run.epochs: 1}
backbones: [cifar_resnet8]
seeds: [0]
variants: {baseline: null, se-r4: {policy: paper, r: 4}}
"""
#: case -> ((old, new) edit of COMPARE, what the error line must contain)
COMPARE_CASES = {
    "yaml-syntax": (("seeds: [0]", "seeds: [0"), ["compare.yaml:6: not valid YAML", "(while parsing a flow sequence from line 5)"]),
    "unknown-key": (("seeds: [0]", "sedes: [0]"), ["key 'sedes' is not a comparison key (did you mean 'seeds'?)"]),
    "wrong-type": (("seeds: [0]", "seeds: [zero]"), ["key 'seeds[0]' must be an integer, got 'zero' (str)"]),
    "out-of-range": (("seeds: [0]", "seeds: [0]\nlaunch: {parallel: 0}"),
                     ["key 'launch.parallel' must be an integer >= 1, got 0 (int)"]),
    "policy-key": (("r: 4", "rr: 4"), ["key 'variants.se-r4.rr' is not a policy key (did you mean 'variants.se-r4.r'?)"]),
    "set-unknown-key": (("run.epochs: 1", "run.epochz: 1"),
                        ["compare.yaml: set: key 'run.epochz' is not a config key (did you mean 'run.epochs'?)"]),
    "set-wrong-type": (("run.epochs: 1", "optim.lr: fast"), ["set: key 'optim.lr' must be a number >= 0, got 'fast'"]),
    "set-out-of-range": (("run.epochs: 1", "run.epochs: 0"), ["set: key 'run.epochs' must be an integer >= 1, got 0"]),
    "set-not-a-mapping": (("set: {run.epochs: 1}", "set: run.epochs=1"),
                          ["key 'set' must be a mapping trainer key -> value, e.g. {run.epochs: 5}, got 'run.epochs=1'"]),
}


def _write(tmp_path: Path, text: str, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _one_line_error(capsys, argv: list[str], expected: list[str], runner=main) -> str:
    assert runner(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.endswith("\n"), err
    for text in expected:
        assert text in err, f"{text!r} not in {err!r}"
    return err


def _policy_argv(command: str, tmp_path: Path) -> list[str]:
    out = {"plan": [], "apply": ["-o", str(tmp_path / "m.pt")], "export": ["-o", str(tmp_path / "m.onnx")]}[command]
    return [command, "cifar_resnet8", *out]


def _cases(table: dict, *, files: bool, sets: bool) -> list:
    return [pytest.param(case, how, id=f"{how}-{case}") for case, (text, item, _) in table.items()
            for how in ("file", "set") if (how == "file" and files and text) or (how == "set" and sets and item)]


@pytest.mark.parametrize("command", ["plan", "apply", "export"])
@pytest.mark.parametrize("case,how", _cases(POLICY_CASES, files=True, sets=True))
def test_model_commands(command, case, how, tmp_path, capsys):
    text, item, expected = POLICY_CASES[case]
    argv = _policy_argv(command, tmp_path)
    argv += ["--policy", str(_write(tmp_path, text))] if how == "file" else ["--set", item]
    err = _one_line_error(capsys, argv, expected)
    assert err.startswith(f"se-inject {command}: PolicyError: ")
    assert ("bad.yaml" in err) if how == "file" else (f"--set {item}" in err or repr(item) in err)
    assert list(tmp_path.glob("m.*")) == []


@pytest.mark.parametrize("case", [c for c, (text, _, _) in POLICY_CASES.items() if text])
def test_policy_command(case, tmp_path, capsys):
    text, _, expected = POLICY_CASES[case]
    err = _one_line_error(capsys, ["policy", str(_write(tmp_path, text))], expected)
    assert err.startswith("se-inject policy: PolicyError: ") and "bad.yaml" in err


@pytest.mark.parametrize("entry", ["se-inject train", "python -m trainers.train"])
@pytest.mark.parametrize("case,how", _cases(TRAIN_CASES, files=True, sets=True))
def test_train(entry, case, how, tmp_path, capsys):
    text, item, expected = TRAIN_CASES[case]
    out = tmp_path / "run"
    argv = ["--set", f"run.out_dir={out}"]
    argv += ["--config", str(_write(tmp_path, text))] if how == "file" else ["--set", item]
    if entry == "se-inject train":
        err = _one_line_error(capsys, ["train", *argv], expected)
        assert err.startswith("se-inject train: ConfigError: ")
    else:
        from trainers.train import main as train_main
        err = _one_line_error(capsys, argv, expected, runner=train_main)
        assert err.startswith("ConfigError: ")
    assert ("bad.yaml" in err) if how == "file" else item.split("=")[0] in err
    assert not out.exists()  # failed at validation: no run folder, no training


@pytest.mark.parametrize("case", list(COMPARE_CASES))
def test_compare_dry_run(case, tmp_path, capsys):
    edit, expected = COMPARE_CASES[case]
    assert edit[0] in COMPARE
    path = _write(tmp_path, COMPARE.replace(*edit), "compare.yaml")
    err = _one_line_error(capsys, ["compare", "--config", str(path), "--out", str(tmp_path / "out"), "--dry-run"],
                          expected)
    assert err.startswith("se-inject compare: CompareError: ") and "compare.yaml" in err
    assert not (tmp_path / "out").exists()


def test_the_matrix_reads_a_good_file_and_set_without_error(tmp_path, capsys):
    """The same commands with valid input succeed: the errors above come from the bad values only."""
    good = _write(tmp_path, "base: paper\nr: 8\nkinds: residual\n", "good.yaml")
    assert main(["policy", str(good)]) == 0
    assert main(["plan", "cifar_resnet8", "--policy", str(good), "--set", "layouts=[nchw, nlc]"]) == 0
    assert "policy" in capsys.readouterr().out
    path = _write(tmp_path, COMPARE, "compare.yaml")
    assert main(["compare", "--config", str(path), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    assert "cifar_resnet8/se-r4/seed0" in capsys.readouterr().out


STUDY = """
backbones: [cifar_resnet8]
seeds: [0]
se: {policy: paper, r: 16}
train: {set: {run.epochs: 1}}
prune: {amounts: [0.5], criteria: [excitation, magnitude]}
"""
#: case -> ((old, new) edit of STUDY, what the error line must contain)
STUDY_CASES = {
    "yaml-syntax": (("seeds: [0]", "seeds: [0"), ["study.yaml:4: not valid YAML", "(while parsing a flow sequence from line 3)"]),
    "unknown-key": (("seeds: [0]", "sedes: [0]"), ["key 'sedes' is not a study key (did you mean 'seeds'?)"]),
    "wrong-type": (("seeds: [0]", "seeds: [zero]"), ["key 'seeds[0]' must be an integer >= 0, got 'zero' (str)"]),
    "out-of-range": (("amounts: [0.5]", "amounts: [1.5]"),
                     ["key 'prune.amounts[0]' must be a number >= 0 and <= 0.95, got 1.5 (float)"]),
    "list-item": (("magnitude]", "magnitdue]"), ["key 'prune.criteria[1]' must be one of",
                                                "(did you mean 'magnitude'?)"]),
    "policy-key": (("r: 16", "rr: 16"), ["key 'se.rr' is not a policy key (did you mean 'se.r'?)"]),
    "set-unknown-key": (("run.epochs: 1", "run.epochz: 1"),
                        ["study.yaml: train.set: key 'run.epochz' is not a config key (did you mean 'run.epochs'?)"]),
    "set-out-of-range": (("run.epochs: 1", "run.epochs: 0"),
                         ["train.set: key 'run.epochs' must be an integer >= 1, got 0"]),
}


@pytest.mark.parametrize("case", list(STUDY_CASES))
def test_compress_study_dry_run(case, tmp_path, capsys):
    """The compression study's file goes through the same validator: the same one-line errors."""
    from trainers.compress_study.cli import main as study_main
    edit, expected = STUDY_CASES[case]
    assert edit[0] in STUDY
    path = _write(tmp_path, STUDY.replace(*edit), "study.yaml")
    err = _one_line_error(capsys, ["--config", str(path), "--out", str(tmp_path / "out"), "--dry-run"], expected,
                          runner=study_main)
    assert err.startswith("ConfigError: ") and "study.yaml" in err
    assert not (tmp_path / "out").exists()
    assert study_main(["--config", str(_write(tmp_path, STUDY, "study.yaml")), "--out", str(tmp_path / "out"),
                       "--dry-run"]) == 0
