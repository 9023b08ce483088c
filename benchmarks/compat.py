"""Measure the supported torch range: the engine's tests on another torch, from the built wheel.

    python benchmarks/compat.py --torch 2.11.0            # or: make compat TORCH=2.11.0
    python benchmarks/compat.py --torch 2.11.0 --lowest   # timm, networkx, ... at their declared lower bounds

For one torch release it
1. downloads that torch and its torchvision from the package index into ``.compat/wheels`` (kept: the
   CUDA builds run on the CPU but weigh ~3 GB with their nvidia-* wheels; a second run reads them
   from there), ignoring pip's local find-links, whose CPU-only build PyPI's torchvision cannot load
   beside;
2. builds a venv ``.compat/torch-<version>`` with them, offline from the wheelhouse (kept and reused);
3. builds se-inject's wheel from the files git tracks and installs it with the onnx extra and
   pytest, the torch pinned (``--lowest``: every other core dependency pinned at the lower bound
   ``pyproject.toml`` declares, measuring those bounds too);
4. runs ``se_inject._torch_compat.check()`` and the engine's tests (plan, apply, the timm twins,
   export) against the installed wheel, from outside the checkout;
5. appends a row to ``benchmarks/results/compat.md``: versions, date, check(), pass/fail counts and
   the command.

Exit status 0 only when check() is clean and no test failed.
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPAT = ROOT / ".compat"
RESULTS = ROOT / "benchmarks" / "results" / "compat.md"

#: torch minor -> the torchvision minor released with it (torchvision pins torch exactly).
TORCHVISION = {"2.8": "0.23", "2.9": "0.24", "2.10": "0.25", "2.11": "0.26", "2.12": "0.27", "2.13": "0.28",
               "2.14": "0.29", "2.15": "0.30"}

#: the engine's tests: private torch names, plan/apply and the timm twins, rewrite, tracing, export.
TESTS = ["test_torch_compat.py", "test_api.py", "test_ecosystem.py", "test_planner.py", "test_rewrite.py",
         "test_tracing.py", "test_block.py", "test_export.py", "test_torchvision.py", "test_sites.py", "test_gates.py",
         "test_holders.py", "test_pretrained.py"]

HEADER = """# Supported torch range: the engine's tests on each torch, from the built wheel

Each row: `benchmarks/compat.py` (`make compat TORCH=<version>`) built a venv with that torch and its
torchvision from the package index (CUDA builds, run on the CPU), installed se-inject's wheel with the
onnx extra into it, and ran `se_inject._torch_compat.check()` and the engine's tests
({tests}) from outside the checkout. `lowest` rows pin every other core dependency at the lower bound
pyproject.toml declares (timm and the rest of the core: networkx, PyYAML, safetensors); the others take
what pip resolves. Append-only: the newest row of a version is its current state.

| date | torch | torchvision | timm | other dependencies | python | check() | passed | failed | skipped | seconds | command |
|---|---|---|---|---|---|---|---|---|---|---|---|
"""


def run(cmd: list[str], *, env: dict | None = None, cwd: Path | None = None, capture: bool = False) -> str:
    print("+ " + " ".join(map(str, cmd)), flush=True)
    out = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, check=True, text=True,
                         stdout=subprocess.PIPE if capture else None)
    return out.stdout if capture else ""


def pip_env(wheelhouse: Path) -> dict:
    """pip's environment with the wheelhouse as its only find-links (a local CPU build of torch,
    which PyPI's torchvision cannot load beside, is never picked) and no PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PIP_FIND_LINKS"] = str(wheelhouse)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def torchvision_for(torch_version: str) -> str:
    minor = ".".join(torch_version.split(".")[:2])
    if minor not in TORCHVISION:
        raise SystemExit(f"no torchvision known for torch {torch_version}; add it to TORCHVISION in {__file__}")
    return f"{TORCHVISION[minor]}.*"


def build_venv(torch_version: str, wheelhouse: Path) -> Path:
    """``.compat/torch-<version>`` with that torch and torchvision (reused once complete)."""
    venv = COMPAT / f"torch-{torch_version}"
    done = venv / ".complete"
    if done.exists():
        print(f"reusing {venv}")
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    env = pip_env(wheelhouse)
    pins = [f"torch=={torch_version}", f"torchvision=={torchvision_for(torch_version)}"]
    run([sys.executable, "-m", "pip", "download", "-q", "--only-binary", ":all:", "--dest", wheelhouse, *pins], env=env)
    run([sys.executable, "-m", "venv", venv])
    py = venv / "bin" / "python"
    run([py, "-m", "pip", "install", "-q", "--no-index", *pins], env=env)   # offline, from the wheelhouse
    done.write_text(run([py, "-m", "pip", "freeze"], env=env, capture=True))
    return venv


def build_wheel(dest: Path) -> Path:
    """se-inject's wheel, built from the files git tracks (as a clone would have them)."""
    src = dest / "src"
    files = run(["git", "-C", ROOT, "ls-files", "-z"], capture=True).split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", dest / "dist", src])
    return next((dest / "dist").glob("se_inject-*.whl"))


def lowest_pins() -> list[str]:
    """``name==bound`` for every core dependency but torch/torchvision, from pyproject's ``>=`` bounds."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = []
    for dep in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^,;\s]*)", dep.strip())
        if m and m.group(1) not in ("torch", "torchvision"):
            pins.append(f"{m.group(1)}=={m.group(2)}")
    return pins


def installed(py: Path, names: list[str]) -> dict[str, str]:
    code = ("import importlib.metadata as m, sys\n"
            "for n in sys.argv[1:]:\n    print(n, m.version(n))")
    out = run([py, "-c", code, *names], capture=True)
    return dict(line.split(" ", 1) for line in out.splitlines())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--torch", required=True, help="a torch release, e.g. 2.11.0")
    p.add_argument("--lowest", action="store_true", help="pin the other core dependencies at their lower bounds")
    p.add_argument("--tests", nargs="+", default=TESTS, help="test files under tests/ (default: the engine's)")
    p.add_argument("--workers", type=int, default=1, help="pytest-xdist workers (default: 1)")
    p.add_argument("--no-record", action="store_true", help="do not append to benchmarks/results/compat.md")
    args = p.parse_args(argv)

    wheelhouse = COMPAT / "wheels"
    wheelhouse.mkdir(parents=True, exist_ok=True)
    venv = build_venv(args.torch, wheelhouse)
    py = venv / "bin" / "python"
    env = pip_env(wheelhouse)
    with tempfile.TemporaryDirectory(prefix="se-inject-compat-") as tmp:
        tmp = Path(tmp)
        wheel = build_wheel(tmp)
        exact = installed(py, ["torch", "torchvision"])
        pins = tmp / "pins.txt"
        pins.write_text("".join(f"{n}=={v}\n" for n, v in exact.items()) +
                        "".join(f"{pin}\n" for pin in (lowest_pins() if args.lowest else [])))
        # --force-reinstall of se-inject alone: a new build of the same version replaces the last one
        run([py, "-m", "pip", "uninstall", "-q", "-y", "se-inject"], env=env)
        run([py, "-m", "pip", "install", "-q", "-c", pins, f"{wheel}[onnx]", "pytest", "pytest-xdist"], env=env)
        after = installed(py, ["torch", "torchvision"])
        if after != exact:
            raise SystemExit(f"installing se-inject changed {exact} to {after}")
        where = run([py, "-c", "import se_inject; print(se_inject.__file__)"], env=env, cwd=tmp, capture=True).strip()
        if not where.startswith(str(venv)):
            raise SystemExit(f"se_inject imported from {where}, not from the installed wheel in {venv}")
        problems = run([py, "-c", "from se_inject._torch_compat import check; print(*check(), sep='\\n')"],
                       env=env, cwd=tmp, capture=True).strip()
        print(f"_torch_compat.check(): {problems or '[] (nothing moved)'}")
        xml = tmp / "junit.xml"
        start = time.perf_counter()
        cmd = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", f"--rootdir={ROOT}",
               *(["-n", str(args.workers)] if args.workers > 1 else []), *(ROOT / "tests" / t for t in args.tests)]
        print("+ " + " ".join(map(str, cmd)), flush=True)
        code = subprocess.run([str(c) for c in cmd], env=env, cwd=tmp).returncode
        seconds = time.perf_counter() - start
        counts = _counts(xml)
        versions = installed(py, ["torch", "torchvision", "timm", "networkx", "PyYAML", "safetensors", "onnx",
                                  "onnxruntime", "onnxscript"])
    others = ", ".join(f"{n} {versions[n]}" for n in ("networkx", "PyYAML", "safetensors", "onnx", "onnxruntime",
                                                       "onnxscript"))
    command = f"python benchmarks/compat.py --torch {args.torch}" + (" --lowest" if args.lowest else "")
    if args.workers > 1:
        command += f" --workers {args.workers}"
    if args.tests != TESTS:
        command += " --tests " + " ".join(args.tests)
    row = (f"| {datetime.date.today()} | {versions['torch']} | {versions['torchvision']} | {versions['timm']} | "
           f"{'lowest: ' if args.lowest else ''}{others} | {sys.version.split()[0]} | "
           f"{'[]' if not problems else problems.replace(chr(10), '; ')} | {counts['passed']} | {counts['failed']} | "
           f"{counts['skipped']} | {seconds:.0f} | `{command}` |\n")
    print(row, end="")
    if not args.no_record:
        if not RESULTS.exists():
            RESULTS.write_text(HEADER.format(tests=", ".join(f"`{t}`" for t in TESTS)))
        with open(RESULTS, "a") as f:
            f.write(row)
    return 0 if code == 0 and not problems and counts["failed"] == 0 else 1


def _counts(xml: Path) -> dict[str, int]:
    """passed / failed (errors included) / skipped from pytest's JUnit XML."""
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    if not xml.exists():
        counts["failed"] = -1
        return counts
    for case in ET.parse(xml).iter("testcase"):
        tags = {child.tag for child in case}
        if tags & {"failure", "error"}:
            counts["failed"] += 1
        elif "skipped" in tags:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts


if __name__ == "__main__":
    sys.exit(main())
