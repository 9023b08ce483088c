"""save_pretrained -> load_pretrained over one model of each kind of site, layout and owner the rewrite
handles: is every loaded net the saved one, output for output, bit for bit?

    python benchmarks/pretrained_roundtrip.py                 # -> benchmarks/results/pretrained_roundtrip.md

Each model is built by name (``backbones.create_backbone``, ``pretrained=False``), SE is applied at a
small input size (token layouts where the model has tokens), the model is saved to a fresh folder and
loaded back (the base rebuilt by name, the recorded blocks re-inserted, the weights loaded strictly);
both run in eval mode on the same random input. torchvision's video and detection models are not
backbones by name (``se-inject backbones`` lists the classification ones): they are built with
``torchvision.models.get_model`` and loaded with ``base_model=``, as a user's own model is. A detector is compared on
its backbone's feature maps (its forward post-processes boxes). The times are wall-clock on whatever
machine runs it: they say what a save and a load cost next to apply, not a benchmark.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: (name, constructor kwargs, input size without the batch, policy overrides, what it exercises)
MODELS = [
    ("timm:resnet50", {}, (3, 64, 64), {}, "residual, fused add + ReLU"),
    ("timm:resnext26ts", {}, (3, 64, 64), {}, "ResNeXt: grouped convs"),
    ("timm:inception_v3", {}, (3, 96, 96), {}, "Inception concats"),
    ("tv:googlenet", {"init_weights": False}, (3, 64, 64), {}, "Inception, torchvision"),
    ("tv:densenet121", {}, (3, 64, 64), {}, "dense-block outputs (concat fallback)"),
    ("tv:shufflenet_v2_x0_5", {}, (3, 64, 64), {}, "channel split units"),
    ("tv:vgg11_bn", {}, (3, 64, 64), {}, "plain nn.Sequential (conv fallback)"),
    ("timm:convnext_atto", {}, (3, 64, 64), {}, "channels-last blocks (nhwc)"),
    ("timm:cspresnet50", {}, (3, 64, 64), {}, "CSP stages"),
    ("timm:coat_lite_tiny", {}, (3, 224, 224), {"layouts": ["nchw", "nhwc", "nlc"]}, "shared modules, tokens"),
    ("timm:vit_tiny_patch16_224", {}, (3, 224, 224), {"layouts": ["nchw", "nhwc", "nlc"]}, "token layout (nlc)"),
    ("torchvision:r3d_18", {}, (3, 8, 32, 32), {}, "3-D maps (video); loaded with base_model="),
    ("torchvision:fasterrcnn_mobilenet_v3_large_fpn", {"weights_backbone": None}, (3, 128, 128), {},
     "detector: SE in its backbone; loaded with base_model="),
    ("cifar_resnet20", {"num_classes": 10, "in_chans": 1}, (1, 28, 28), {"r": 4}, "the project's own"),
    ("bn_inception", {}, (3, 96, 96), {"policy": "inception"}, "the project's own BN-Inception"),
]


def _run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor | dict:
    if hasattr(model, "backbone") and hasattr(model, "rpn"):  # a detector: its backbone's feature maps
        return model.backbone(x)
    return model(x)


def _equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return torch.equal(a, b)


def round_trip(name: str, kwargs: dict, size: tuple[int, ...], overrides: dict) -> dict:
    import se_inject
    from backbones import create_backbone
    overrides = dict(overrides)
    policy = overrides.pop("policy", None)
    by_name = not name.startswith("torchvision:")

    def build() -> torch.nn.Module:
        if by_name:
            return create_backbone(name, **kwargs)
        import torchvision
        return torchvision.models.get_model(name.partition(":")[2], weights=None, **kwargs)

    start = time.perf_counter()
    model = se_inject.apply(build(), policy, input_size=size, **overrides).eval()
    applied = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = se_inject.save_pretrained(model, Path(tmp) / "saved")
        saved = time.perf_counter()
        loaded = se_inject.load_pretrained(folder, base_model=None if by_name else build())
        done = time.perf_counter()
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        equal = _equal(_run(loaded, x), _run(model, x))
    blocks = sum(isinstance(m, se_inject.SqueezeExcite) for m in model.modules())
    return {"blocks": blocks, "equal": equal, "apply_s": applied - start, "save_s": saved - applied,
            "load_s": done - saved}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pretrained_roundtrip.md")
    ap.add_argument("--only", nargs="*", help="names to run (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    rows = ["| model | exercises | SE blocks | loaded == saved | apply s | save s | load s |", "|---|---|---|---|---|---|---|"]
    failed = 0
    for name, kwargs, size, overrides, what in MODELS:
        if args.only and name not in args.only:
            continue
        try:
            r = round_trip(name, kwargs, size, overrides)
            ok = "bit for bit" if r["equal"] else "**differs**"
            failed += not r["equal"]
            rows.append(f"| `{name}` | {what} | {r['blocks']} | {ok} | {r['apply_s']:.1f} | {r['save_s']:.1f} | "
                        f"{r['load_s']:.1f} |")
        except Exception as e:  # noqa: BLE001 - a sweep reports every model
            failed += 1
            rows.append(f"| `{name}` | {what} | - | **{type(e).__name__}: {str(e).splitlines()[0][:160]}** | | | |")
        print(rows[-1], flush=True)
    text = (f"# save_pretrained -> load_pretrained round trips\n\n"
            f"`python benchmarks/pretrained_roundtrip.py` (torch {torch.__version__}, 1 thread, "
            f"{time.strftime('%Y-%m-%d')}). Each model: apply, save, load (by name; with `base_model=` where the table "
            "says so), compare eval-mode outputs on one "
            "input with `torch.equal` (a detector: its backbone's feature maps). Times are wall-clock on a shared "
            "machine, for scale only.\n\n" + "\n".join(rows) + "\n")
    if not args.only:
        args.out.write_text(text)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
