"""se_inject._extras: every feature whose extra is missing fails in one line naming the extra, from
Python and from the CLI, before any work. A missing package is simulated the way Python itself
spells it: ``sys.modules[name] = None`` makes ``import name`` raise and ``find_spec`` find nothing."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

import se_inject
from se_inject import MissingExtraError, SEInjectError
from se_inject._extras import EXTRAS, missing, require
from se_inject_cli.app import COMMANDS, NEEDS, main

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: extras that group others or serve development, not a feature
GROUPS = {"all", "dev", "docs"}


def _message(what: str, extra: str) -> str:
    return rf"^{re.escape(what)} needs the {extra} extra \(.+ not installed\): pip install 'se-inject\[{extra}\]'$"


def _hide(monkeypatch, extra: str) -> None:
    """Make the last module of ``extra`` unimportable (the others stay: one missing is enough)."""
    monkeypatch.setitem(sys.modules, EXTRAS[extra][-1], None)


def _dist_module(requirement: str) -> str:
    """``torch-pruning>=1.6`` -> ``torch_pruning``: the import name of a requirement."""
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("-", "_")


def test_the_extras_table_is_pyprojects():
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert set(EXTRAS) == set(extras) - GROUPS
    for name, modules in EXTRAS.items():
        assert sorted(modules) == sorted(_dist_module(r) for r in extras[name]), name
    (everything,) = extras["all"]
    assert set(re.fullmatch(r"se-inject\[(.+)\]", everything).group(1).split(",")) == set(EXTRAS)
    assert "se-inject[all,docs]" in extras["dev"]   # make docs and the docs tests run in the dev venv


def test_the_core_needs_no_extra():
    """plan/apply import nothing of an extra: the core installs without them."""
    core = {_dist_module(r) for r in PYPROJECT["project"]["dependencies"]}
    assert core == {"torch", "torchvision", "timm", "networkx", "pyyaml", "safetensors"}
    assert not core & {m for modules in EXTRAS.values() for m in modules}
    code = ("import sys\nfor m in {mods!r}: sys.modules[m] = None\n"
            "import timm, se_inject\nm = se_inject.apply(timm.create_model('resnet18'))\n"
            "print(se_inject.plan(timm.create_model('resnet18')).totals().splitlines()[0])")
    mods = sorted({m for modules in EXTRAS.values() for m in modules} - {"tqdm"})   # tqdm comes with timm's hub client
    out = subprocess.run([sys.executable, "-c", code.format(mods=mods)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("params:")


def test_require_passes_when_installed_and_names_the_extra_when_not(monkeypatch):
    for extra in EXTRAS:
        if not missing(extra):
            require(extra, for_="x")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert missing("onnx") == ["onnxruntime"]
    with pytest.raises(MissingExtraError, match=_message("se_inject.export_onnx", "onnx")) as info:
        require("onnx", for_="se_inject.export_onnx")
    assert isinstance(info.value, SEInjectError) and isinstance(info.value, ImportError)
    assert (info.value.extra, info.value.missing) == ("onnx", ("onnxruntime",))
    with pytest.raises(KeyError, match="unknown extra 'onxx'"):
        require("onxx", for_="x")


# ---- each Python entry point, called as a user would, before any work --------------------------

def _export(tmp_path):
    out = tmp_path / "m.onnx"
    se_inject.export_onnx(torch.nn.Conv2d(3, 4, 3), out, (3, 8, 8))
    return out


def _se_nodes(tmp_path):
    se_inject.se_nodes(tmp_path / "m.onnx")


def _prune(tmp_path):
    se_inject.prune(torch.nn.Conv2d(3, 4, 3), None, 0.5)


def _plot(tmp_path):
    from se_inject.analysis import plot_excitations
    plot_excitations(None, tmp_path / "x.png")


def _train(tmp_path):
    from trainers import load_config
    from trainers.trainer import train   # trainers.train is also a module: once imported, it shadows the function
    train(load_config("fashion-mnist", [f"run.out_dir={tmp_path / 'run'}"]))


def _tensorboard(tmp_path):
    from trainers import load_config
    from trainers.trainer import train
    train(load_config(None, [f"run.out_dir={tmp_path / 'run'}", "run.tensorboard=true"]))


def _compare(tmp_path):
    from trainers.compare import run_comparison
    run_comparison(ROOT / "examples" / "fashion_mnist_compare.yaml", tmp_path / "cmp")


def _run_matrix(tmp_path):
    from trainers.compare import run_matrix
    run_matrix(None)


def _report(tmp_path):
    from trainers.compare import write_report
    write_report(tmp_path)


def _study(tmp_path):
    from trainers.compress_study import run_study
    run_study(None)


ENTRY_POINTS = [  # (call, extra, what the message names)
    (_export, "onnx", "se_inject.export_onnx"),
    (_se_nodes, "onnx", "se_inject.se_nodes"),
    (_prune, "prune", "se_inject.prune"),
    (_plot, "train", "se_inject.analysis.plot_excitations"),
    (_train, "train", "trainers.train"),
    (_tensorboard, "tensorboard", "run.tensorboard=true"),
    (_compare, "train", "trainers.compare.run_comparison"),
    (_run_matrix, "train", "trainers.compare.run_matrix"),
    (_report, "train", "trainers.compare.write_report"),
    (_study, "prune", "trainers.compress_study"),
]


@pytest.mark.parametrize("call, extra, what", ENTRY_POINTS, ids=[e[2] for e in ENTRY_POINTS])
def test_a_python_entry_point_names_its_missing_extra(call, extra, what, tmp_path, monkeypatch):
    _hide(monkeypatch, extra)
    if extra == "prune":   # se_inject.prune loads its module on first use: load it again, without torch_pruning
        monkeypatch.delitem(se_inject.__dict__, "prune", raising=False)
        for name in ("pruning", "importance", "prunable"):
            monkeypatch.delitem(sys.modules, f"se_inject.compress.{name}", raising=False)
    with pytest.raises(MissingExtraError, match=_message(what, extra)):
        call(tmp_path)
    assert not list(tmp_path.iterdir())   # failed before any work


# ---- the CLI: exit 2, one line ------------------------------------------------------------------

CLI_ARGS = {"export": ["resnet18", "-o", "m.onnx"], "train": ["--config", "fashion-mnist"],
            "compare": ["--config", "compare.yaml"], "search": ["search.yaml", "-o", "out"], "report": ["runs"], "excitations": ["run"],
            "prune": ["run", "--amount", "0.5", "-o", "p.pt"]}


def test_every_command_that_needs_an_extra_is_tested():
    assert set(CLI_ARGS) == set(NEEDS) and set(NEEDS) <= set(COMMANDS)


@pytest.mark.parametrize("command", sorted(NEEDS))
def test_a_command_names_its_missing_extra_in_one_line(command, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    _hide(monkeypatch, NEEDS[command])
    assert main([command, *CLI_ARGS[command]]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert re.fullmatch(rf"se-inject {command}: MissingExtraError: " + _message(f"se-inject {command}", NEEDS[command])[1:]
                        , err.strip()), err
    assert not list(tmp_path.iterdir())


def test_the_installed_command_prints_one_line_and_exits_2(tmp_path):
    """The real entry point in a fresh process, none of the onnx extra installed: no traceback on
    stderr, and the line is the one the README and the install page quote."""
    code = ("import sys\nfor m in ('onnx', 'onnxruntime', 'onnxscript'): sys.modules[m] = None\n"
            "from se_inject_cli import main; sys.exit(main())")
    out = subprocess.run([sys.executable, "-c", code, "export", "resnet18", "-o", str(tmp_path / "m.onnx")],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2
    line = ("se-inject export: MissingExtraError: se-inject export needs the onnx extra (onnx, onnxruntime, "
            "onnxscript not installed): pip install 'se-inject[onnx]'")
    assert out.stderr == line + "\n"
    assert line in (ROOT / "README.md").read_text()
    assert line in (ROOT / "docs" / "install.md").read_text()
