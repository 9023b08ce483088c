"""Training images/s, side by side in one process: the trainer's step loop vs a hand-written loop (and vs
another version of the loop), and the two data paths (DataLoader vs the data set held on the device).

Same model (copies of one initialisation), batch and precision for every contestant; rounds rotate
the contestants' order so drift (thermal, other processes) hits all alike; medians are reported, and
the best rounds beside them (on a shared machine other processes only ever slow a round down).

- ``trainer``: ``trainers.loop.train_one_epoch`` exactly as a run calls it (timm optimizer, per-step
  scheduler, loss accumulation, tqdm bar, checkpoint hook), on in-memory batches already on the device;
  ``--step-check`` adds the per-step check runs do (non-finite loss/gradient, preemption flag: one
  all-reduce and one host read a step). The hand-written loop has no such check.
- ``trainer (baseline loop)``: the same, with the ``loop.py`` of ``--baseline-loop`` (another version of
  the file, e.g. main's: a before/after measurement in one run).
- ``hand``: forward / backward / step.
- with ``--data``, on Fashion-MNIST: ``DataLoader -> trainer`` (``data.on_device: false``, ``--workers``
  workers, timm's PrefetchLoader) and ``on-device -> trainer`` (``data.on_device: true``), each feeding
  the trainer's loop; and the two data paths alone (no model), batches only.

    python benchmarks/train_throughput.py                                  # CPU: cifar_resnet20, 1x28x28
    git show main:trainers/loop.py > /tmp/loop_main.py
    python benchmarks/train_throughput.py --threads 1 --step-check --baseline-loop /tmp/loop_main.py --data
    python benchmarks/train_throughput.py --device cuda --model resnet50 --input-size 3 224 224 \\
        --batch-size 128 --amp bf16 --channels-last --compile [--se paper]

Writes ``benchmarks/results/train_throughput.md`` (or ``--out``) with the command, machine and date.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import importlib.util
import itertools
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backbones import create_backbone  # noqa: E402
from trainers import loop as trainer_loop  # noqa: E402

_AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
Steps = Callable[[int], None]  # runs n optimizer steps (micro-batches, for the data-alone contestants)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--se", default=None, help="se_inject policy to apply (e.g. paper); default: plain backbone")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--input-size", type=int, nargs=3, default=(1, 28, 28), metavar=("C", "H", "W"))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", choices=tuple(_AMP), default="none")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--step-check", action="store_true", help="the trainer loops run the per-step check, as runs do")
    p.add_argument("--baseline-loop", default=None, metavar="LOOP_PY",
                   help="also time the trainer with this loop.py (another version of trainers/loop.py)")
    p.add_argument("--data", action="store_true", help="also time Fashion-MNIST's DataLoader vs on-device data paths")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of the --data DataLoader path")
    p.add_argument("--steps", type=int, default=10, help="optimizer steps per timed round")
    p.add_argument("--rounds", type=int, default=8, help="timed rounds per contestant (interleaved)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per contestant first")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "train_throughput.md"))
    p.add_argument("--append", action="store_true", help="add this result to --out instead of replacing it")
    return p.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    cpu = platform.processor() or "CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def load_loop(path: str) -> ModuleType:
    """Another version of ``trainers/loop.py``, imported beside the current one (its relative imports
    resolve in ``trainers``)."""
    spec = importlib.util.spec_from_file_location("trainers._baseline_loop", path)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "trainers"
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class Bench:
    """The contestants, each with its own copy of one model and its own optimizer."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.device, self.amp = args, torch.device(args.device), _AMP[args.amp]
        torch.manual_seed(0)
        model = create_backbone(args.model, num_classes=args.num_classes, in_chans=args.input_size[0])
        if args.se:
            import se_inject
            model = se_inject.apply(model, args.se, input_size=tuple(args.input_size))
        model.to(self.device)
        if args.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        g = torch.Generator().manual_seed(0)
        self.batches = [(torch.randn(args.batch_size, *args.input_size, generator=g).to(self.device),
                         torch.randint(0, args.num_classes, (args.batch_size,), generator=g).to(self.device))
                        for _ in range(4)]
        from tqdm import tqdm
        self.bar = tqdm(total=10 ** 9, file=open(os.devnull, "w"), mininterval=0.1)  # the rank-0 bar, writing nowhere

    def _copy(self) -> torch.nn.Module:
        return copy.deepcopy(self.model)

    def trainer(self, loop: ModuleType = trainer_loop, feed: Callable[[], Iterator] | None = None) -> Steps:
        """``loop.train_one_epoch`` on the in-memory batches (or ``feed()``'s, one iterator for the whole run)."""
        from timm.optim import create_optimizer_v2
        from timm.scheduler import create_scheduler_v2
        a, model = self.args, self._copy()
        opt = create_optimizer_v2(model, opt="sgd", lr=0.01, weight_decay=5e-4, momentum=0.9)
        total = (a.warmup + a.steps * a.rounds) * 2
        sched, _ = create_scheduler_v2(opt, sched="cosine", num_epochs=1, step_on_epochs=False, updates_per_epoch=total)
        check = dict(nonfinite="stop", stop_requested=lambda: False) if a.step_check else {}
        ctx = loop.StepContext(
            model=torch.compile(model) if a.compile else model, module=model, optimizer=opt,
            loss_fn=torch.nn.CrossEntropyLoss(), device=self.device, scheduler=sched,
            scaler=torch.amp.GradScaler(self.device.type) if a.amp == "fp16" else None, amp_dtype=self.amp,
            channels_last=a.channels_last, **check)
        progress = loop.EpochProgress(epoch=0)
        source = feed() if feed is not None else None

        def steps(n: int) -> None:
            batches = itertools.islice(source, n) if source is not None else \
                (self.batches[i % len(self.batches)] for i in range(n))
            loop.train_one_epoch(ctx, batches, progress, num_batches=progress.batch + n, on_update=lambda p: None,
                                 bar=self.bar)
        return steps

    def hand(self) -> Steps:
        a, model = self.args, self._copy()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
        scaler = torch.amp.GradScaler(self.device.type) if a.amp == "fp16" else None
        forward = torch.compile(model) if a.compile else model

        def steps(n: int) -> None:
            model.train()
            autocast = torch.autocast(self.device.type, dtype=self.amp) if self.amp is not None else contextlib.nullcontext()
            for i in range(n):
                x, y = self.batches[i % len(self.batches)]
                if a.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast:
                    loss = F.cross_entropy(forward(x), y)
                opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                else:
                    loss.backward()
                    opt.step()
        return steps

    def data_feed(self, on_device: bool) -> Callable[[], Iterator]:
        """Fashion-MNIST training batches of one data path, epoch after epoch, as the trainer builds them."""
        from trainers.config import load_config
        from trainers.data import build_data
        cfg = load_config("fashion-mnist", [f"data.batch_size={self.args.batch_size}", f"data.workers={self.args.workers}",
                                            f"data.on_device={str(on_device).lower()}"])
        data = build_data(cfg, 0, 1, self.device)

        def feed() -> Iterator:
            for epoch in itertools.count():
                data.train_sampler.set_epoch(epoch)
                yield from data.train_loader
        return feed

    @staticmethod
    def data_alone(feed: Callable[[], Iterator]) -> Steps:
        source = feed()

        def steps(n: int) -> None:
            for x, _ in itertools.islice(source, n):
                x.sum()  # touch the batch (on CUDA: wait for it below)
        return steps


def measure(contestants: dict[str, Steps], args: argparse.Namespace, device: torch.device) -> dict[str, list[float]]:
    """img/s of each contestant per round; rounds rotate the order (A-B-C, B-C-A, ...)."""
    for steps in contestants.values():
        steps(args.warmup)
    rates: dict[str, list[float]] = {k: [] for k in contestants}
    names = list(contestants)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            _sync(device)
            start = time.perf_counter()
            contestants[name](args.steps)
            _sync(device)
            rates[name].append(args.steps * args.batch_size / (time.perf_counter() - start))
    return rates


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    bench = Bench(args)
    contestants: dict[str, Steps] = {"trainer": bench.trainer()}
    if args.baseline_loop:
        contestants["trainer (baseline loop)"] = bench.trainer(load_loop(args.baseline_loop))
    contestants["hand-written"] = bench.hand()
    if args.data:
        loader_feed, device_feed = bench.data_feed(False), bench.data_feed(True)
        contestants["DataLoader -> trainer"] = bench.trainer(feed=loader_feed)
        contestants["on-device -> trainer"] = bench.trainer(feed=device_feed)
        contestants["DataLoader alone"] = bench.data_alone(loader_feed)
        contestants["on-device alone"] = bench.data_alone(device_feed)
    rates = measure(contestants, args, bench.device)
    med = {k: statistics.median(v) for k, v in rates.items()}
    best = {k: max(v) for k, v in rates.items()}

    ratios = {"trainer / hand": ("trainer", "hand-written", "target >= 0.95")}
    if args.baseline_loop:
        ratios["trainer / trainer (baseline loop)"] = ("trainer", "trainer (baseline loop)", "after / before")
    if args.data:
        ratios["on-device / DataLoader, training"] = ("on-device -> trainer", "DataLoader -> trainer", "")
        ratios["on-device / DataLoader, data alone"] = ("on-device alone", "DataLoader alone", "")
    result = {name: med[a] / med[b] for name, (a, b, _) in ratios.items()}

    cmd = "python " + " ".join(shlex.quote(a) for a in [str(Path(sys.argv[0]).relative_to(REPO))
                                                        if Path(sys.argv[0]).is_absolute() else sys.argv[0],
                                                        *(argv if argv is not None else sys.argv[1:])])
    model_name = args.model + (f" + SE ({args.se})" if args.se else "")
    setup = (f"{model_name}, batch {args.batch_size}, input {'x'.join(map(str, args.input_size))}, {bench.device.type}, "
             f"amp {args.amp}, channels_last {args.channels_last}, compile {args.compile}, "
             f"step check {'on' if args.step_check else 'off'}")
    lines = [
        "## " + setup, "",
        f"- command: `{cmd}`",
        f"- machine: {_machine(bench.device)}; torch {torch.__version__}, Python {platform.python_version()}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- {args.rounds} interleaved rounds of {args.steps} steps each (after {args.warmup} warm-up steps), medians", "",
        "| contestant | img/s (median) | img/s (best round) | img/s per round |", "|---|---|---|---|",
        *(f"| {name} | {med[name]:.1f} | {best[name]:.1f} | {', '.join(f'{v:.0f}' for v in rates[name])} |"
          for name in contestants), "",
        *(f"- **{name} = {result[name]:.3f}** (medians{'; ' + note if note else ''}); best rounds: "
          f"{best[a] / best[b]:.3f}" for name, (a, b, note) in ratios.items()), "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        head = "# Training throughput: the trainer's step loop and data paths, side by side\n\n"
        previous = out.read_text() if args.append and out.exists() else head
        out.write_text(previous + text + "\n")
    return {"trainer": med["trainer"], "hand": med["hand-written"], "ratio": result["trainer / hand"],
            "best_ratio": best["trainer"] / best["hand-written"], **result}


if __name__ == "__main__":
    main()
