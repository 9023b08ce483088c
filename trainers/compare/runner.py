"""Run a comparison's matrix through the trainer, one ``torchrun`` per run; resumable.

A run is *finished* when its ``result.json`` exists: it is skipped on the next invocation. A run
with checkpoints but no result (the comparison was killed) continues with ``--resume auto``. A run
that fails leaves ``error.txt`` (the last lines of its log) and the others go on; the report shows
it as failed. Runs go one after another, or ``launch.parallel`` at a time: on GPUs each gets its own
devices (``CUDA_VISIBLE_DEVICES``), on CPU the cores are split between them.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from se_inject.files import write_atomically

from .spec import CompareSpec, Run

__all__ = ["RunState", "RunStatus", "run_matrix", "status_of"]

RESULT, ERROR, LOG, META = "result.json", "error.txt", "train.log", "compare.json"


class RunState(StrEnum):
    """Where a run of a comparison stands: one vocabulary for the runner, ``--dry-run`` and the report."""
    NEW = "new"                  # never started
    INTERRUPTED = "interrupted"  # checkpoints but no result: the next invocation resumes it
    DONE = "done"                # result.json written
    FAILED = "failed"            # error.txt written (the others still run)


@dataclass(frozen=True)
class RunStatus:
    """One run after :func:`run_matrix`: ``DONE`` or ``FAILED``; ``trained`` is False for a run that
    was already done before this invocation."""
    run: Run
    state: RunState
    seconds: float = 0.0
    error: str = ""
    trained: bool = True


def status_of(out_dir: Path) -> RunState:
    """A run directory's :class:`RunState`, read from the files it holds."""
    if (out_dir / RESULT).exists():
        return RunState.DONE
    if (out_dir / ERROR).exists():
        return RunState.FAILED
    if (out_dir / "checkpoints").exists():
        return RunState.INTERRUPTED
    return RunState.NEW


def _command(spec: CompareSpec, run: Run) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={spec.nproc_per_node}",
           "-m", "trainers.train"]
    if spec.config:
        cmd += ["--config", spec.config]
    for item in (*spec.overrides, *run.overrides(), "run.progress=false"):
        cmd += ["--set", item]
    if status_of(run.out_dir) is RunState.INTERRUPTED:
        cmd += ["--resume", "auto"]
    return cmd


def _devices() -> list[str]:
    try:
        import torch
        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []


class _Slots:
    """Hands each concurrent run its own GPUs (or share of CPU threads)."""

    def __init__(self, spec: CompareSpec) -> None:
        gpus = _devices()
        per = spec.nproc_per_node
        self.free: deque[list[str]] = deque(gpus[i:i + per] for i in range(0, len(gpus) - per + 1, per))
        self.gpu = bool(self.free)
        self.threads = spec.threads or max(1, (os.cpu_count() or 1) // (spec.parallel * spec.nproc_per_node))
        self.lock = threading.Lock()

    def env(self) -> tuple[dict[str, str], list[str] | None]:
        env = dict(os.environ)
        env["OMP_NUM_THREADS"] = str(self.threads)
        env["PYTHONUNBUFFERED"] = "1"
        devices = None
        if self.gpu:
            with self.lock:
                devices = self.free.popleft()
            env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
        return env, devices

    def release(self, devices: list[str] | None) -> None:
        if devices is not None:
            with self.lock:
                self.free.append(devices)


def _run_one(spec: CompareSpec, run: Run, slots: _Slots, echo) -> RunStatus:
    run.out_dir.mkdir(parents=True, exist_ok=True)
    (run.out_dir / ERROR).unlink(missing_ok=True)
    meta = {"backbone": run.backbone, "variant": run.variant.name, "se": run.variant.se, "seed": run.seed,
            "comparison": spec.name, "order": spec.variants.index(run.variant)}
    (run.out_dir / META).write_text(json.dumps(meta, indent=1))
    env, devices = slots.env()
    t0 = time.perf_counter()
    echo(f"start {run.key}" + (f" on GPU {','.join(devices)}" if devices else f" ({slots.threads} CPU threads)"))
    try:
        with open(run.out_dir / LOG, "a") as log:
            proc = subprocess.run(_command(spec, run), stdout=log, stderr=subprocess.STDOUT, env=env)
    finally:
        slots.release(devices)
    seconds = time.perf_counter() - t0
    history = run.out_dir / "metrics.jsonl"
    if proc.returncode == 0 and history.exists():
        rows = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
        result = {**meta, "seconds": round(seconds, 1), "final": rows[-1] if rows else {}}
        write_atomically(run.out_dir / RESULT, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1)))
        echo(f"done  {run.key} in {seconds:.0f} s: top-1 error {result['final'].get('top1_err', float('nan')):.2f}%")
        return RunStatus(run, RunState.DONE, seconds)
    lines = (run.out_dir / LOG).read_text(errors="replace").strip().splitlines()
    tail = lines[-15:]
    reason = _reason(lines) or f"exit status {proc.returncode}"
    (run.out_dir / ERROR).write_text(f"exit status {proc.returncode}: {reason}\n\n" + "\n".join(tail) + "\n")
    echo(f"FAILED {run.key}: {reason}")
    return RunStatus(run, RunState.FAILED, seconds, reason)


_ERROR_LINE = re.compile(r"^([\w.]+)?(Error|Exception|Interrupt)\w*: ")


def _reason(lines: list[str]) -> str:
    """The run's own one-line error (ours, or a traceback's last line), not torchrun's summary."""
    found = [line for line in lines if _ERROR_LINE.match(line) and "ChildFailedError" not in line]
    return found[0].strip()[:300] if found else ""


def run_matrix(spec: CompareSpec, echo=print) -> list[RunStatus]:
    """Train every unfinished run of ``spec``; returns each run's status."""
    todo = [r for r in spec.runs if status_of(r.out_dir) is not RunState.DONE]
    done = [RunStatus(r, RunState.DONE, trained=False) for r in spec.runs if status_of(r.out_dir) is RunState.DONE]
    echo(f"{spec.name}: {len(spec.runs)} runs, {len(done)} already finished, {len(todo)} to train "
         f"({spec.parallel} at a time, {spec.nproc_per_node} process(es) each) -> {spec.out_dir}")
    slots = _Slots(spec)
    workers = min(spec.parallel, len(slots.free)) if slots.gpu else spec.parallel
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(lambda r: _run_one(spec, r, slots, echo), todo))
    return done + results
