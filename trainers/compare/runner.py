"""Run a comparison's matrix through the trainer, one ``torchrun`` per run (:mod:`trainers.launch`, the one
way ``compare`` and ``search`` run trainings) or one process per stacked group of runs; resumable.

A run is *finished* when its ``result.json`` exists: it is skipped on the next invocation. A run
with checkpoints but no result (the comparison was killed) continues with ``--resume auto``. A run
that fails leaves ``error.txt`` (the last lines of its log) and the others go on; the report shows
it as failed. Runs go one after another, or ``launch.parallel`` at a time: on GPUs spread round-robin,
several sharing a GPU once each has one (:mod:`trainers.compare.slots`; ``CUDA_VISIBLE_DEVICES`` pins
each run to its GPUs), on CPU the cores split between them. A run that dies of CUDA out-of-memory
says which setting to lower (:func:`oom_advice`).

Stacking (``launch.stack``, :mod:`trainers.stack`): the runs still to train whose configs differ
only in their seed, and that stand at the same checkpoint step, train as one model in one process
(``python -m trainers.stack``), each in its own folder with the files a lone run leaves; ``auto``
stacks on CUDA only. A group's log is ``<out_dir>/stacks/<group>.log``; each run's ``train.log``
gets its own lines of it. The report reads the runs' folders and does not know the difference.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from se_inject.errors import SEInjectError
from se_inject._extras import require
from se_inject.files import write_atomically

from ..launch import LOG, out_of_memory, reason, run_training, train_command
from .slots import SlotPlan, Slots, plan_slots, visible_gpus
from .spec import CompareSpec, Run

STACKS = "stacks"  # the folder of the stacked groups' logs and outcomes, in the comparison's out_dir

__all__ = ["RunState", "RunStatus", "Unit", "run_matrix", "status_of", "launch_plan", "launch_units", "oom_advice"]

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


@dataclass(frozen=True)
class Unit:
    """What one process trains: one run (``torchrun``), or a stacked group of runs (``trainers.stack``)."""
    runs: tuple[Run, ...]

    @property
    def stacked(self) -> bool:
        return len(self.runs) > 1

    @property
    def name(self) -> str:
        first = self.runs[0]
        seeds = ",".join(str(r.seed) for r in self.runs)
        return f"{first.backbone}/{first.variant.name}/seeds{seeds}" if self.stacked else first.key


def _checkpoint_step(out_dir: Path) -> int:
    """The newest checkpoint step in a run's folder, from the names alone (0: none)."""
    from ..checkpoint import list_checkpoints
    found = list_checkpoints(out_dir / "checkpoints")
    return int(found[0].name.split("-")[1]) if found else 0


def launch_units(spec: CompareSpec, runs: list[Run], gpu: bool) -> tuple[list[Unit], str]:
    """``runs`` as processes to start, and a few words on the stacking: with ``launch.stack`` auto (on a GPU) or
    a group size, the runs of one config but the seed, at one checkpoint step, stack (at most that size a
    group, sizes within one of each other); the rest, and every run with ``off``, train one a process."""
    from ..config import load_config
    from ..stack.plan import group_key, split_evenly, stack_blockers
    mode = spec.stack
    if mode == "off" or mode == 1 or (mode == "auto" and (not gpu or spec.nproc_per_node > 1)):
        why = "" if mode in ("off", 1) else (" (auto: on CUDA only)" if not gpu else " (auto: one process a run)")
        return [Unit((r,)) for r in runs], f"no stacking{why}"
    groups: dict[str, list[Run]] = {}
    singles: list[Run] = []
    why = ""
    for r in runs:
        try:
            cfg = load_config(spec.config, [*spec.overrides, *r.overrides()])
        except SEInjectError:  # it fails alone, with its own error in its folder
            singles.append(r)
            continue
        blockers = stack_blockers(cfg)
        if blockers:
            singles.append(r)
            why = why or f": {blockers[0]}"
            continue
        groups.setdefault(f"{group_key(cfg)}|{_checkpoint_step(r.out_dir)}", []).append(r)
    units = [Unit(tuple(chunk)) for members in groups.values()
             for chunk in split_evenly(members, None if mode == "auto" else int(mode))]
    units += [Unit((r,)) for r in singles]
    stacked = [u for u in units if u.stacked]
    sizes = sorted({len(u.runs) for u in stacked})
    note = (f"{len(stacked)} stacked group(s) of {'/'.join(map(str, sizes))} runs" if stacked else "no runs to stack")
    if singles:
        note += f"; {len(singles)} run(s) train alone{why}"
    return units, note


def _env(plan: SlotPlan, group: tuple[str, ...] | None) -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(plan.threads)
    env["PYTHONUNBUFFERED"] = "1"
    if group is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(group)  # the run's ranks see only their GPUs, as cuda:0..n-1
    return env


def _prepare(spec: CompareSpec, run: Run) -> dict:
    """The run's folder, cleared of a previous failure, and its ``compare.json`` (what the report reads)."""
    run.out_dir.mkdir(parents=True, exist_ok=True)
    (run.out_dir / ERROR).unlink(missing_ok=True)
    meta = {"backbone": run.backbone, "variant": run.variant.name, "se": run.variant.se, "seed": run.seed,
            "comparison": spec.name, "order": spec.variants.index(run.variant)}
    (run.out_dir / META).write_text(json.dumps(meta, indent=1))
    return meta


def _done(run: Run, meta: dict, seconds: float, echo) -> RunStatus | None:
    """``result.json`` for a run whose metrics are there (None if they are not)."""
    history = run.out_dir / "metrics.jsonl"
    if not history.exists():
        return None
    rows = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
    result = {**meta, "seconds": round(seconds, 1), "final": rows[-1] if rows else {}}
    write_atomically(run.out_dir / RESULT, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1)))
    echo(f"done  {run.key} in {seconds:.0f} s: top-1 error {result['final'].get('top1_err', float('nan')):.2f}%")
    return RunStatus(run, RunState.DONE, seconds)


def _run_unit(spec: CompareSpec, unit: Unit, slots: Slots, echo) -> list[RunStatus]:
    if unit.stacked:
        return _run_group(spec, unit, slots, echo)
    return [_run_one(spec, unit.runs[0], slots, echo)]


def _run_one(spec: CompareSpec, run: Run, slots: Slots, echo) -> RunStatus:
    meta = _prepare(spec, run)
    devices = slots.acquire()
    t0 = time.perf_counter()
    echo(f"start {run.key}" + (f" on GPU {','.join(devices)}" if devices else f" ({slots.plan.threads} CPU threads)"))
    try:
        finished = run_training(_command(spec, run), run.out_dir, _env(slots.plan, devices))
    finally:
        slots.release(devices)
    seconds = time.perf_counter() - t0
    done = _done(run, meta, seconds, echo) if finished.returncode == 0 else None
    if done is not None:
        return done
    why = finished.reason
    if devices is not None and out_of_memory(finished.lines):
        why = oom_advice(devices, slots.plan.per_group, why)
    return _failed(run, finished.returncode, why, finished.lines[-15:], seconds, echo)


def _failed(run: Run, status: int, reason: str, tail: list[str], seconds: float, echo) -> RunStatus:
    (run.out_dir / ERROR).write_text(f"exit status {status}: {reason}\n\n" + "\n".join(tail) + "\n")
    echo(f"FAILED {run.key}: {reason}")
    return RunStatus(run, RunState.FAILED, seconds, reason)


def _group_command(spec: CompareSpec, unit: Unit, outcome: Path) -> list[str]:
    cmd = [sys.executable, "-m", "trainers.stack"]
    if spec.config:
        cmd += ["--config", spec.config]
    for item in (*spec.overrides, "run.progress=false"):
        cmd += ["--set", item]
    cmd += ["--resume", "auto", "--outcome", str(outcome)]  # auto: a fresh run starts fresh
    for run in unit.runs:
        cmd += ["--member", *run.overrides()]
    return cmd


def _run_group(spec: CompareSpec, unit: Unit, slots: Slots, echo) -> list[RunStatus]:
    """One ``python -m trainers.stack`` for the runs of ``unit``; each run's outcome from the group's outcome file."""
    from ..stack.plan import run_tags
    metas = [_prepare(spec, r) for r in unit.runs]
    folder = spec.out_dir / STACKS
    folder.mkdir(parents=True, exist_ok=True)
    stem = unit.name.replace("/", "_").replace(":", "_").replace(",", "-")
    log_path, outcome_path = folder / f"{stem}.log", folder / f"{stem}.json"
    outcome_path.unlink(missing_ok=True)
    devices = slots.acquire()
    t0 = time.perf_counter()
    where = f" on GPU {','.join(devices)}" if devices else f" ({slots.plan.threads} CPU threads)"
    echo(f"start {unit.name} as one stacked model of {len(unit.runs)} runs{where}")
    try:
        with open(log_path, "a") as log:
            proc = subprocess.run(_group_command(spec, unit, outcome_path), stdout=log, stderr=subprocess.STDOUT,
                                  env=_env(slots.plan, devices))
    finally:
        slots.release(devices)
    seconds = time.perf_counter() - t0
    outcomes = json.loads(outcome_path.read_text()) if outcome_path.exists() else {}
    lines = log_path.read_text(errors="replace").strip().splitlines()
    shared = [line for line in lines if not line.startswith("[")]
    group_reason = reason(lines) or f"exit status {proc.returncode}"
    if devices is not None and out_of_memory(lines):
        group_reason = oom_advice(devices, slots.plan.per_group, group_reason)
    statuses = []
    for run, meta, tag in zip(unit.runs, metas, run_tags([r.out_dir for r in unit.runs])):
        own = [line for line in lines if line.startswith(f"[{tag}] ")]
        with open(run.out_dir / LOG, "a") as f:  # the run's lines of the group's log, as if it had trained alone
            f.write(f"(trained in a stacked group of {len(unit.runs)} runs; the group's log: {log_path})\n")
            f.write("".join(line[len(tag) + 3:] + "\n" for line in own))
        outcome = outcomes.get(str(run.out_dir), {})
        done = _done(run, meta, seconds, echo) if outcome.get("state") == "done" else None
        if done is not None:
            statuses.append(done)
            continue
        why = outcome.get("error") or group_reason
        statuses.append(_failed(run, proc.returncode, why, (own or shared)[-15:], seconds, echo))
    return statuses


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
    require("train", for_="trainers.compare.run_matrix")
    todo = [r for r in spec.runs if status_of(r.out_dir) is not RunState.DONE]
    done = [RunStatus(r, RunState.DONE, trained=False) for r in spec.runs if status_of(r.out_dir) is RunState.DONE]
    plan = launch_plan(spec, gpus)
    units, note = launch_units(spec, todo, plan.gpu)
    echo(f"{spec.name}: {len(spec.runs)} runs, {len(done)} already finished, {len(todo)} to train "
         f"({plan.describe()}, {spec.nproc_per_node} process(es) each; {note}) -> {spec.out_dir}")
    slots = Slots(plan)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, plan.at_once)) as pool:
        results = [s for statuses in pool.map(lambda u: _run_unit(spec, u, slots, echo), units) for s in statuses]
    if todo:
        echo(f"{len(todo)} run(s) in {time.perf_counter() - start:.0f} s wall")
    return done + results
