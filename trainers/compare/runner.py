"""Run a comparison's matrix through the trainer, one ``torchrun`` per run (:mod:`trainers.launch`); resumable.

A run is *finished* when its ``result.json`` exists: it is skipped on the next invocation. A run
with checkpoints but no result (the comparison was killed) continues with ``--resume auto``. A run
that fails leaves ``error.txt`` (the last lines of its log) and the others go on; the report shows
it as failed. Runs go one after another, or ``launch.parallel`` at a time: on GPUs spread round-robin,
several sharing a GPU once each has one (:mod:`trainers.compare.slots`; ``CUDA_VISIBLE_DEVICES`` pins
each run to its GPUs), on CPU the cores split between them. A run that dies of CUDA out-of-memory
says which setting to lower (:func:`oom_advice`).
"""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from se_inject.files import write_atomically

from ..launch import out_of_memory, run_training, train_command
from .slots import SlotPlan, Slots, plan_slots, visible_gpus
from .spec import CompareSpec, Run

__all__ = ["RunState", "RunStatus", "run_matrix", "status_of", "launch_plan", "oom_advice"]

RESULT, ERROR, META = "result.json", "error.txt", "compare.json"


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
    return train_command(spec.config, (*spec.overrides, *run.overrides(), "run.progress=false"),
                         nproc_per_node=spec.nproc_per_node, resume=status_of(run.out_dir) is RunState.INTERRUPTED)


def launch_plan(spec: CompareSpec, gpus: list[str] | None = None) -> SlotPlan:
    """Where ``spec``'s runs go on this machine (``gpus``: the visible GPUs, found when not given; none are
    used when the runs' ``run.device`` is cpu)."""
    if spec.device == "cpu":
        gpus = []
    elif gpus is None:
        gpus = visible_gpus()
    return plan_slots(gpus, nproc_per_node=spec.nproc_per_node, parallel=spec.parallel, runs_per_gpu=spec.runs_per_gpu,
                      threads=spec.threads, cpu_count=os.cpu_count() or 1)


def _env(plan: SlotPlan, group: tuple[str, ...] | None) -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(plan.threads)
    env["PYTHONUNBUFFERED"] = "1"
    if group is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(group)  # the run's ranks see only their GPUs, as cuda:0..n-1
    return env


def _run_one(spec: CompareSpec, run: Run, slots: Slots, echo) -> RunStatus:
    run.out_dir.mkdir(parents=True, exist_ok=True)
    (run.out_dir / ERROR).unlink(missing_ok=True)
    meta = {"backbone": run.backbone, "variant": run.variant.name, "se": run.variant.se, "seed": run.seed,
            "comparison": spec.name, "order": spec.variants.index(run.variant)}
    (run.out_dir / META).write_text(json.dumps(meta, indent=1))
    devices = slots.acquire()
    t0 = time.perf_counter()
    echo(f"start {run.key}" + (f" on GPU {','.join(devices)}" if devices else f" ({slots.plan.threads} CPU threads)"))
    try:
        finished = run_training(_command(spec, run), run.out_dir, _env(slots.plan, devices))
    finally:
        slots.release(devices)
    seconds = time.perf_counter() - t0
    history = run.out_dir / "metrics.jsonl"
    if finished.returncode == 0 and history.exists():
        rows = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
        result = {**meta, "seconds": round(seconds, 1), "final": rows[-1] if rows else {}}
        write_atomically(run.out_dir / RESULT, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1)))
        echo(f"done  {run.key} in {seconds:.0f} s: top-1 error {result['final'].get('top1_err', float('nan')):.2f}%")
        return RunStatus(run, RunState.DONE, seconds)
    lines = finished.lines
    tail = lines[-15:]
    reason = finished.reason
    if devices is not None and out_of_memory(lines):
        reason = oom_advice(devices, slots.plan.per_group, reason)
    (run.out_dir / ERROR).write_text(f"exit status {finished.returncode}: {reason}\n\n" + "\n".join(tail) + "\n")
    echo(f"FAILED {run.key}: {reason}")
    return RunStatus(run, RunState.FAILED, seconds, reason)


def oom_advice(group: tuple[str, ...], per_group: int, error: str) -> str:
    """The one line a run that died of CUDA out-of-memory leaves: which setting to lower.

        >>> oom_advice(("0",), 6, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB")
        'CUDA out of memory on GPU 0 with up to 6 runs sharing it: lower launch.runs_per_gpu (or launch.parallel), then run the comparison again (torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB)'
        >>> oom_advice(("0", "1"), 1, "torch.OutOfMemoryError: CUDA out of memory.")
        'CUDA out of memory on GPU 0,1, the run alone on it: lower data.batch_size (in set:), or use run.amp=bf16 (torch.OutOfMemoryError: CUDA out of memory.)'
    """
    where = f"GPU {','.join(group)}"
    if per_group > 1:
        advice = (f"CUDA out of memory on {where} with up to {per_group} runs sharing it: lower launch.runs_per_gpu "
                  "(or launch.parallel), then run the comparison again")
    else:
        advice = (f"CUDA out of memory on {where}, the run alone on it: lower data.batch_size (in set:), or use "
                  "run.amp=bf16")
    return f"{advice} ({error})"


def run_matrix(spec: CompareSpec, echo=print, gpus: list[str] | None = None) -> list[RunStatus]:
    """Train every unfinished run of ``spec``; returns each run's status. ``gpus``: the GPUs to use
    (default: every visible one; :func:`launch_plan`)."""
    todo = [r for r in spec.runs if status_of(r.out_dir) is not RunState.DONE]
    done = [RunStatus(r, RunState.DONE, trained=False) for r in spec.runs if status_of(r.out_dir) is RunState.DONE]
    plan = launch_plan(spec, gpus)
    echo(f"{spec.name}: {len(spec.runs)} runs, {len(done)} already finished, {len(todo)} to train "
         f"({plan.describe()}, {spec.nproc_per_node} process(es) each) -> {spec.out_dir}")
    slots = Slots(plan)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, plan.at_once)) as pool:
        results = list(pool.map(lambda r: _run_one(spec, r, slots, echo), todo))
    if todo:
        echo(f"{len(todo)} run(s) in {time.perf_counter() - start:.0f} s wall")
    return done + results
