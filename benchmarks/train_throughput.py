"""Training images/s: the trainer's step loop vs a minimal hand-written loop, interleaved in one process.

Same model (two copies of one initialisation), batch, precision and in-memory batches already on the
device; only the loop differs. The trainer side is ``trainers.loop.train_one_epoch`` exactly as a
run calls it (timm optimizer and per-step scheduler, loss accumulation, tqdm bar, checkpoint hook);
the hand side is forward / backward / step. Rounds alternate A-B-B-A so drift (thermal, other
processes) hits both; the ratio of medians is reported (target >= 0.95), and the ratio of the best
rounds beside it (on a shared machine other processes only ever slow a round down).

    python benchmarks/train_throughput.py                                  # CPU: cifar_resnet20, 1x28x28
    python benchmarks/train_throughput.py --device cuda --model resnet50 --input-size 3 224 224 \\
        --batch-size 128 --amp bf16 --channels-last --compile [--se paper]

Writes ``benchmarks/results/train_throughput.md`` (or ``--out``) with the command, machine and date.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backbones import create_backbone  # noqa: E402
from trainers.loop import EpochProgress, StepContext, train_one_epoch  # noqa: E402

_AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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
    p.add_argument("--steps", type=int, default=10, help="optimizer steps per timed round")
    p.add_argument("--rounds", type=int, default=8, help="timed rounds per loop (interleaved)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per loop first")
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


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp = _AMP[args.amp]
    torch.manual_seed(0)
    model = create_backbone(args.model, num_classes=args.num_classes, in_chans=args.input_size[0])
    if args.se:
        import se_inject
        model = se_inject.apply(model, args.se, input_size=tuple(args.input_size))
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    trainer_model, hand_model = model, copy.deepcopy(model)

    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from tqdm import tqdm
    opt = create_optimizer_v2(trainer_model, opt="sgd", lr=0.01, weight_decay=5e-4, momentum=0.9)
    steps_total = (args.warmup + args.steps * args.rounds) * 2
    sched, _ = create_scheduler_v2(opt, sched="cosine", num_epochs=1, step_on_epochs=False, updates_per_epoch=steps_total)
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    fwd_trainer = torch.compile(trainer_model) if args.compile else trainer_model
    ctx = StepContext(model=fwd_trainer, module=trainer_model, optimizer=opt, loss_fn=torch.nn.CrossEntropyLoss(),
                      device=device, scheduler=sched, scaler=scaler, amp_dtype=amp, channels_last=args.channels_last)
    progress = EpochProgress(epoch=0)
    bar = tqdm(total=10 ** 9, file=open(os.devnull, "w"), mininterval=0.1)  # the rank-0 bar, writing nowhere

    hand_opt = torch.optim.SGD(hand_model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    hand_scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    fwd_hand = torch.compile(hand_model) if args.compile else hand_model

    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(args.batch_size, *args.input_size, generator=g).to(device),
                torch.randint(0, args.num_classes, (args.batch_size,), generator=g).to(device)) for _ in range(4)]

    def trainer_steps(n: int) -> None:
        feed = (batches[i % len(batches)] for i in range(n))
        train_one_epoch(ctx, feed, progress, num_batches=progress.batch + n, on_update=lambda p: None, bar=bar)

    def hand_steps(n: int) -> None:
        hand_model.train()
        autocast = torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
        for i in range(n):
            x, y = batches[i % len(batches)]
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast:
                loss = F.cross_entropy(fwd_hand(x), y)
            hand_opt.zero_grad(set_to_none=True)
            if hand_scaler is not None:
                hand_scaler.scale(loss).backward()
                hand_scaler.step(hand_opt)
                hand_scaler.update()
            else:
                loss.backward()
                hand_opt.step()

    def timed(fn) -> float:
        _sync(device)
        start = time.perf_counter()
        fn(args.steps)
        _sync(device)
        return args.steps * args.batch_size / (time.perf_counter() - start)

    trainer_steps(args.warmup)
    hand_steps(args.warmup)
    rates: dict[str, list[float]] = {"trainer": [], "hand": []}
    for r in range(args.rounds):
        order = ("trainer", "hand") if r % 2 == 0 else ("hand", "trainer")  # A-B, B-A, ...
        for name in order:
            rates[name].append(timed(trainer_steps if name == "trainer" else hand_steps))
    med = {k: statistics.median(v) for k, v in rates.items()}
    best = {k: max(v) for k, v in rates.items()}
    ratio = med["trainer"] / med["hand"]

    cmd = "python " + " ".join(shlex.quote(a) for a in [str(Path(sys.argv[0]).relative_to(REPO))
                                                        if Path(sys.argv[0]).is_absolute() else sys.argv[0],
                                                        *(argv if argv is not None else sys.argv[1:])])
    model_name = args.model + (f" + SE ({args.se})" if args.se else "")
    setup = (f"{model_name}, batch {args.batch_size}, input {'x'.join(map(str, args.input_size))}, {device.type}, "
             f"amp {args.amp}, channels_last {args.channels_last}, compile {args.compile}")
    lines = [
        "## " + setup, "",
        f"- command: `{cmd}`",
        f"- machine: {_machine(device)}; torch {torch.__version__}, Python {platform.python_version()}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- {args.rounds} interleaved rounds of {args.steps} steps each (after {args.warmup} warm-up steps), medians", "",
        "| loop | img/s (median) | img/s (best round) | img/s per round |", "|---|---|---|---|",
        f"| trainer (`trainers.loop.train_one_epoch`) | {med['trainer']:.1f} | {best['trainer']:.1f} | "
        f"{', '.join(f'{v:.0f}' for v in rates['trainer'])} |",
        f"| hand-written | {med['hand']:.1f} | {best['hand']:.1f} | {', '.join(f'{v:.0f}' for v in rates['hand'])} |", "",
        f"**trainer / hand = {ratio:.3f}** (medians; target >= 0.95); best rounds: "
        f"{best['trainer'] / best['hand']:.3f}", "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        head = "# Training throughput: trainer step loop vs hand-written loop\n\n"
        previous = out.read_text() if args.append and out.exists() else head
        out.write_text(previous + text + "\n")
    return {"trainer": med["trainer"], "hand": med["hand"], "ratio": ratio, "best_ratio": best["trainer"] / best["hand"]}


if __name__ == "__main__":
    main()
