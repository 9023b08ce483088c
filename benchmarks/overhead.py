"""CPU inference latency of SE: timm resnet50 vs timm seresnet50 vs se_inject.apply(resnet50).

Interleaved in one process (this machine is shared and noisy): each round times every model once,
in a rotating order, and the report gives medians and ratios to resnet50 from the same rounds.

    python benchmarks/overhead.py --batch 1 32 --rounds 30 --out benchmarks/results/overhead.md

Also checks that the fused SE (addcmul at the residual add) stays within 1e-5 of the unfused form,
and times apply() itself.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import se_inject  # noqa: E402
from benchmarks._report import emit  # noqa: E402


def build_models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    plain = timm.create_model("resnet50").eval()
    hand = timm.create_model("seresnet50").eval()
    ours = se_inject.apply(plain, r=16)
    ours.load_state_dict(hand.state_dict())  # same weights: outputs comparable too
    unfused = se_inject.apply(plain, r=16, fuse_add=False)
    unfused.load_state_dict(hand.state_dict())
    return {"timm resnet50": plain, "timm seresnet50": hand, "se_inject.apply(resnet50)": ours,
            "apply(..., fuse_add=False)": unfused}


def time_once(model: torch.nn.Module, x: torch.Tensor) -> float:
    t0 = time.perf_counter()
    model(x)
    return time.perf_counter() - t0


def bench(models: dict[str, torch.nn.Module], batch: int, rounds: int, warmup: int = 3) -> dict[str, list[float]]:
    x = torch.randn(batch, 3, 224, 224)
    names = list(models)
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for _ in range(warmup):
            for n in names:
                time_once(models[n], x)
        for i in range(rounds):
            order = names[i % len(names):] + names[:i % len(names)]
            for n in order:
                times[n].append(time_once(models[n], x))
    return times


def apply_seconds(reps: int = 7) -> float:
    plain = timm.create_model("resnet50")
    se_inject.apply(plain)  # warm caches (imports, class scans)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        se_inject.apply(plain)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", type=Path, default=None, help="write a Markdown report here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = build_models()
    x = torch.randn(4, 3, 224, 224)
    with torch.no_grad():
        ref = models["timm seresnet50"](x)
        diffs = {n: (m(x) - ref).abs().max().item() for n, m in models.items() if "apply" in n}
    lines = ["# SE inference overhead on CPU", "",
             f"- date: {datetime.date.today()}; machine: {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads); timm {timm.__version__}",
             f"- command: `python benchmarks/overhead.py --batch {' '.join(map(str, args.batch))} --rounds {args.rounds}`",
             "- interleaved rounds, median latency; ratio = median over resnet50's median from the same rounds",
             "- max |output diff| vs timm seresnet50 with the same weights: "
             + ", ".join(f"{n}: {d:.1e}" for n, d in diffs.items()), ""]
    for batch in args.batch:
        times = bench(models, batch, args.rounds)
        base = statistics.median(times["timm resnet50"])
        lines += [f"## batch {batch}, 224x224, eval", "", "| model | median ms | ratio to resnet50 |", "|---|---|---|"]
        for n, ts in times.items():
            med = statistics.median(ts)
            lines.append(f"| {n} | {1000 * med:.1f} | {med / base:.3f}x |")
        lines.append("")
    lines += [f"`se_inject.apply(resnet50)` itself: {1000 * apply_seconds():.0f} ms (median of 7, model copy included)", ""]
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
