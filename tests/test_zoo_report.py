"""benchmarks/zoo_report.py and zoo_sources.py: the report on synthetic sweep rows, torchvision's model lists."""
import importlib
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("zoo_report"), importlib.import_module("zoo_sources")
    finally:
        sys.path.remove(str(BENCH))


def ok(name, category, family, se=2, **extra):
    return {"name": name, "family": family, "category": category, "mode": "full", "se": se, "se_applied": se,
            "sites": {"residual": se}, "map_structure": True, "forward_ok": True, "backward_ok": True,
            "shape_ok": True, "se_grad_ok": True, "apply_s": 0.5, "commit": "abc", **extra}


ROWS = [
    ok("resnet18", "classification", "resnet", orig_export_ok=True, se_export_ok=True),
    ok("shufflenet_v2_x0_5", "classification", "shufflenetv2", se=16, orig_export_ok=True, se_export_ok=False,
       se_export_error="ExportError: differs"),
    ok("fasterrcnn_resnet50_fpn", "detection", "detection.faster_rcnn", se=16,
       export_skipped="detector: a list of images in, a list of dicts out"),
    ok("s3d", "video", "video.s3d", se=9, orig_export_ok=False, orig_export_error="ExportError: input_size",
       default_size_error={"error_stage": "plan", "error_class": "ForwardError", "error": "S3D fails its forward"},
       plan_input_size=[3, 16, 224, 224]),
    ok("r3d_18", "video", "video.resnet", se=8, shape_ok=False, se_grad_ok=False, orig_export_ok=True, se_export_ok=True),
    {"name": "vit_b_16", "family": "vision_transformer", "category": "classification", "mode": "full", "se": 0,
     "se_applied": 0, "sites": {}, "skipped": {"token layout (B, N, C)": 12}, "commit": "abc"},
]


def test_tv_report(bench, tmp_path):
    zoo_report, _ = bench
    results = tmp_path / "tv_zoo.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    text = zoo_report.report(results, tmp_path / "tv_zoo.md", ["--source", "tv"], "tv")
    assert text == (tmp_path / "tv_zoo.md").read_text()
    assert text.startswith("# se-inject over torchvision's models")
    assert "- SE inserted: 5/6 (83.3%); no eligible site (clean 'no site' plans): 1" in text
    assert "every SE parameter gets a finite gradient 4/5 (80.0%)" in text
    assert "plan/apply at the model's default input size raised on 1 (s3d)" in text and "3x16x224x224" in text
    assert "- ONNX not tried: 1 detector: a list of images in" in text
    assert "original exports + ORT parity 3/4 (75.0%)" in text and "rewritten exports + parity 2/3 (66.7%)" in text
    assert "| detection | 1 | 0 | 1 | 16 | 1/1 (100.0%) |" in text
    assert "- **1** forward: output shapes changed: r3d_18" in text
    assert "- **1** backward: an SE parameter got no (or a non-finite) gradient: r3d_18" in text
    assert "- **1** plan at the default input size: ForwardError: S3D fails its forward: s3d" in text


def test_timm_report_has_no_category_table(bench, tmp_path):
    zoo_report, _ = bench
    results = tmp_path / "zoo.jsonl"
    results.write_text(json.dumps(ok("resnet18", "classification", "resnet")) + "\n")
    text = zoo_report.report(results, tmp_path / "zoo.md", ["--jobs", "2"])
    assert text.startswith("# se-inject over the timm zoo") and "## Per category" not in text


def test_torchvision_lists(bench):
    _, zoo_sources = bench
    tv = zoo_sources.SOURCES["tv"]
    names = tv.names()
    cats = {tv.category(n) for n in names}
    assert cats == {"classification", "detection", "segmentation", "video"}
    assert "resnet50" in names and "maskrcnn_resnet50_fpn" in names and "r3d_18" in names
    assert not any(n.startswith("quantized_") or n.startswith("raft") for n in names)   # not swept, said so
    assert tv.family("deeplabv3_resnet50") == "segmentation.deeplabv3"
    assert set(zoo_sources.TASKS) == cats | {"backbone"}   # backbone: transformers' AutoBackbone types (hf)


def test_image_sizes_end_at_inception_side(bench):
    """torchvision's inception_v3 runs at 96 and 224 px in eval mode, but its auxiliary head (training
    only) needs 299: the sweep's last candidate; a model of 299 px or more gets no extra size."""
    import torch
    import torchvision
    _, sources = bench
    with torch.device("meta"):
        model = torchvision.models.inception_v3(weights=None, init_weights=False)
    assert sources.TASKS["classification"].sizes(model) == [(3, 96, 96), (3, 224, 224), (3, 299, 299)]
    assert sources._image_sizes(torch.nn.Conv2d(3, 8, 3)) == [(3, 96, 96), (3, 224, 224), (3, 299, 299)]


def test_commands_from_the_sessions_log(bench, tmp_path):
    """The report names the exact invocations when every session recorded its command line."""
    zoo_report, _ = bench
    results = tmp_path / "tv_zoo.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    sessions = results.with_suffix(".sessions.jsonl")
    runs = [{"date": "2026-11-26 08:32:24", "models": 107, "jobs": 1, "wall_s": 640.9, "commit": "abc",
             "argv": "--source tv --no-export --jobs 1", "zoo_mem_gb": "10"},
            {"date": "2026-11-26 09:00:00", "models": 83, "jobs": 1, "wall_s": 1500.0, "commit": "abc",
             "argv": "--source tv --jobs 1", "zoo_mem_gb": ""}]
    sessions.write_text("".join(json.dumps(r) + "\n" for r in runs))
    text = zoo_report.report(results, tmp_path / "tv_zoo.md", ["--report-only"], "tv")
    assert ("- commands, in order: `ZOO_MEM_GB=10 python benchmarks/zoo.py --source tv --no-export --jobs 1` "
            "(2026-11-26 08:32:24 UTC, 107 models, 10.7 min); `python benchmarks/zoo.py --source tv --jobs 1`") in text
    sessions.write_text(json.dumps({k: v for k, v in runs[0].items() if k != "argv"}) + "\n")  # an older log
    older = zoo_report.report(results, tmp_path / "tv_zoo.md", ["--report-only"], "tv")
    assert "commands, in order" not in older and "- command: `python benchmarks/zoo.py --source tv --jobs 2`" in older


def test_hand_written_notes_follow_the_report(bench, tmp_path):
    zoo_report, _ = bench
    results = tmp_path / "tv_zoo.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert "## Notes" not in zoo_report.report(results, tmp_path / "tv_zoo.md", ["--report-only"], "tv")
    results.with_suffix(".notes.md").write_text("swin_v2: read as NCHW.\n")
    text = zoo_report.report(results, tmp_path / "tv_zoo.md", ["--report-only"], "tv")
    assert text.endswith("## Notes (`tv_zoo.notes.md`, written by hand)\n\nswin_v2: read as NCHW.\n")


def test_per_model_table(bench, tmp_path):
    """A small sweep (torchvision's) lists every model: SE blocks, already gated sites, fwd/bwd, ONNX."""
    zoo_report, _ = bench
    rows = ROWS + [{"name": "efficientnet_b0", "family": "efficientnet", "category": "classification", "mode": "full",
                    "se": 0, "se_applied": 0, "skipped": {"already gated": 9}, "commit": "abc"},
                   ok("swin_v2_t", "classification", "swin_transformer", se=24, forward_ok=False, backward_ok=False,
                      shape_ok=None, se_grad_ok=None, error_stage="forward_backward", error_class="RuntimeError",
                      error="mat1 and mat2 shapes cannot be multiplied", input_size=[3, 96, 96])]
    results = tmp_path / "tv_zoo.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = zoo_report.report(results, tmp_path / "tv_zoo.md", ["--report-only"], "tv")
    assert "## Per model" in text
    assert "| efficientnet_b0 | classification | ok | 0 | 9 | - | - | - | - | - | - |  |" in text
    assert ("| swin_v2_t | classification | ok | 24 | 0 | 3x96x96 | **no** | **no** | - | - | - | "
            "forward_backward: RuntimeError: mat1 and mat2 shapes cannot be multiplied |") in text
    assert "| resnet18 | classification | ok | 2 | 0 | - | ok | ok | ok | ok | ok / ok |  |" in text


def test_rewritten_onnx_counts_the_rewrites_failures_only(bench, tmp_path):
    """The sweep exports an original only where its rewritten model fails: a failure the original shares is
    the model's (not counted), one the original does not share is the rewrite's; a forward-only row over
    the export size limit is 'not tried', not 'not reached'."""
    zoo_report, zoo_sources = bench
    big = zoo_sources.MAX_EXPORT_PARAMS + 1
    rows = [ok("resnet18", "classification", "resnet", params=11e6, se_export_ok=True),          # new: original not exported
            ok("resnet34", "classification", "resnet", params=21e6, se_export_ok=True, orig_export_ok=True),  # older session
            ok("levit_128", "classification", "levit", params=9e6, se_export_ok=False, orig_export_ok=False,
               se_export_error="ExportError: x", orig_export_error="ExportError: x"),
            ok("ghostnet_100", "classification", "ghostnet", params=5e6, se_export_ok=False, orig_export_ok=True,
               se_export_error="ExportError: differs"),
            ok("vit_giant", "classification", "vision_transformer", params=big, mode="forward"),
            ok("resnet50", "classification", "resnet", params=25e6, mode="forward")]
    results = tmp_path / "zoo.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = zoo_report.report(results, tmp_path / "zoo.md", ["--report-only"])
    assert ("- ONNX: rewritten exports + ORT parity 2/3 (66.7%) (1 not reached by the export pass (`--no-export` rows), "
            "0 failed before the export); not counted: 1 whose original model does not export either (levit_128)") in text
    assert "- ONNX not tried: 1 over 400 M parameters" in text
    assert "original exports + ORT parity 2/3 (66.7%); of those, rewritten exports + parity 1/2 (50.0%)" in text
    tried, good, own = zoo_report.rewritten_onnx(rows)
    assert [r["name"] for r in good] == ["resnet18", "resnet34"] and [r["name"] for r in own] == ["levit_128"]


def test_transformers_report(bench, tmp_path):
    """The hf source's report: its library's version, how its models are built, its two categories."""
    pytest.importorskip("transformers", reason="the hf extra: pip install 'se-inject[hf]'")
    zoo_report, _ = bench
    results = tmp_path / "hf_zoo.jsonl"
    rows = [ok("resnet", "classification", "resnet", se_export_ok=True), ok("vitdet", "backbone", "vitdet", se=24),
            {**ok("regnet", "classification", "regnet", se=0), "se_applied": 0, "skipped": {"already gated": 22}}]
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = zoo_report.report(results, tmp_path / "hf_zoo.md", ["--source", "hf"], "hf")
    assert text.startswith("# se-inject over Hugging Face transformers' vision models\n\n- transformers ")
    assert "`AutoConfig.for_model`" in text and "family = the transformers module of the model type" in text
    assert "| backbone | 1 | 0 | 1 | 24 |" in text and "| regnet | classification | ok | 0 | 22 |" in text
    assert zoo_report.main([str(results)]) == 0   # the source read from the file name
