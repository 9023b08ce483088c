"""Where a ResNet-20 training step's time goes: ``torch.profiler`` tables of the trainer's step and of the
stacked step of one run (``trainers.stack``: the whole step, data to schedule, one CUDA graph).

- ``trainer``: ``trainers.loop.train_one_epoch`` as ``python -m trainers.train`` runs it on the recipe's
  GPU path (Fashion-MNIST on the device, ``run.cuda_graphs``: forward and backward compiled with mode
  reduce-overhead, bf16, channels_last); the optimizer, the scheduler, the per-step non-finite check
  (one host read a step) and the loss bookkeeping run outside the graphs;
- ``stacked, one run``: the same run as a stacked group of one (``python -m trainers.stack``).

For each: the wall time of a step (synchronised, over ``--steps`` steps after ``--warmup``), the device
time of its kernels (the profiler's, per step) and the top operators by self device time (on the CPU:
self CPU time). Wall much above kernel time means the step waits on the host (launches, syncs).

    python benchmarks/step_profile.py                                   # GPU
    python benchmarks/step_profile.py --smoke --out /tmp/profile.md     # CPU: tiny, checks the script

Writes ``benchmarks/results/step_profile.md`` (or ``--out``) with the command, device and date.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.stack_throughput import GPU_PATH, SMOKE  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=15, help="untimed steps first (compiles, graph captures)")
    p.add_argument("--rows", type=int, default=20, help="operators listed per table")
    p.add_argument("--only", choices=("trainer", "stacked"), default=None)
    p.add_argument("--smoke", action="store_true", help="tiny, on the CPU: checks the script, measures nothing")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "step_profile.md"))
    return p.parse_args(argv)


def _overrides(args: argparse.Namespace, root: Path) -> tuple[str | None, list[str]]:
    if args.smoke:
        return None, [*SMOKE, f"run.out_dir={root}"]
    return "fashion-mnist", [*GPU_PATH, f"model.name={args.model}", f"run.out_dir={root}"]


def trainer_steps(args: argparse.Namespace, root: Path) -> tuple[Callable[[int], None], object, int]:
    """``n`` steps of the trainer's own loop on a set-up run."""
    from trainers import load_config
    from trainers.distributed import setup_distributed
    from trainers.loop import EpochProgress, train_one_epoch
    from trainers.preemption import PreemptionSignals
    from trainers.trainer import _Run

    config, overrides = _overrides(args, root / "trainer")
    cfg = load_config(config, overrides)
    run = _Run(cfg, setup_distributed(cfg.run.device), PreemptionSignals())
    with contextlib.redirect_stdout(io.StringIO()):
        run._setup()
    progress = EpochProgress(epoch=0)

    def steps(n: int) -> None:
        if progress.batch + n > run.num_batches:
            progress.batch = 0
        run.data.train_sampler.set_epoch(0, start_batch=progress.batch)
        train_one_epoch(run.ctx, run.data.train_loader, progress, progress.batch + n, on_update=run._on_update,
                        log_every=cfg.run.log_every)

    return steps, run.d.device, cfg.data.batch_size


def stacked_steps(args: argparse.Namespace, root: Path) -> tuple[Callable[[int], None], object, int]:
    from benchmarks.stack_throughput import _group
    options = argparse.Namespace(smoke=args.smoke, model=args.model, batch_size=128, eager=False, extra=[])
    group, steps = _group(options, 1, root / "stacked")
    return steps, group.d.device, group.members[0].cfg.data.batch_size


def profile(name: str, make, args: argparse.Namespace, root: Path) -> list[str]:
    import torch
    from torch.profiler import ProfilerActivity

    try:
        steps, device, batch = make(args, root)
        cuda = device.type == "cuda"
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        steps(args.warmup)
        sync()
        t0 = time.perf_counter()
        steps(args.steps)
        sync()
        wall = (time.perf_counter() - t0) / args.steps
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with torch.profiler.profile(activities=activities) as prof:
            steps(args.steps)
            sync()
    except Exception as e:  # one contestant's failure is a finding, not the end of the session
        from se_inject.errors import first_line
        return [f"## {name}", "", f"**failed**: {first_line(e)}", ""]
    events = prof.key_averages()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    kernel_us = sum(getattr(e, key, 0) for e in events) / args.steps
    table = events.table(sort_by=key, row_limit=args.rows, max_name_column_width=60)
    what = "device (kernel)" if cuda else "CPU (self)"
    return [f"## {name}", "",
            f"- wall time a step: **{1000 * wall:.2f} ms** ({args.steps} steps after {args.warmup} warm-up), "
            f"{batch / wall:,.0f} img/s",
            f"- {what} time a step, profiler: {kernel_us / 1000:.2f} ms ({100 * kernel_us / 1000 / (1000 * wall):.0f} % of the wall time)",
            "", "```", table.strip(), "```", ""]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    import torch
    from benchmarks._report import emit
    if args.smoke:
        args.steps, args.warmup, args.rows = 3, 1, 8
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.smoke else "cpu"
    lines = [f"# Where a {args.model if not args.smoke else 'cifar_resnet8 (smoke)'} training step's time goes", "",
             f"- command: `python {' '.join(shlex.quote(a) for a in ['benchmarks/step_profile.py', *argv])}`",
             f"- device: {device}; torch {torch.__version__}, Python {platform.python_version()}",
             f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC", ""]
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in (("trainer (trainers.loop, run.cuda_graphs = torch.compile reduce-overhead)", trainer_steps),
                           ("stacked, one run (trainers.stack: the whole step one CUDA graph)", stacked_steps)):
            if args.only and not name.startswith(args.only):
                continue
            lines += profile(name, make, args, Path(tmp))
            print("\n".join(lines[-3:]), flush=True)
    emit(lines, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
