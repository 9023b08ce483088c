"""se_inject._torch_compat: every private PyTorch name se-inject uses, checked in one place, so a
torch upgrade that moves one fails here, loudly and by name, not as a planning error elsewhere."""
import ast
from pathlib import Path

from se_inject import _torch_compat

ROOT = Path(__file__).resolve().parents[1]


def test_private_torch_apis_are_where_they_were():
    assert _torch_compat.check() == []


def test_no_private_torch_name_outside_the_compat_module():
    """``torch._x``, ``torch.utils._pytree`` and friends are imported by _torch_compat.py only."""
    offenders = []
    for path in sorted((ROOT / "se_inject").rglob("*.py")):
        if path.name == "_torch_compat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                base = ast.unparse(node.value)
                if base.startswith(("torch", "fx", "nn.modules")):
                    names = [f"{base}.{node.attr}"]
            for name in names:
                if name.startswith("torch") and any(part.startswith("_") and not part.startswith("__")
                                                    for part in name.split(".")[1:]):
                    offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert not offenders, "; ".join(offenders)
