"""Where the fused SE op's time goes on a GPU, and how its tiling moves it (issue 11).

For each block-end shape (bf16, channels_last, residual + ReLU, forward + backward):

1. a torch.profiler table of the device time per kernel/op (what runs between the four Triton kernels
   counts too: the MLP, the partials' combine, the allocations);
2. forward alone and backward alone (CUDA events, medians);
3. a sweep of the launch heuristics (``se_inject.ops.kernels.CONFIG``: ``max_block`` along the stride-1
   axis, ``max_tile`` elements a program touches per step, ``programs_per_sm`` before a reduction
   splits L), forward + backward median each, beside PyTorch's eager formulation and ``relu(x + r)``.

    PYTHONPATH=. python benchmarks/gpu_ops_profile.py --out benchmarks/results/gpu_ops_profile.md
    TRITON_INTERPRET=1 PYTHONPATH=. python benchmarks/gpu_ops_profile.py --tiny   # trying it on the CPU
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._report import emit  # noqa: E402

from se_inject import ops  # noqa: E402
from se_inject.ops import kernels  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def block_end(shape: tuple[int, ...], dtype: torch.dtype):
    """(fused, eager, plain): forward + backward closures on one set of inputs."""
    torch.manual_seed(0)
    c, r = shape[1], max(1, shape[1] // 16)
    x, res = (torch.randn(shape, device=DEVICE, dtype=dtype).contiguous(memory_format=torch.channels_last)
              .requires_grad_() for _ in range(2))
    weights = [torch.randn(s, device=DEVICE).mul_(0.1).requires_grad_() for s in ((r, c, 1, 1), (r,), (c, r, 1, 1), (c,))]
    grad = torch.randn_like(x)
    leaves = [x, res, *weights]
    kw = dict(channel_dim=1, post_act="relu")

    def amp():  # bf16 maps, fp32 weights: as under a training step's autocast
        return torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)

    def fwd_bwd(fn):
        def run():
            for t in leaves:
                t.grad = None
            with amp():
                out = fn()
            out.backward(grad)
        return run

    fused = lambda: ops.squeeze_excite(x, res, *weights, **kw, fallback=DEVICE.type != "cuda")  # noqa: E731
    eager = lambda: ops.reference_squeeze_excite(x, res, *weights, **kw)  # noqa: E731
    plain = lambda: torch.relu(x + res)  # noqa: E731
    def forward_only():
        with amp():
            return fused().detach()
    saved = {}

    def backward_only():  # the forward outside the timed region: one backward through a fresh graph
        for t in leaves:
            t.grad = None
        saved["out"].backward(grad, retain_graph=True)

    def prepare_backward():
        with amp():
            saved["out"] = fused()
    return {"fused": fwd_bwd(fused), "eager": fwd_bwd(eager), "plain": fwd_bwd(plain),
            "fused forward": forward_only, "fused backward": backward_only}, prepare_backward


def timed(fn, iters: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    if DEVICE.type != "cuda":
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) / iters * 1e3
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def profile_table(fn, rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE.type == "cuda" else [])
    for _ in range(3):
        fn()
    with profile(activities=activities) as prof:
        for _ in range(5):
            fn()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if DEVICE.type == "cuda" else "self_cpu_time_total"
    try:
        return prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=60)
    except (AttributeError, KeyError, ValueError):
        return prof.key_averages().table(sort_by="self_device_time_total", row_limit=rows, max_name_column_width=60)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="256x2048x7x7,256x256x56x56")
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--tiny", action="store_true", help="small shapes, few configs (the CPU under TRITON_INTERPRET=1)")
    p.add_argument("--bf16", action="store_true", help="bf16 maps on the CPU too (trying the autocast path)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.tiny:
        args.shapes, args.iters = "2x32x3x3", 1
    dtype = torch.bfloat16 if DEVICE.type == "cuda" or args.bf16 else torch.float32
    shapes = [tuple(int(d) for d in s.split("x")) for s in args.shapes.split(",") if s]
    default = kernels.CONFIG
    blocks, tiles, per_sm = ((32, 64, 128, 256), (2048, 4096, 8192, 16384), (4, 16)) if not args.tiny \
        else ((16, 128), (1024,), (4,))
    lines = ["# The fused SE op's time on the GPU: profile and tiling sweep (issue 11)", "",
             f"- date: {datetime.date.today()}; device: "
             f"{torch.cuda.get_device_name() if DEVICE.type == 'cuda' else 'CPU (interpreter: not a GPU figure)'}; "
             f"torch {torch.__version__}",
             f"- command: `PYTHONPATH=. python benchmarks/gpu_ops_profile.py {' '.join(argv or sys.argv[1:])}`",
             f"- {str(dtype).removeprefix('torch.')}, channels_last, residual + ReLU, forward + backward; "
             f"medians of {args.iters} (CUDA events); default config {dataclasses.asdict(default)}", ""]
    for shape in shapes:
        variants, prepare_backward = block_end(shape, dtype)
        lines += [f"## {list(shape)}", "", "| what | ms |", "|---|---|"]
        for name in ("plain", "eager", "fused", "fused forward"):
            lines.append(f"| {name} | {timed(variants[name], args.iters):.3f} |")
        prepare_backward()
        lines.append(f"| fused backward | {timed(variants['fused backward'], args.iters):.3f} |")
        lines += ["", "```", profile_table(variants["fused"], 18), "```", "",
                  "| max_block | max_tile | programs_per_sm | fused fwd+bwd ms |", "|---|---|---|---|"]
        best = None
        for block, tile, sm in itertools.product(blocks, tiles, per_sm):
            if tile < block:
                continue
            kernels.CONFIG = dataclasses.replace(default, max_block=block, max_tile=tile, programs_per_sm=sm)
            try:
                ms = timed(variants["fused"], args.iters)
                lines.append(f"| {block} | {tile} | {sm} | {ms:.3f} |")
                best = min(best or (ms, block, tile, sm), (ms, block, tile, sm))
            except Exception as e:  # noqa: BLE001 (a config the kernels reject: reported)
                lines.append(f"| {block} | {tile} | {sm} | error: {type(e).__name__}: {str(e).splitlines()[0][:80]} |")
            finally:
                kernels.CONFIG = default
        if best:
            lines += ["", f"best: max_block={best[1]}, max_tile={best[2]}, programs_per_sm={best[3]}: {best[0]:.3f} ms", ""]
        print("\n".join(lines[-8:]), flush=True)
        del variants
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
