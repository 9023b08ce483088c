"""Is an ONNX Runtime mismatch the export's fault, or float32 rounding in an ill-conditioned model?

``export_onnx`` compares ONNX Runtime with PyTorch, both float32; an untrained network whose
activations grow to 1e8 can differ by more than its 1e-4 check from rounding alone. This script
takes the same model in float64 as the truth and says how far each float32 runtime is from it: if
ONNX Runtime is no further than PyTorch's own float32, the exported graph computes the same function.

    PYTHONPATH=. python benchmarks/onnx_vs_float64.py mobileone_s0 --seeds 0 1 2 \\
        --out benchmarks/results/onnx_vs_float64.md
"""
from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import se_inject  # noqa: E402
from benchmarks._report import emit  # noqa: E402


def calibrate_batch_norm(model: torch.nn.Module, batches: int, side: int) -> None:
    """BN running statistics from ``batches`` train-mode forwards of random batches (their plain mean):
    an untrained net's activations then stay near unit scale, as a trained net's do."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(8, 3, side, side))
    model.eval()


def measure(name: str, se: bool, seed: int, side: int, calibrate: int = 0) -> dict[str, float]:
    import onnxruntime as ort
    import timm
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False).eval()
    if se:
        model = se_inject.apply(model).eval()
    if calibrate:
        calibrate_batch_norm(model, calibrate, side)
    x = torch.randn(2, 3, side, side)
    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/model.onnx"
        se_inject.export_onnx(model, path, input_size=(3, side, side), second_batch=2, rtol=1.0)
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        y_ort = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0].astype(np.float64)
    with torch.no_grad():
        y32 = model(x).double().numpy()
        y64 = model.double()(x.double()).numpy()
    scale = np.abs(y64).max()
    return {"max_logit": scale, "torch32": np.abs(y32 - y64).max() / scale,
            "ort": np.abs(y_ort - y64).max() / scale, "ort_vs_torch32": np.abs(y_ort - y32).max() / np.abs(y32).max()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--side", type=int, default=96)
    p.add_argument("--calibrate-bn", type=int, default=0, metavar="N",
                   help="set BN running statistics from N random train-mode batches first (unit-scale activations)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    import onnxruntime
    import timm
    lines = ["# ONNX Runtime and PyTorch float32 against float64", "",
             f"- date: {datetime.date.today()}; torch {torch.__version__}, timm {timm.__version__}, "
             f"onnxruntime {onnxruntime.__version__}; CPU",
             f"- command: `PYTHONPATH=. python benchmarks/onnx_vs_float64.py {' '.join(argv or sys.argv[1:])}`",
             f"- untrained weights (seed){f', BN statistics from {args.calibrate_bn} random train-mode batches' if args.calibrate_bn else ''}, input randn(2, 3, {args.side}, {args.side}) (same seed); error: max |y - y64| / "
             "max |y64|, y64 the same PyTorch model in float64; the last column is what `export_onnx` checks "
             "(against 1e-4)", "",
             "| model | seed | max abs logit | PyTorch fp32 vs float64 | ONNX Runtime vs float64 | ONNX Runtime vs PyTorch fp32 |",
             "|---|---|---|---|---|---|"]
    for name in args.models:
        for se in (False, True):
            for seed in args.seeds:
                r = measure(name, se, seed, args.side, args.calibrate_bn)
                lines.append(f"| {name}{' + SE' if se else ''} | {seed} | {r['max_logit']:.2g} | {r['torch32']:.1e} "
                             f"| {r['ort']:.1e} | {r['ort_vs_torch32']:.1e} |")
                print(lines[-1], flush=True)
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
