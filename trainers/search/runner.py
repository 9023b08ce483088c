"""``se-inject search``: check everything, set the study up, start the workers, write the report.

Everything that can be wrong with the input is found here, before a worker starts: the file's keys
and the trainer config (:func:`~trainers.search.spec.load_search`), Optuna installed, the space (a
model with no site, a constraint no point meets), the references being points of the space, the
sampler's and pruner's options, the storage opening, and a study of the same name made for another
search. Running the command again on the same folder (or storage) goes on with the same study:
finished trials are kept, the trials of workers that died are failed and queued again, and the
budget counts each trial once.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from se_inject._extras import require
from se_inject.errors import SearchError, SEInjectError
from se_inject.search._optuna import require_optuna

from ..compare.slots import plan_slots, visible_gpus
from ..launch import die_with_parent
from .model import build_space, encode, references
from .spec import SearchSpec, load_search
from .storage import BudgetLock, dashboard_hint, open_storage, redact
from .worker import Job, Worker, counted, make_pruner, make_sampler

__all__ = ["run_search", "prepare", "rebuild_report", "SearchOutcome", "STUDY_KEY", "JOB"]

#: the study user attribute describing the search it was made for (dimensions, objectives, references)
STUDY_KEY = "se_inject.search"
JOB = "search.json"


@dataclass
class SearchOutcome:
    report: Path
    budget: int
    states: dict[str, int]
    workers_failed: int
    failed: int            # trials that failed and were not run again (a worker that died has its trial retried)


def _budget(spec: SearchSpec, points: int) -> int:
    if spec.sampler_name == "grid":
        if spec.budget not in (None, points):
            raise SearchError(f"{spec.source}: the grid has {points} points and the grid sampler runs them all: set "
                              f"trials: null (or {points}), or use another sampler")
        return points
    if spec.budget is None:
        raise SearchError(f"{spec.source}: trials: null means every point of the grid: name the number of trials, or "
                          "use sampler: {name: grid}")
    return spec.budget


def _describe(spec: SearchSpec, space: Any, refs: dict[str, dict[str, Any]], budget: int) -> dict[str, Any]:
    """What the study records about its search (a rerun must be the same search)."""
    return {"backbone": spec.backbone, "objectives": list(spec.objectives),
            "dims": {d.name: list(d.choices) for d in space.dims}, "ordinal": space.ordinal,
            "keys": {d.name: d.key for d in space.dims}, "references": refs, "budget": budget,
            "base_policy": space.base.source, "space_table": str(space), "input_size": list(space.input_size)}


def prepare(spec: SearchSpec, out_dir: Path, storage_url: str | None,
            echo=print) -> tuple[Any, Any, int, dict[str, Any], Any]:
    """Check the search and set its study up (references queued);
    ``(study, storage, budget, description, searched model)``."""
    optuna = require_optuna()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    searched = build_space(spec)
    space = searched.space
    refs = references(space, spec.source)
    budget = _budget(spec, len(space))
    if budget < len(refs):
        raise SearchError(f"{spec.source}: trials={budget}: the {len(refs)} reference trials ({', '.join(refs)}) alone "
                          f"need {len(refs)}")
    sampler, pruner = make_sampler(spec, space), make_pruner(spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    storage = open_storage(storage_url, out_dir, spec.file.retries)
    description = _describe(spec, space, refs, budget)
    directions = ["minimize"] * len(spec.objectives)
    with BudgetLock(storage, storage_url, out_dir, spec.study):
        study = optuna.create_study(study_name=spec.study, storage=storage, directions=directions, sampler=sampler,
                                    pruner=pruner, load_if_exists=True)
        before = study.user_attrs.get(STUDY_KEY)
        if before is not None:
            for key in ("backbone", "objectives", "dims", "ordinal", "input_size"):
                if before.get(key) != description[key]:
                    where = redact(storage_url) if storage_url else str(out_dir)
                    raise SearchError(f"{where}: study {spec.study!r} was made for another search ({key}: "
                                      f"{before.get(key)} here, {description[key]} now): use another -o, --storage or "
                                      "study name, or the same search file")
        study.set_user_attr(STUDY_KEY, description)
        if spec.sampler_name != "grid":   # the grid runs every point, the references among them
            trials = study.get_trials(deepcopy=False)
            have = {t.user_attrs.get("reference") for t in trials}
            for name, point in refs.items():
                if name not in have:
                    study.enqueue_trial(encode(space, point), user_attrs={"reference": name})
    echo(f"{spec.name}: {spec.backbone}, {len(space.dims)} dimensions, {len(space):,} points; {budget} trials "
         f"({counted(study.get_trials(deepcopy=False))} in the study), sampler {spec.sampler_name}, pruner "
         f"{spec.pruner.name}, objectives {', '.join(spec.objectives)}; {dashboard_hint(storage_url, out_dir)}")
    return study, storage, budget, description, searched


def _spawn(job_path: Path, count: int, threads: int, groups: tuple[tuple[str, ...], ...],
           first: int = 0) -> list[subprocess.Popen]:
    procs = []
    for i in range(first, count):
        env = dict(os.environ)
        env["OMP_NUM_THREADS"] = str(threads)
        env["PYTHONUNBUFFERED"] = "1"
        if groups:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(groups[i % len(groups)])
        cmd = [sys.executable, "-m", "trainers.search.worker", str(job_path), "--index", str(i)]
        procs.append(subprocess.Popen(cmd, env=env, preexec_fn=die_with_parent))   # a killed command takes them along
    return procs


def run_search(path: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, workers: int = 1,
               storage: str | None = None, trials: int | None = None, sets: tuple[str, ...] = (),
               command: str | None = None, echo=print) -> SearchOutcome:
    """Validate, run ``workers`` worker processes on this machine until the study's budget is spent, write the report."""
    from .report import write_report
    if workers < 1:
        raise SearchError(f"--workers {workers}: at least one worker runs the trials")
    require_optuna("se-inject search")
    require("train", for_="se-inject search")
    spec = load_search(path, sets, trials)
    out = Path(out_dir)
    study, _, budget, description, searched = prepare(spec, out, storage, echo)
    from trainers.config import load_config
    device = load_config(spec.config, spec.overrides).run.device
    nproc = spec.file.launch.nproc_per_node
    plan = plan_slots([] if device == "cpu" else visible_gpus(), nproc_per_node=nproc, parallel=workers,
                      threads=spec.file.launch.threads, cpu_count=os.cpu_count() or 1)
    job = Job(spec, out, storage, budget, plan.threads)
    job.write(out / JOB)
    if command:
        (out / "command.txt").write_text(command + "\n")
    echo(f"{workers} worker{'s' if workers > 1 else ''}: {plan.describe()}")
    start = time.perf_counter()
    # On the CPU, worker 0 is this process (its model and space are made already); on GPUs every worker is a
    # process of its own, pinned to its GPUs before CUDA starts.
    inline = not plan.groups
    procs = _spawn(out / JOB, workers, plan.threads, plan.groups, first=1 if inline else 0)
    try:
        codes = []
        if inline:
            import torch
            torch.set_num_threads(plan.threads)   # what the worker itself runs: latency measurements
            def say(line: str) -> None:
                echo(line)
                sys.stdout.flush()
            try:
                Worker(job, 0, echo=say, searched=searched).run()
                codes.append(0)
            except SEInjectError as e:
                print(f"search worker 0: {type(e).__name__}: {e}", file=sys.stderr)
                codes.append(2)
        codes += [p.wait() for p in procs]
    except BaseException:   # Ctrl-C or SIGTERM: the workers (and their trainings) stop too
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait()
        raise
    echo(f"workers done in {time.perf_counter() - start:.0f} s")
    report = write_report(out, study, spec, description, storage)
    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    failed = sum(1 for t in trials if t.state.name == "FAIL" and t.number not in retried)
    return SearchOutcome(report, budget, states, sum(1 for c in codes if c != 0), failed)


def rebuild_report(out_dir: Path) -> Path:
    """Write a search's report again from its study (``se-inject report DIR``): no model, no training."""
    from .report import write_report
    optuna = require_optuna()
    job = Job.read(out_dir / JOB)
    storage = open_storage(job.storage, out_dir, job.spec.file.retries)
    try:
        study = optuna.load_study(study_name=job.spec.study, storage=storage)
    except KeyError:
        raise SearchError(f"{out_dir}: no study {job.spec.study!r} in its storage yet: run the search first") from None
    return write_report(out_dir, study, job.spec, study.user_attrs[STUDY_KEY], job.storage)
