"""GPU cost of SE (issue 11): resnet50 vs apply(resnet50) with the fused kernels and without, and timm's seresnet50.

Two parts, interleaved rounds in one process (each round runs every variant once, in a rotating
order; ratios are per round, to resnet50 in the same round, then the median):

1. **Models**: timm ``resnet50``, ``se_inject.apply(resnet50, r=16, kernels="triton")`` (the fused ops
   of ``se_inject.ops``), the same with ``kernels="torch"`` (the PyTorch formulation), and timm
   ``seresnet50``, all with seresnet50's weights; a training step (forward, backward, SGD) and
   inference, eager and ``torch.compile``; bf16 autocast, channels_last, batch 256, 224x224.
2. **Block end**: what the fused op replaces in a ResNet bottleneck, forward + backward:
   ``relu(x + shortcut)`` (no SE), SE in PyTorch eager, SE compiled, and SE fused, at
   ``[256, 256, 56, 56]`` and ``[256, 2048, 7, 7]`` (bf16, channels_last).

Peak memory is the most a step allocated above what was allocated before it. On a GPU:

    PYTHONPATH=. python benchmarks/gpu_overhead.py --out benchmarks/results/gpu_overhead.md

On the CPU (no GPU: the kernels need CUDA, so ``kernels="triton"`` runs as ``"auto"``, i.e. PyTorch)
the same comparison runs at a small size; ``--smoke`` is the smallest (the CI test runs it):

    python benchmarks/gpu_overhead.py --smoke
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import se_inject  # noqa: E402
from se_inject import ops  # noqa: E402

GPU_COMMAND = "PYTHONPATH=. python benchmarks/gpu_overhead.py --out benchmarks/results/gpu_overhead.md"
MODES = ("train-eager", "train-compiled", "infer-eager", "infer-compiled")
MICRO = ("add+relu (no SE)", "SE, PyTorch eager", "SE, PyTorch compiled", "SE, fused (se_inject.ops)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=None, help="default: 256 on CUDA, 8 on CPU")
    p.add_argument("--image", type=int, default=None, help="default: 224 on CUDA, 64 on CPU")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default: 10 on CUDA, 3 on CPU)")
    p.add_argument("--steps", type=int, default=None, help="steps per variant per round (default: 3 on CUDA, 1 on CPU)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first (compiles too)")
    p.add_argument("--modes", default=None,
                   help=f"comma-separated, of {','.join(MODES)} (default: all on CUDA, the eager ones on CPU)")
    p.add_argument("--micro-shapes", default=None,
                   help="block-end shapes, e.g. 256x256x56x56,256x2048x7x7 (default on CPU: 4x64x14x14,4x256x2x2)")
    p.add_argument("--micro-iters", type=int, default=None, help="timed forward+backward per variant (default 20 / 3)")
    p.add_argument("--amp", choices=("bf16", "none"), default=None, help="default: bf16 on CUDA, none on CPU")
    p.add_argument("--smoke", action="store_true",
                   help="the smallest CPU run: batch 2, 32x32, one untimed-warm-up round (CI: it runs, no figures)")
    p.add_argument("--out", type=Path, default=None, help="write the Markdown report here")
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if args.smoke:
        defaults = dict(batch=2, image=32, rounds=1, steps=1, modes="train-eager,infer-eager",
                        micro_shapes="2x16x4x4,2x64x1x1", micro_iters=1, amp="none")
        args.warmup = 0  # a smoke test: each variant runs once, timed (no meaningful figure)
    elif cuda:
        defaults = dict(batch=256, image=224, rounds=10, steps=3, modes=",".join(MODES),
                        micro_shapes="256x256x56x56,256x2048x7x7", micro_iters=20, amp="bf16")
    else:
        defaults = dict(batch=8, image=64, rounds=3, steps=1, modes="train-eager,infer-eager",
                        micro_shapes="4x64x14x14,4x256x2x2", micro_iters=3, amp="none")
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(args.modes) - set(MODES))
    if unknown:
        p.error(f"--modes: {', '.join(unknown)} not among {', '.join(MODES)}")
    args.micro_shapes = [tuple(int(d) for d in s.split("x")) for s in args.micro_shapes.split(",") if s]
    return args


# --- timing -----------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeat: int = 1) -> float:
    """Seconds per call of ``fn`` (CUDA events on a GPU: device time, not launch time)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeat):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000 / repeat
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """The most ``fn`` allocated above what was allocated before it (None off CUDA, without running it)."""
    if device.type != "cuda":
        return None
    _sync(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    _sync(device)
    return torch.cuda.max_memory_allocated(device) - before


def interleaved(variants: dict[str, Callable[[], object]], device: torch.device, rounds: int, steps: int,
                warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each variant, one entry per round; the order rotates every round."""
    names = list(variants)
    for name in names:
        for _ in range(warmup):
            variants[name]()
    _sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(rounds):
        for name in names[i % len(names):] + names[:i % len(names)]:
            times[name].append(timed(variants[name], device, steps))
    return times


def ratios(times: dict[str, list[float]], base: str) -> dict[str, float]:
    """Median over rounds of each variant's time over ``base``'s in the same round."""
    return {n: statistics.median(t / b for t, b in zip(ts, times[base])) for n, ts in times.items()}


# --- models -----------------------------------------------------------------------------------

def build_models(device: torch.device) -> tuple[dict[str, torch.nn.Module], str]:
    import timm
    torch.manual_seed(0)
    plain = timm.create_model("resnet50")
    hand = timm.create_model("seresnet50")
    # the fused ops need CUDA: on the CPU "triton" would refuse, "auto" runs PyTorch (said in the report)
    fused_key = "triton" if device.type == "cuda" else "auto"
    models = {"resnet50": plain,
              f"apply(resnet50, kernels={fused_key})": se_inject.apply(plain, r=16, kernels=fused_key),
              "apply(resnet50, kernels=torch)": se_inject.apply(plain, r=16, kernels="torch"),
              "timm seresnet50": hand}
    for name, model in models.items():
        if name.startswith("apply"):
            model.load_state_dict(hand.state_dict())  # the same weights: outputs comparable
    for model in models.values():
        model.to(device=device, memory_format=torch.channels_last)
    return models, fused_key


def model_variants(models: dict[str, torch.nn.Module], mode: str, x: torch.Tensor, y: torch.Tensor,
                   amp: torch.dtype | None) -> dict[str, Callable[[], object]]:
    train, compiled = mode.startswith("train"), mode.endswith("compiled")
    autocast = (lambda: torch.autocast(x.device.type, dtype=amp)) if amp else contextlib.nullcontext
    out: dict[str, Callable[[], object]] = {}
    for name, model in models.items():
        model.train(train)
        run = torch.compile(model) if compiled else model
        if train:
            opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

            def step(run=run, opt=opt):
                with autocast():
                    loss = F.cross_entropy(run(x), y)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
        else:
            def step(run=run):
                with torch.inference_mode(), autocast():
                    return run(x)
        out[name] = step
    return out


def output_diffs(models: dict[str, torch.nn.Module], x: torch.Tensor, amp: torch.dtype | None) -> dict[str, float]:
    """Max |logits - timm seresnet50's| (same weights, eval), for the two apply() variants."""
    autocast = torch.autocast(x.device.type, dtype=amp) if amp else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        for m in models.values():
            m.eval()
        ref = models["timm seresnet50"](x).float()
        return {n: (m(x).float() - ref).abs().max().item() for n, m in models.items() if n.startswith("apply")}


# --- block-end micro-benchmark ----------------------------------------------------------------

def micro_variants(shape: tuple[int, ...], device: torch.device, amp: torch.dtype | None,
                   modes: list[str]) -> tuple[dict[str, Callable[[], object]], dict[str, float]]:
    """Forward + backward of each block end on ``shape`` (channels_last), and max |diff| vs eager SE."""
    torch.manual_seed(0)
    c, r = shape[1], max(1, shape[1] // 16)
    dtype = amp or torch.float32
    fmt = torch.channels_last if len(shape) == 4 else torch.contiguous_format
    x, res = (torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=fmt).requires_grad_()
              for _ in range(2))
    weights = [torch.randn(s, device=device).mul_(0.1).requires_grad_() for s in ((r, c, 1, 1), (r,), (c, r, 1, 1), (c,))]
    grad = torch.randn_like(x)
    leaves = [x, res, *weights]
    kw = dict(channel_dim=1, post_act="relu")
    autocast = (lambda: torch.autocast(device.type, dtype=amp)) if amp else contextlib.nullcontext

    def plain():
        return torch.relu(x + res)

    def se_eager():
        return ops.reference_squeeze_excite(x, res, *weights, **kw)

    fns = {MICRO[0]: plain, MICRO[1]: se_eager}
    if any(m.endswith("compiled") for m in modes):
        fns[MICRO[2]] = torch.compile(se_eager)
    if device.type == "cuda":
        fns[MICRO[3]] = lambda: ops.squeeze_excite(x, res, *weights, **kw, fallback=False)

    def fwd_bwd(fn):
        def run():
            for t in leaves:
                t.grad = None
            with autocast():
                out = fn()
            out.backward(grad)
            return out
        return run

    variants = {name: fwd_bwd(fn) for name, fn in fns.items()}
    with autocast():
        ref = se_eager().float()
    diffs = {}
    for name in fns:
        if name.startswith("SE,") and name != MICRO[1]:
            with autocast():
                diffs[name] = (fns[name]().float() - ref).abs().max().item()
    return variants, diffs


# --- report -----------------------------------------------------------------------------------

def _versions(device: torch.device) -> list[str]:
    import timm
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    lines = [f"- date: {datetime.date.today()}; python {platform.python_version()}; torch {torch.__version__}; "
             f"triton {triton_version}; timm {timm.__version__}"]
    if device.type == "cuda":
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            driver = "unknown (nvidia-smi unavailable)"
        props = torch.cuda.get_device_properties(device)
        lines.append(f"- device: {torch.cuda.get_device_name(device)} ({props.total_memory / 2**30:.0f} GiB, "
                     f"{props.multi_processor_count} SMs); driver {driver}; CUDA {torch.version.cuda}")
    else:
        lines.append(f"- device: CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    return lines


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _load(start: float | None) -> str:
    """The 1-minute load average at the start and the end: other jobs sharing the machine show here."""
    end = _loadavg()
    if start is None or end is None:
        return ""
    return f" Load average (1 min) at the start and the end: {start:.1f}, {end:.1f} ({os.cpu_count()} cores)."


def _mib(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2**20:,.0f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    amp = torch.bfloat16 if args.amp == "bf16" else None
    t_start, load_start = time.perf_counter(), _loadavg()
    lines = [f"# SE cost on {'the GPU' if device.type == 'cuda' else 'the CPU'} (issue 11)", "",
             *_versions(device),
             f"- command: `python benchmarks/gpu_overhead.py {shlex.join(argv if argv is not None else sys.argv[1:])}`",
             f"- batch {args.batch}, {args.image}x{args.image}, {'bf16 autocast' if amp else 'fp32'}, channels_last; "
             f"{args.rounds} interleaved rounds of {args.steps} step(s) per variant after {args.warmup} warm-up; "
             "ratio: median over rounds of time / resnet50's time in the same round",
             "- peak: the most a step allocated above what was allocated before it"]

    models, fused_key = build_models(device)
    if fused_key != "triton":
        lines.append("- on the CPU the fused kernels do not run (they need CUDA): the kernels row runs "
                     "`kernels=auto`, i.e. the PyTorch formulation, the same code as the `kernels=torch` row; "
                     "the two rows' difference is this run's noise floor")
    x = torch.randn(args.batch, 3, args.image, args.image, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.batch,), device=device)
    diffs = output_diffs(models, x[:4], amp)
    lines += ["- max |logits - seresnet50's| (same weights, eval): "
              + ", ".join(f"{n}: {d:.1e}" for n, d in diffs.items()), ""]

    for mode in args.modes:
        variants = model_variants(models, mode, x, y, amp)
        times = interleaved(variants, device, args.rounds, args.steps, args.warmup)
        rel = ratios(times, "resnet50")
        peaks = {n: peak_bytes(fn, device) for n, fn in variants.items()}
        base_peak = peaks["resnet50"]
        lines += [f"## {mode.replace('-', ', ')}", "",
                  "| model | median ms | ratio to resnet50 | peak MiB | peak ratio |", "|---|---|---|---|---|"]
        for n, ts in times.items():
            peak_ratio = "n/a" if base_peak is None else f"{peaks[n] / base_peak:.3f}"
            lines.append(f"| {n} | {1000 * statistics.median(ts):.2f} | {rel[n]:.3f} | {_mib(peaks[n])} | {peak_ratio} |")
        lines.append("")
        del variants
        if device.type == "cuda":
            torch.cuda.empty_cache()

    for shape in args.micro_shapes:
        variants, micro_diffs = micro_variants(shape, device, amp, args.modes)
        times = interleaved(variants, device, args.micro_iters, 1, args.warmup)
        rel = ratios(times, MICRO[0])
        peaks = {n: peak_bytes(fn, device) for n, fn in variants.items()}
        lines += [f"## block end, forward + backward, {list(shape)}", "",
                  "| variant | median ms | ratio to add+relu | peak MiB |", "|---|---|---|---|"]
        for n, ts in times.items():
            lines.append(f"| {n} | {1000 * statistics.median(ts):.3f} | {rel[n]:.3f} | {_mib(peaks[n])} |")
        if MICRO[3] not in variants:
            lines.append(f"| {MICRO[3]} | not measured (needs CUDA) | | |")
        if micro_diffs:
            lines.append("")
            lines.append("max |output - SE eager's|: " + ", ".join(f"{n}: {d:.1e}" for n, d in micro_diffs.items()))
        lines.append("")
        del variants

    if device.type != "cuda":
        lines += ["## GPU figures", "",
                  "**Not measured**: no GPU was available to the session that produced this file, and GPU "
                  "figures are never estimated. On an H100/H200 (torch >= 2.6 with triton, timm) run, from "
                  "the repository root:", "", f"    {GPU_COMMAND}", "",
                  "(about 5-10 minutes, most of it torch.compile; `--modes train-eager,infer-eager,train-compiled` "
                  "covers the issue's targets in less.)", ""]
    lines.append(f"Total wall time: {time.perf_counter() - t_start:.0f} s.{_load(load_start)}")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
