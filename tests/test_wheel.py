"""The real artifact: the sdist and the wheel built from it, installed (not the checkout) into a clean
venv, then used from outside the checkout as a user would: presets and recipes load, ``se-inject
--version``, ``se-inject plan``, ``apply`` equals timm's twin, ``export_onnx`` with the onnx extra, one
Fashion-MNIST epoch with the train extra. A module, preset or recipe missing from the wheel fails here.

The build reads the files git tracks (what a clone has: a file not yet ``git add``-ed is missing from
the wheel here, as it would be in CI). The clean venv has no packages of its own but se-inject: it
sees the development venv's site-packages (torch 2.14.1 and the rest, without its editable
se-inject) through one path entry, so nothing is downloaded and pip runs with ``--no-index``.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("se_inject", "se_inject_cli", "backbones", "trainers")
#: what the development venv's view leaves out: its own install of se-inject (editable or not)
OURS = re.compile(r"^(__editable__|se_inject|backbones$|trainers$)|\.pth$")


def _tracked() -> list[str]:
    """The files git tracks; outside a git checkout (an unpacked sdist) every file but build output."""
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, text=True)
    if out.returncode == 0:
        return [name for name in out.stdout.split("\0") if name and (ROOT / name).is_file()]
    skip = re.compile(r"(^|/)(\.venv|\.compat|\.git|build|dist|runs|__pycache__|[^/]+\.egg-info)(/|$)")
    return [str(f.relative_to(ROOT)) for f in ROOT.rglob("*") if f.is_file() and not skip.search(str(f.relative_to(ROOT)))]


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """``(sdist, wheel, tracked files)``: ``python -m build`` (sdist, then the wheel from the sdist)."""
    tmp = tmp_path_factory.mktemp("build")
    tracked = _tracked()
    for name in tracked:
        (tmp / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tmp / "src" / name)
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", tmp / "dist", tmp / "src"])
    (sdist,) = (tmp / "dist").glob("se_inject-*.tar.gz")
    (wheel,) = (tmp / "dist").glob("se_inject-*-py3-none-any.whl")
    return sdist, wheel, tracked


@pytest.fixture(scope="module")
def venv(built, tmp_path_factory):
    """A venv with the wheel and its onnx + train extras installed, and a folder outside the checkout."""
    _, wheel, _ = built
    tmp = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--without-pip", tmp / "venv"])
    view = tmp / "dev-site-packages"
    view.mkdir()
    dev_site = Path(sysconfig.get_paths()["purelib"])
    for entry in dev_site.iterdir():
        if not OURS.search(entry.name):
            (view / entry.name).symlink_to(entry)
    py = tmp / "venv" / "bin" / "python"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "_se_inject_dev_packages.pth").write_text(f"{view}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{tmp / 'venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    # --no-index: every dependency (torch 2.14.1 included) must already be there; nothing is fetched
    _run([py, "-m", "pip", "install", "-q", "--no-index", f"{wheel}[onnx,train]"], env=env)
    work = tmp / "work"
    work.mkdir()
    return py, env, work


def test_the_wheel_and_sdist_hold_every_module_preset_and_recipe(built):
    sdist, wheel, tracked = built
    shipped = [n for n in tracked if n.split("/")[0] in PACKAGES and n.endswith((".py", ".yaml"))]
    assert any(n.startswith("se_inject/presets/") for n in shipped) and any(n.startswith("trainers/recipes/") for n in shipped)
    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    assert [n for n in shipped if n not in in_wheel] == []
    with tarfile.open(sdist) as tar:
        in_sdist = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert [n for n in shipped if n not in in_sdist] == []
    metadata = zipfile.ZipFile(wheel).read(f"{wheel.name.split('-py3')[0]}.dist-info/METADATA").decode()
    assert re.search(r"^Requires-Dist: torch>=", metadata, re.M)          # a range, not the dev pin
    assert not re.search(r"^Requires-Dist: (onnxruntime|matplotlib|torch-pruning)[^;]*$", metadata, re.M)


def test_the_installed_wheel_runs_from_outside_the_checkout(venv):
    py, env, work = venv
    version = re.search(r'^__version__ = "(.+)"', (ROOT / "se_inject" / "__init__.py").read_text(), re.M).group(1)
    assert _run(["se-inject", "--version"], env=env, cwd=work).stdout.strip() == f"se-inject {version}"
    smoke = f"""
import importlib.metadata, pathlib, sys
import torch, timm, se_inject
from trainers.config import list_recipes, load_config
here = pathlib.Path(se_inject.__file__)
assert here.is_relative_to(sys.prefix), f"se_inject imported from {{here}}, not the venv {{sys.prefix}}"
assert importlib.metadata.version("se-inject") == se_inject.__version__ == {version!r}
assert se_inject.list_presets() == {sorted(p.stem for p in (ROOT / 'se_inject' / 'presets').glob('*.yaml'))!r}
for name in se_inject.list_presets():
    se_inject.load_policy(name)
assert list_recipes() == {sorted(p.stem for p in (ROOT / 'trainers' / 'recipes').glob('*.yaml'))!r}
for name in list_recipes():
    load_config(name, ["data.root=."])   # senet-paper's ImageNet folder is the user's to give
ours, ref = se_inject.apply(timm.create_model("resnet50"), r=16), timm.create_model("seresnet50")
ours.load_state_dict(ref.state_dict())
x = torch.randn(1, 3, 224, 224)
with torch.no_grad():
    assert (ours.eval()(x) - ref.eval()(x)).abs().max() <= 1e-5
report = se_inject.export_onnx(se_inject.apply(timm.create_model("resnet18")), "se_resnet18.onnx", (3, 64, 64))
assert report.max_rel_diff <= 1e-4 and report.se_blocks, report
print("ok", torch.__version__, len(report.se_blocks))
"""
    out = _run([py, "-c", smoke], env=env, cwd=work).stdout
    assert out.startswith("ok 2.") and (work / "se_resnet18.onnx").exists()
    plan = _run(["se-inject", "plan", "resnet50"], env=env, cwd=work).stdout
    assert "params: 25,557,032 -> 28,088,024" in plan


def test_the_installed_wheel_trains_one_fashion_mnist_epoch(venv):
    py, env, work = venv
    _run(["se-inject", "train", "--config", "fashion-mnist", "--set", "run.epochs=1", "--set", "run.out_dir=run",
          "--set", "data.limit_train_batches=3", "--set", "data.limit_val_batches=2", "--set", "data.workers=0",
          "--set", "data.batch_size=32", "--set", "model.se.policy=paper", "--set", "run.progress=false"],
         env=env, cwd=work)
    assert (work / "run" / "model.safetensors").exists() and (work / "run" / "metrics.jsonl").read_text().strip()
