"""Issue 13's faults done to real torchrun jobs on a GPU: the CUDA paths the CPU tests cannot reach.

``tests/test_trainer_reliability.py`` kills, signals and poisons 2-rank gloo runs on the CPU and checks that
each ends where an uninterrupted run does, bit for bit. This script does the same to the trainer where a
cluster runs it: CUDA, bf16 autocast (and fp16 with its GradScaler), channels_last, the fused SE kernels,
the on-device data path and CUDA graphs, real Fashion-MNIST, deterministic mode. Each stage launches
``torchrun ... -m trainers.train`` as a user does, and compares final weights, EMA weights, optimizer state
and per-epoch history with an uninterrupted run's at atol = 0::

    PYTHONPATH=. python benchmarks/gpu_reliability.py --out benchmarks/results/gpu_reliability.md

``--device cpu`` runs the same stages on the CPU at the tests' size (synthetic data, 2 gloo ranks), which is
how the script is tried before a GPU session. One rank per GPU: on a one-GPU machine the runs are one rank
(no NCCL collective runs; two ranks on one GPU is not something NCCL allows).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the launch helpers the reliability tests use

from benchmarks._report import emit  # noqa: E402
from trainer_runs import (Launched, assert_identical, assert_same_end, complete_steps, torchrun,  # noqa: E402
                          worker_pid)

from trainers.checkpoint import load_checkpoint  # noqa: E402

STAGES = ("repeat", "preempt", "elastic", "nonfinite", "fp16", "cuda_graphs")
SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


@dataclass(frozen=True)
class Setup:
    """What the runs train: a recipe and its overrides, steps per epoch, ranks and checkpoint interval."""
    sets: tuple[str, ...]
    steps: int          # optimizer steps per epoch
    nproc: int
    every: int          # checkpoint.every_steps
    config: str | None = None
    epochs: int = 2

    def args(self, out: Path, *extra: str) -> list[str]:
        sets = (f"run.out_dir={out}", *self.sets, f"checkpoint.every_steps={self.every}", "checkpoint.keep_last=1000")
        config = ["--config", self.config] if self.config else []
        return config + [a for s in sets for a in ("--set", s)] + list(extra)


def gpu_setup(batches: int) -> Setup:
    """SE-ResNet-20 on Fashion-MNIST (the recipe, on the GPU path of ``examples/fashion_mnist_gpu.yaml``), with
    every source of randomness a resume must restore switched on: dropout, mixup, random erasing, on-device
    crops and flips."""
    return Setup(config="fashion-mnist", sets=(
        "run.deterministic=true", "run.epochs=2", "run.progress=false", "run.device=cuda", "run.amp=bf16",
        "run.channels_last=true", "model.se.policy=paper", "model.se.r=16", "model.kwargs={drop_rate: 0.2}",
        "data.on_device=true", "data.batch_size=256", f"data.limit_train_batches={batches}",
        "data.limit_val_batches=8", "data.aug.re_prob=0.25", "loss.mixup=0.2", "ema.decay=0.99"),
        steps=batches, nproc=max(torch.cuda.device_count(), 1), every=max(batches // 6, 2))


def cpu_setup() -> Setup:
    """The CPU tests' run (``tests/test_trainer_reliability.py``) with SE: 2 gloo ranks, 8 steps an epoch."""
    return Setup(sets=("run.deterministic=true", "run.epochs=2", "run.progress=false", "run.device=cpu",
                       "data.dataset=synthetic", "data.synthetic.train_samples=256", "data.synthetic.val_samples=32",
                       "data.synthetic.size=[3,16,16]", "data.batch_size=16", "data.workers=0", "data.aug.re_prob=0.25",
                       "model.name=cifar_resnet8", "model.se.policy=paper", "model.se.r=4",
                       "model.kwargs={drop_rate: 0.2}", "loss.mixup=0.2", "ema.decay=0.9"),
                 steps=8, nproc=2, every=3)


def same_end(reference: Path, out: Path) -> str:
    """'identical' or where the two runs' final states first differ."""
    try:
        assert_same_end(reference, out)
    except AssertionError as e:
        return f"differs: {str(e).splitlines()[0][:200]}"
    return "identical"


class Stages:
    """One method per stage; each returns a report row ``(fault, what happened, work lost, final state)``."""

    def __init__(self, setup: Setup, root: Path, timeout: float) -> None:
        self.setup, self.root, self.timeout = setup, root, timeout
        self.references: dict[str, Path] = {}
        self.last_log: Path | None = None  # of the run launched last: the one a failed stage stopped at

    def launch(self, name: str, out: Path, *extra: str, launcher: tuple[str, ...] = (), script: str | None = None,
               extra_env: dict[str, str] | None = None, fault: str | None = None) -> Launched:
        args = self.setup.args(out, *extra)
        if fault:
            args = [fault, *args]
        log = self.last_log = self.root / f"{name}.log"
        return Launched(torchrun(args, nproc=self.setup.nproc, launcher=launcher, script=script), log,
                        extra_env=extra_env)

    def finished(self, run: Launched, what: str) -> None:
        rc = run.wait(self.timeout)
        assert rc == 0, f"{what} exited {rc}: {_last_error(run.output())}"

    def reference(self, variant: str = "", *extra: str) -> Path:
        """The uninterrupted run of a variant (made once)."""
        if variant not in self.references:
            out = self.root / f"reference{variant}"
            self.finished(self.launch(f"reference{variant}", out, *extra), f"the uninterrupted run{variant}")
            self.references[variant] = out
        return self.references[variant]

    def repeat(self) -> tuple[str, ...]:
        ref = self.reference()
        out = self.root / "repeat"
        self.finished(self.launch("repeat", out), "the second uninterrupted run")
        return ("none: the uninterrupted run twice (is this stack deterministic?)", "both ran to the end", "0",
                same_end(ref, out))

    def _preempt(self, name: str, sig: signal.Signals, variant: str = "", *extra: str) -> tuple[str, ...]:
        ref = self.reference(variant, *extra)
        out = self.root / name
        run = self.launch(name, out, *extra, launcher=("--signals-to-handle", SIGNALS))
        run.wait_for_checkpoint(out, self.setup.every, timeout=self.timeout)  # training is under way
        os.kill(run.pid, sig)  # to the launcher, as a scheduler does; torchrun forwards it to every rank
        rc = run.wait(self.timeout)
        lines = [line for line in run.output().splitlines() if line.startswith("Preempted:")]
        assert len(lines) == 1, f"{len(lines)} 'Preempted:' lines (launcher exit {rc}): {_last_error(run.output())}"
        m = re.search(r"after step (\d+) ", lines[0])
        step = int(m.group(1))
        assert complete_steps(out)[0] == step, f"checkpoints {complete_steps(out)} after '{lines[0]}'"
        resumed = self.launch(name + "-resumed", out, *extra, "--resume", "auto")
        self.finished(resumed, "the resumed run")
        assert f"(step {step})" in resumed.output(), "the resume did not start at the checkpoint's step"
        codes = sorted(set(re.findall(r"exitcode: (-?\d+)", run.output())))
        return (f"{sig.name} to torchrun during epoch {step // self.setup.steps}",
                f"every rank stopped after step {step} and wrote its checkpoint; "
                f"{'rank exit status ' + ', '.join(codes) + ', ' if codes else ''}torchrun exit {rc}; "
                "`--resume auto` went on", "0", same_end(ref, out))

    def preempt(self) -> tuple[str, ...]:
        return self._preempt("preempt", signal.SIGUSR1)

    def fp16(self) -> tuple[str, ...]:
        fault, *rest = self._preempt("fp16", signal.SIGTERM, "-fp16", "--set", "run.amp=fp16")
        return (f"{fault}, fp16 autocast + GradScaler", *rest)

    def cuda_graphs(self) -> tuple[str, ...]:
        if "run.device=cuda" not in self.setup.sets:
            return ("CUDA graphs", "not run: CUDA only", "-", "-")
        fault, *rest = self._preempt("graphs", signal.SIGUSR1, "-graphs", "--set", "run.cuda_graphs=true")
        return (f"{fault}, run.cuda_graphs=true", *rest)

    def elastic(self) -> tuple[str, ...]:
        ref = self.reference()
        out = self.root / "elastic"
        run = self.launch("elastic", out, launcher=("--standalone", "--max-restarts", "1"),
                          extra_env={"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"})
        newest = run.wait_for_checkpoint(out, self.setup.every, timeout=self.timeout)
        os.kill(worker_pid(run.pid, rank=self.setup.nproc - 1), signal.SIGKILL)
        self.finished(run, "the restarted group")
        m = re.search(r"elastic restart 1: resuming from the newest complete checkpoint, \S+/step-(\d+)\n", run.output())
        assert m, f"no elastic restart in the log: {_last_error(run.output())}"
        step = int(m.group(1))
        return (f"SIGKILL of rank {self.setup.nproc - 1} mid-epoch, torchrun --max-restarts=1",
                f"the agent restarted the group, which resumed by itself from step {step} (newest at the kill: "
                f"{newest})", f"those made after step {step}: fewer than {self.setup.every} (the checkpoint interval)",
                same_end(ref, out))

    def nonfinite(self) -> tuple[str, ...]:
        ref = self.reference()
        bad = 2 * self.setup.every  # micro-batch index: step bad + 1 is poisoned; the reference holds step `bad`
        out = self.root / "nonfinite"
        worker = str(REPO / "tests" / "fault_worker.py")
        fault = f"0:{bad}:{self.setup.nproc - 1}"
        stop = self.launch("nonfinite-stop", out, "--set", "checkpoint.every_steps=null", script=worker, fault=fault)
        rc = stop.wait(self.timeout)
        errors = [line for line in stop.output().splitlines() if line.startswith("NonFiniteError")]
        assert len(errors) == 1, f"{len(errors)} NonFiniteError lines (exit {rc}): {_last_error(stop.output())}"
        assert complete_steps(out) == [bad], f"checkpoints {complete_steps(out)}"
        mine = load_checkpoint(out / "checkpoints" / f"step-{bad:08d}")
        theirs = load_checkpoint(ref / "checkpoints" / f"step-{bad:08d}")
        try:
            assert_identical(mine.model, theirs.model, "model")
            assert_identical(mine.ema, theirs.ema, "ema")
            assert_identical(mine.state["optimizer"], theirs.state["optimizer"], "optimizer")
            last_good = "identical to the uninterrupted run's step-%d" % bad
        except AssertionError as e:
            last_good = f"differs from the uninterrupted run's step-{bad}: {str(e).splitlines()[0][:160]}"
        skip = self.launch("nonfinite-skip", out, "--set", "checkpoint.every_steps=null", "--set", "run.nonfinite=skip",
                           "--resume", "auto", script=worker, fault=fault)
        self.finished(skip, "the run with run.nonfinite=skip")
        skipped = [json.loads(line)["skipped_steps"] for line in open(out / "metrics.jsonl")]
        return (f"+inf loss at step {bad + 1} on rank {self.setup.nproc - 1}",
                f"stop: `{errors[0][:90]}...`, exit {rc}; the last good state is {last_good}. skip (resumed): "
                f"skipped_steps per epoch {skipped}", "0 (stop); 1 step dropped (skip)",
                "skip: one step fewer by design")


def _last_error(log: str) -> str:
    """The last line that looks like an error, else the last line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception)\b|^error:", line)]
    return (errors or lines or ["(no output)"])[-1][:300]


def environment() -> list[str]:
    import triton
    import timm
    dev = "CPU only"
    if torch.cuda.is_available():
        import subprocess
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True).stdout.strip().splitlines()
        dev = (f"{torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB), "
               f"{torch.cuda.device_count()} GPU(s), driver {driver[0] if driver else '?'}, CUDA {torch.version.cuda}")
    return [f"- date: {datetime.date.today()}; device: {dev}; python {platform.python_version()}, torch "
            f"{torch.__version__}, triton {triton.__version__}, timm {timm.__version__}"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)}")
    p.add_argument("--batches", type=int, default=120, help="training batches per epoch on the GPU")
    p.add_argument("--work", type=Path, default=Path("runs/gpu_reliability"), help="where the runs write")
    p.add_argument("--budget-s", type=float, default=480, help="no stage starts after this many seconds")
    p.add_argument("--timeout", type=float, default=180, help="seconds a run may take")
    p.add_argument("--out", type=Path, default=None, help="the report (markdown)")
    a = p.parse_args(argv)
    stages = [s for s in a.stages.split(",") if s]
    unknown = set(stages) - set(STAGES)
    if unknown:
        p.error(f"unknown stage(s) {sorted(unknown)}: choose from {', '.join(STAGES)}")
    setup = gpu_setup(a.batches) if a.device == "cuda" else cpu_setup()
    a.work.mkdir(parents=True, exist_ok=True)
    runner = Stages(setup, a.work.resolve(), a.timeout)
    start = time.monotonic()
    rows, failed = [], {}
    for name in stages:
        if time.monotonic() - start > a.budget_s:
            rows.append((name, "not run: the budget was spent", "-", "-"))
            continue
        t0, runner.last_log = time.monotonic(), None
        try:
            row = getattr(runner, name)()
        except Exception as e:  # one stage's failure is a row of the report, not the end of it
            failed[name] = (traceback.format_exc(), runner.last_log)
            row = (name, f"**failed**: {str(e).splitlines()[0][:300] if str(e) else type(e).__name__}", "?", "?")
        rows.append((*row[:3], row[3], f"{time.monotonic() - t0:.0f}"))
        print(f"[{time.monotonic() - start:.0f}s] {name}: {row[1][:120]} -> {row[3]}", flush=True)

    lines = ["# Issue 13's faults on a GPU: torchrun jobs killed, signalled and poisoned on CUDA", ""]
    lines += environment()
    lines += [f"- command: `python benchmarks/gpu_reliability.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
              f"- runs: {setup.nproc} rank(s) x {setup.steps} steps x {setup.epochs} epochs, checkpoint every "
              f"{setup.every} steps; each compared with the uninterrupted run at atol = 0 (final weights, EMA, "
              "optimizer, per-epoch loss and errors)",
              f"- settings: `{'--config ' + setup.config + ' ' if setup.config else ''}{' '.join(setup.sets)}`", "",
              "| fault | what happened | work lost (steps) | final state vs uninterrupted | wall s |",
              "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows]
    for name, (tb, log) in failed.items():
        lines += ["", f"## {name}: traceback", "", "```", tb.strip()[-2500:], "```"]
        if log is not None and log.exists():
            lines += ["", f"{log.name} (tail):", "", "```", log.read_text(errors="replace")[-2500:].strip(), "```"]
    emit(lines, a.out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
