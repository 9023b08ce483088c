"""Training img/s of stacked runs (``trainers.stack``) against one run, and against the same runs as separate
processes sharing the device, in one call (issue 26's targets, one H100/H200):

- one ResNet-20 run, its whole step one CUDA graph (a stacked group of one run): >= 50,000 img/s;
- 16 stacked ResNet-20 runs: >= 300,000 img/s in all, and >= 6x the 16 runs as 16 processes at once.

Every contestant is the trainer's own stacked group (``trainers.stack.group``: the runs' models, data,
optimizers and schedules as ``python -m trainers.stack`` builds them; Fashion-MNIST on the device, bf16,
channels_last), timed over ``--steps`` steps after ``--warmup`` (the graph capture is in the warm-up),
synchronised at both ends. The separate processes each build a group of one run, warm up, wait for a
common start, then train for ``--duration`` seconds; their images add up over the same window.

    python benchmarks/stack_throughput.py --runs 1 16 --separate 16                       # GPU: the targets
    python benchmarks/stack_throughput.py --runs 1 16 --eager --out /tmp/eager.md          # the graphs' share
    python benchmarks/stack_throughput.py --smoke                                          # CPU: tiny, seconds

Writes ``benchmarks/results/stack_throughput.md`` (or ``--out``) with the command, device and date.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GPU_PATH = ["data.on_device=true", "run.cuda_graphs=true", "run.amp=bf16", "run.channels_last=true",
            "data.aug.pad=4", "run.progress=false", "run.log_every=100000"]
SMOKE = ["data.dataset=synthetic", "data.synthetic.train_samples=64", "data.synthetic.val_samples=16",
         "data.synthetic.size=[1,12,12]", "model.name=cifar_resnet8", "data.batch_size=8", "run.device=cpu",
         "data.on_device=true", "run.progress=false", "run.log_every=100000", "data.workers=0"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--runs", type=int, nargs="+", default=[1, 16], help="group sizes to time (stacked)")
    p.add_argument("--separate", type=int, default=16, help="also time this many one-run processes at once (0: no)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=200, help="timed steps per group")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (the graph capture among them)")
    p.add_argument("--duration", type=float, default=15.0, help="seconds the separate processes train together")
    p.add_argument("--eager", action="store_true", help="no CUDA graphs (run.cuda_graphs=false)")
    p.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE", help="trainer override")
    p.add_argument("--smoke", action="store_true", help="tiny, on the CPU: checks the script, measures nothing")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "stack_throughput.md"))
    p.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)  # a separate process: its start folder
    return p.parse_args(argv)


def _overrides(args: argparse.Namespace) -> list[str]:
    base = SMOKE if args.smoke else [*GPU_PATH, f"model.name={args.model}", f"data.batch_size={args.batch_size}"]
    if args.eager:
        base = [*base, "run.cuda_graphs=false"]
    return [*base, *args.extra]


def _group(args: argparse.Namespace, k: int, root: Path):
    """A set-up stacked group of ``k`` runs (seeds 0..k-1) and the function that times ``n`` steps of it."""
    from trainers import load_config
    from trainers.distributed import setup_distributed
    from trainers.preemption import PreemptionSignals
    from trainers.stack.group import _Group

    config = None if args.smoke else "fashion-mnist"
    cfgs = [load_config(config, [*_overrides(args), f"run.seed={s}", f"run.out_dir={root / f'k{k}-seed{s}'}"])
            for s in range(k)]
    group = _Group(cfgs, setup_distributed(cfgs[0].run.device), PreemptionSignals())
    with contextlib.redirect_stdout(io.StringIO()):
        group._setup()
        group._begin_epoch()
    step, width = group.step, group.members[0].num_batches
    done = [0]

    def steps(n: int) -> None:
        for _ in range(n):
            if done[0] % width == 0 and done[0]:
                step.step_index.fill_(0)  # the epoch's tables again (outside the graph)
            step.run()
            done[0] += 1

    return group, steps


def _sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_group(args: argparse.Namespace, k: int, root: Path) -> dict:
    t0 = time.perf_counter()
    group, steps = _group(args, k, root)
    device = group.d.device
    steps(args.warmup)
    _sync(device)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    steps(args.steps)
    _sync(device)
    seconds = time.perf_counter() - t0
    batch = group.members[0].cfg.data.batch_size
    graphs = group.step.graph is not None
    return {"what": f"{k} stacked run{'s' if k > 1 else ''}" if k > 1 else "one run (a group of one)", "runs": k,
            "img_s": k * batch * args.steps / seconds, "step_ms": 1000 * seconds / args.steps, "setup_s": setup,
            "note": ("whole step one CUDA graph" if graphs else "eager steps") + f", {args.steps} steps"}


def child(args: argparse.Namespace) -> None:
    """One of the separate processes: a group of one run, warmed up, trains from the common start for --duration."""
    folder = args.child
    group, steps = _group(args, 1, folder / f"p{os.getpid()}")
    steps(args.warmup)
    _sync(group.d.device)
    (folder / f"ready-{os.getpid()}").touch()
    while not (folder / "go").exists():
        time.sleep(0.005)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < args.duration:
        steps(10)
        n += 10
        _sync(group.d.device)
    seconds = time.perf_counter() - t0
    print(json.dumps({"images": n * group.members[0].cfg.data.batch_size, "seconds": seconds}), flush=True)


def time_separate(args: argparse.Namespace, n: int, root: Path, argv: list[str]) -> dict:
    folder = root / "separate"
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--child", str(folder), *argv]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(n)]
    while len(list(folder.glob("ready-*"))) < n:
        if any(p.poll() not in (None, 0) for p in procs):
            break
        time.sleep(0.05)
    setup = time.perf_counter() - t0
    (folder / "go").touch()
    results, errors = [], []
    for p in procs:
        out, err = p.communicate()
        if p.returncode == 0 and out.strip():
            results.append(json.loads(out.strip().splitlines()[-1]))
        else:
            errors.append((err.strip().splitlines() or [f"exit {p.returncode}"])[-1])
    images = sum(r["images"] for r in results)
    window = max((r["seconds"] for r in results), default=float("nan"))
    note = f"{len(results)} of {n} processes, {args.duration:g} s together" + (f"; failed: {errors[0]}" if errors else "")
    return {"what": f"{n} runs as {n} processes at once", "runs": n, "img_s": images / window, "step_ms": float("nan"),
            "setup_s": setup, "note": note}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child is not None:
        child(args)
        return 0
    import torch
    from benchmarks._report import emit
    if args.smoke:
        args.runs, args.separate, args.steps, args.warmup, args.duration = [1, 2], min(args.separate, 2) or 0, 4, 2, 1.0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.runs:
            rows.append(time_group(args, k, Path(tmp)))
            print(rows[-1], flush=True)
        if args.separate:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # the groups timed above are gone: their memory to the processes
            rows.append(time_separate(args, args.separate, Path(tmp), argv))
            print(rows[-1], flush=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.smoke else platform.processor() or "cpu"
    one = next((r["img_s"] for r in rows if r["runs"] == 1 and "stacked" not in r["what"] and "processes" not in r["what"]), None)
    lines = [f"# Stacked runs: img/s ({'smoke run on the CPU: checks the script, measures nothing' if args.smoke else args.model})",
             "", f"- command: `python {' '.join(shlex.quote(a) for a in ['benchmarks/stack_throughput.py', *argv])}`",
             f"- device: {device}; torch {torch.__version__}, Python {platform.python_version()}",
             f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"- trainer overrides: `{' '.join(_overrides(args))}`", "",
             "| contestant | runs | img/s, all runs | img/s a run | ms a step | x one run | set-up s (capture incl.) | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['img_s'] / one:.2f}" if one else "-"
        step = "-" if r["step_ms"] != r["step_ms"] else f"{r['step_ms']:.2f}"
        lines.append(f"| {r['what']} | {r['runs']} | {r['img_s']:,.0f} | {r['img_s'] / r['runs']:,.0f} | {step} | {ratio} | "
                     f"{r['setup_s']:.1f} | {r['note']} |")
    stacked = [r for r in rows if "stacked" in r["what"]]
    separate = next((r for r in rows if "processes" in r["what"]), None)
    if stacked and separate and stacked[-1]["runs"] == separate["runs"]:
        lines += ["", f"**{stacked[-1]['runs']} stacked / {separate['runs']} processes = "
                      f"{stacked[-1]['img_s'] / separate['img_s']:.2f}x** (target >= 6)"]
    lines += ["", "Targets (issue 26, one H100/H200): one run >= 50,000 img/s; 16 stacked runs >= 300,000 img/s in all."]
    emit(lines, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
