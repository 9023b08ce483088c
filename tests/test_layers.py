"""The layers import downwards only: the engine (``se_inject``) imports neither the backbones, the
trainer nor the command line; the backbones do not import the trainer or the command line; the
trainer does not import the command line. Checked on the source (lazy imports inside functions
count) and at run time (what ``import se_inject`` loads)."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: package -> the packages it must never import
FORBIDDEN = {"se_inject": ("backbones", "trainers", "se_inject_cli"),
             "backbones": ("trainers", "se_inject_cli"),
             "trainers": ("se_inject_cli",)}
#: deliberate exceptions: the deprecated entry point forwards to the command line, on demand; a saved folder
#: names its base by a backbone name (``timm:``, ``tv:``, the project's nets), which load_pretrained rebuilds
#: through backbones' registry, imported on demand
ALLOWED = {("se_inject/cli.py", "se_inject_cli"), ("se_inject/pretrained.py", "backbones")}


def imported_packages(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_sources_import_downwards_only(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        for name in imported_packages(path) & set(FORBIDDEN[package]):
            if (rel, name) not in ALLOWED:
                bad.append(f"{rel} imports {name}")
    assert not bad, "; ".join(bad)


def test_importing_the_engine_loads_no_upper_layer():
    code = ("import pkgutil, importlib, sys, se_inject\n"
            "for m in pkgutil.walk_packages(se_inject.__path__, 'se_inject.'):\n"
            "    importlib.import_module(m.name)\n"
            "print(sorted({n.split('.')[0] for n in sys.modules} & {'backbones', 'trainers', 'se_inject_cli'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_the_command_line_starts_without_torch():
    """``se-inject --help`` builds every command's parser without importing torch (so it is quick)."""
    code = "import sys, se_inject_cli\nse_inject_cli.build_parser()\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"
