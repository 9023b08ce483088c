"""What pricing a search point costs: ``space.cost`` from the one trace vs ``se_inject.plan`` tracing again.

For each model, the space (``by="stage"``, each stage off or r in 4, 8, 16, 32) is made once (one trace);
then every point is priced three ways and the times per point reported:

- ``policy + cost``: ``space.policy(point)`` and ``space.cost(policy)`` (what a caller with a Policy pays);
- ``cost_of``: the per-dimension table (what ``space.suggest`` pays);
- ``plan``: ``se_inject.plan(model, policy)``, which traces the model again (a sample of points: it is slow).

Every point's cost is checked against the plan made from the space's trace (``space.plan``: the planner's
own decisions and accounting), and each sampled point against the freshly traced ``se_inject.plan``.

    python benchmarks/search_space.py --out benchmarks/results/search_space.md
    python benchmarks/search_space.py --models resnet50 --sample 625     # every point re-traced (slow)
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import statistics
import sys
import time
import warnings
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import se_inject  # noqa: E402
from backbones import create_backbone  # noqa: E402
from benchmarks._report import emit  # noqa: E402
from se_inject.search import space  # noqa: E402

#: name -> (factory, input size): the issue's models (ResNet-50, a ResNeXt, Inception nets, the project's nets)
MODELS = {
    "resnet50": (lambda: timm.create_model("resnet50"), (3, 224, 224)),
    "resnext50_32x4d": (lambda: timm.create_model("resnext50_32x4d"), (3, 224, 224)),
    "inception_v3": (lambda: timm.create_model("inception_v3"), (3, 299, 299)),
    "bn_inception": (lambda: create_backbone("bn_inception"), (3, 224, 224)),
    "cifar_resnet56": (lambda: create_backbone("cifar_resnet56", in_chans=1, num_classes=10), (1, 28, 28)),
}


def _per_point(fn, points, repeats: int) -> float:
    """Median over ``repeats`` passes of the seconds per point of ``fn`` over all ``points``."""
    passes = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for p in points:
            fn(p)
        passes.append((time.perf_counter() - t0) / len(points))
    return statistics.median(passes)


def run(name: str, sample: int, repeats: int) -> dict:
    factory, size = MODELS[name]
    torch.manual_seed(0)
    model = factory().eval()
    t0 = time.perf_counter()
    s = space(model, input_size=size)
    made = time.perf_counter() - t0
    points = list(s.points())
    policies = [s.policy(p) for p in points]
    for point, policy in zip(points, policies):   # every point: the one-trace plan's totals
        plan = s.plan(policy)
        cost = s.cost(policy)
        assert (cost.params_added, cost.macs_added) == (plan.params_added, plan.macs_added) == \
            (s.cost_of(point).params_added, s.cost_of(point).macs_added), s.describe(point)
    policy_cost = _per_point(lambda p: s.cost(s.policy(p)), points, repeats)
    table = _per_point(s.cost_of, points, repeats)
    picked = random.Random(0).sample(points, min(sample, len(points)))
    traced = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for point in picked:   # a fresh trace each: the cost a search without the space would pay a point
            policy = s.policy(point)
            t0 = time.perf_counter()
            fresh = se_inject.plan(model, policy, input_size=size)
            traced.append(time.perf_counter() - t0)
            assert (fresh.params_added, fresh.macs_added) == (s.cost(policy).params_added, s.cost(policy).macs_added)
    return {"model": name, "input": "x".join(map(str, size)), "dims": len(s.dims), "points": len(points),
            "made_s": made, "policy_cost_ms": 1e3 * policy_cost, "cost_of_ms": 1e3 * table,
            "plan_ms": 1e3 * statistics.median(traced), "sampled": len(picked)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--sample", type=int, default=5, help="points per model priced by a fresh se_inject.plan")
    ap.add_argument("--repeats", type=int, default=5, help="passes over every point (the median counts)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = [run(name, args.sample, args.repeats) for name in args.models]
    load = os.getloadavg()[0]
    lines = [
        "# Pricing search points: one trace vs a plan per point", "",
        f"`python benchmarks/search_space.py {' '.join(argv if argv is not None else sys.argv[1:])}`", "",
        f"{datetime.date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
        f"{load:.1f} at the end (the machine is shared), torch {torch.__version__}, timm {timm.__version__}, 1 thread.",
        "",
        "Space: each stage off or r in 4, 8, 16, 32 (`se_inject.search.space(model, by='stage')`), made once (one "
        "trace). Every point's params and MACs were checked equal to the plan made from that trace; the sampled "
        "points also to `se_inject.plan(model, policy)` tracing afresh.", "",
        "| model | input | dims | points | space made (s) | policy + cost (ms/point) | cost_of (ms/point) | "
        "se_inject.plan (ms/point, sample) | plan / (policy + cost) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['input']} | {r['dims']} | {r['points']} | {r['made_s']:.2f} | "
                     f"{r['policy_cost_ms']:.3f} | {r['cost_of_ms']:.4f} | {r['plan_ms']:.0f} (n={r['sampled']}) | "
                     f"{r['plan_ms'] / r['policy_cost_ms']:,.0f}x |")
    worst = max(r["policy_cost_ms"] for r in rows if r["model"] == "resnet50") if any(
        r["model"] == "resnet50" for r in rows) else None
    if worst is not None:
        lines += ["", f"resnet50: {worst:.3f} ms a point for a policy and its cost (the issue's bound: 1 ms)."]
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
