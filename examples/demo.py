"""`make demo`: the main job, end to end on real models.

1. Plan and apply SE to timm's resnet50 (the paper's SE-ResNet-50), print the site table and the
   parameter/MAC totals (paper §4, Eq. 5), and prove the result is timm's seresnet50: same weight
   names and shapes, same outputs after loading seresnet50's weights.
2. Export it to ONNX and check onnxruntime against PyTorch at two batch sizes.
3. A small comparative run on Fashion-MNIST (plain vs SE variants) and where its report is.

    python examples/demo.py --out runs/demo
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import se_inject  # noqa: E402


def section(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 70 - len(title)))


def apply_resnet50() -> torch.nn.Module:
    section("1. se_inject.apply(timm resnet50, r=16)")
    plain = timm.create_model("resnet50", pretrained=False).eval()
    print(se_inject.plan(plain, r=16))
    t0 = time.perf_counter()
    model = se_inject.apply(plain, r=16)
    print(f"apply took {1000 * (time.perf_counter() - t0):.0f} ms; the model is still a {type(model).__name__}, "
          f"layer1[0] a {type(model.layer1[0]).__name__} with .se = {type(model.layer1[0].se).__name__}")
    reference = timm.create_model("seresnet50", pretrained=False).eval()
    same = [(k, v.shape) for k, v in model.state_dict().items()] == [(k, v.shape) for k, v in reference.state_dict().items()]
    model.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        diff = (model(x) - reference(x)).abs().max().item()
    print(f"vs timm seresnet50: same parameter names/shapes: {same}; max |output diff| with its weights: {diff:.1e}")
    return model


def export(model: torch.nn.Module, out: Path) -> None:
    section("2. se_inject.export_onnx")
    report = se_inject.export_onnx(model, out / "se_resnet50.onnx")
    print(report)


def compare(out: Path) -> None:
    section("3. comparative run on Fashion-MNIST (plain vs SE)")
    from trainers.compare import run_comparison
    example = Path(__file__).with_name("fashion_mnist_compare_demo.yaml")
    report = run_comparison(example, out_dir=out / "compare")
    print(report.read_text().split("\n![")[0].strip())
    print(f"\nreport: {report} (with results.csv and curves PNG beside it); the full comparison: "
          "se-inject compare --config examples/fashion_mnist_compare.yaml")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/demo"))
    ap.add_argument("--skip-compare", action="store_true", help="stop after the apply/ONNX part")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    model = apply_resnet50()
    export(model, args.out)
    if not args.skip_compare:
        compare(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
