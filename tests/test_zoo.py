"""benchmarks/zoo.py: what a full run exports (the original only where the rewritten model fails, to say
whose failure it is), and which models a sweep takes up (resume, export upgrades, --redo)."""
import json

import pytest


@pytest.fixture
def exports(zoo, monkeypatch):
    """``zoo._export`` replaced: records which model it was asked for; fails where told."""
    calls, failing = [], set()

    def export(model, path, size):
        calls.append(path.stem)
        if path.stem in failing:
            raise RuntimeError(f"{path.stem} does not export")
        return {"exporter": "dynamo", "rel_diff": 0.0}

    monkeypatch.setattr(zoo, "_export", export)
    return calls, failing


@pytest.mark.parametrize("export_original,failing,expected", [
    (False, set(), ["se"]),                    # the rewritten model exports: nothing to attribute
    (False, {"se"}, ["se", "orig"]),           # it fails: does the original export?
    (False, {"se", "orig"}, ["se", "orig"]),   # neither: the model's failure, not the rewrite's
    (True, set(), ["se", "orig"]),
])
def test_full_run_exports_the_original_where_it_tells_something(zoo, exports, export_original, failing, expected):
    calls, fails = exports
    fails.update(failing)
    out = zoo.full_one("test_resnet", export=True, export_original=export_original)
    assert out["forward_ok"] and out["backward_ok"] and out["se_applied"] > 0, out
    assert calls == expected
    assert out["se_export_ok"] is ("se" not in failing)
    if "orig" in expected:
        assert out["orig_export_ok"] is ("orig" not in failing)
    else:
        assert "orig_export_ok" not in out


def test_to_run_resumes_upgrades_and_redoes(zoo, tmp_path):
    results = tmp_path / "zoo.jsonl"
    big = zoo.MAX_EXPORT_PARAMS + 1
    rows = [{"name": "done", "mode": "full", "se_applied": 2, "params": 1e6},
            {"name": "forward", "mode": "forward", "se_applied": 2, "params": 1e6},           # no ONNX yet
            {"name": "huge", "mode": "forward", "se_applied": 2, "params": big},             # export skipped anyway
            {"name": "failed", "mode": "forward", "se_applied": 2, "params": 1e6, "error_stage": "apply"}]
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    names = ["done", "forward", "huge", "failed", "new"]
    full, forward = zoo.Run(), zoo.Run(export=False)
    assert sorted(zoo.to_run(names, results, full)) == ["forward", "new"]
    assert zoo.to_run(names, results, forward) == ["new"]
    assert zoo.to_run(names, results, full, redo=True) == names
    assert zoo.to_run(names, tmp_path / "none.jsonl", full) == names
