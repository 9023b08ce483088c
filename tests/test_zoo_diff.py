"""benchmarks/zoo_diff.py on synthetic plan records: matching, signatures, raised-in-one, the report."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def zoo_diff():
    spec = importlib.util.spec_from_file_location("zoo_diff", ROOT / "benchmarks" / "zoo_diff.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["zoo_diff"] = module  # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("zoo_diff", None)


def block(module, kind, label, ch, node="bn2", fused=False, layout="nchw", hw="56x56"):
    rd = max(ch // 16, 1)
    return [module, kind, label, ch, rd, 2 * ch * rd + ch + rd, fused, layout, hw, node]


def row(name, blocks=(), skipped=(), family="fam", commit="aaa", **extra):
    return {"name": name, "family": family, "se": len(blocks), "placements": list(blocks),
            "skipped_sites": list(skipped), "params_added": sum(b[5] for b in blocks), "commit": commit, **extra}


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


OLD = [
    row("same", [block("layer1.0.se", "residual", "SE_2_1", 64)]),
    row("dense", [block(f"features.denseblock1.denselayer{i}.se", "conv", f"SE_2_{i}", 128, node="norm2") for i in (1, 2)],
        family="densenet"),
    row("gated", [block("blocks.0.se", "residual", "SE_2_1", 32, node="conv_pwl")]),
    row("dilated", [block("layer3.0.se", "residual", "SE_3_1", 1024, hw="28x28")], family="deeplab"),
    row("breaks", [block("a.se", "residual", "SE_2_1", 64)]),
    row("gone"),
]
NEW = [
    row("same", [block("layer1.0.se", "residual", "SE_2_1", 64)], commit="bbb"),
    row("dense", [block("features.denseblock1.se", "concat", "SE_2_1", 256, node="cat")], family="densenet", commit="bbb"),
    row("gated", [], skipped=[["blocks.0:conv_pwl", "residual", "SE_2_1", 32, "already gated"]], commit="bbb"),
    row("dilated", [block("layer3.0.se", "residual", "SE_4_1", 1024, hw="28x28")], family="deeplab", commit="bbb"),
    row("breaks", error_stage="plan", error_class="TraceError", error="boom", commit="bbb"),
    row("fresh", commit="bbb"),
]


def test_signatures_and_groups(zoo_diff, tmp_path):
    old = zoo_diff.load(write(tmp_path / "old.jsonl", OLD))
    new = zoo_diff.load(write(tmp_path / "new.jsonl", NEW))
    rep = zoo_diff.compare(old, new)
    sigs = {d.name: d.signature for d in rep.diffs}
    assert sigs == {"dense": "+concat -conv", "gated": "-residual(already gated)", "dilated": "~label"}
    assert rep.raised == {"breaks": (None, "plan: TraceError: boom")}
    assert rep.only_old == ["gone"] and rep.only_new == ["fresh"]
    assert set(rep.by_family()) == {"densenet", "fam", "deeplab"}
    dense = next(d for d in rep.diffs if d.name == "dense")
    assert (dense.old_se, dense.new_se) == (2, 1)


def test_same_module_other_node_is_one_changed_block(zoo_diff):
    old = row("m", [block("layer1.0.se", "residual", "SE_2_1", 64, node="bn2")])
    new = row("m", [block("layer1.0.se", "residual", "SE_2_1", 64, node="act2")])
    d = zoo_diff.diff_model(old, new)
    assert d.signature == "~node" and d.changes == ["~ layer1.0.se: node bn2 -> act2"]
    assert zoo_diff.diff_model(old, old) is None


def test_report_text(zoo_diff, tmp_path, capsys):
    o, n = write(tmp_path / "old.jsonl", OLD), write(tmp_path / "new.jsonl", NEW + [NEW[0]])  # a resumed line
    assert zoo_diff.main([str(o), str(n), "-o", str(tmp_path / "diff.md")]) == 0
    text = capsys.readouterr().out
    assert text == (tmp_path / "diff.md").read_text()
    assert "in both: 5; same placements: 1; placements differ: 3" in text
    assert "- **1** `+concat -conv` — families: densenet (1)" in text
    assert "- breaks: old: ok | new: plan: TraceError: boom" in text
    assert "  - SE_2_1 residual blocks.0.se (32 ch): now skipped, already gated" in text


def test_records_without_placements_are_compared_by_counts(zoo_diff):
    """Sweeps before placements were recorded: blocks by kind, skips by reason and parameters added."""
    attention = "unsupported layout: an attention tensor (B, heads, N, d) from a matrix product"
    old = {"name": "coat_mini", "family": "coat", "se": 34, "sites": {"residual": 30, "inception": 4},
           "skipped": {"token layout (B, N, C)": 16}, "params_added": 44722}
    new = row("coat_mini", [block("cpe1.se", "residual", "SE_2_1", 64)] * 4 + [block("crpe1.se", "inception", "SE_2_2", 64)] * 4,
              family="coat", sites={"residual": 4, "inception": 4})
    new["skipped"] = {"token layout (B, N, C)": 16, attention: 26}
    d = zoo_diff.diff_model(old, new)
    assert d.signature == f"-residual({attention})" and (d.old_se, d.new_se) == (34, 8)
    assert d.changes == ["- residual: 30 -> 4 blocks", f"  skipped, {attention}: 0 -> 26"]
    assert zoo_diff.diff_model(old, dict(old)) is None
    assert zoo_diff.diff_model(old, {**old, "params_added": 1}).signature == "~params"
