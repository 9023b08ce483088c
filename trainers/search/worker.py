"""One search worker: Optuna trials, one after another, each trained by the bundled trainer.

``se-inject search --workers N`` starts N of these on a machine (``python -m trainers.search.worker
JOB.json``); on several machines, each machine's command starts its own against the same storage.
A worker loops: under the budget lock (:class:`~trainers.search.storage.BudgetLock`) it fails and
re-queues the trials of dead workers, counts the trials, and asks Optuna for the next one (a queued
reference or retry first, else the sampler's); then, lock released, it trains the trial's point:

- the point's policy (``space.suggest``): an infeasible point is pruned here, never trained;
- one training per seed (:func:`trainers.launch.run_training`, a child process tied to this one, so
  killing the worker kills its training), resuming from the checkpoints of an earlier attempt of the
  same trial (a retry trains on in the same folder);
- each epoch's validation error reported to the trial: a single-objective study's pruner stops a
  poor trial (SIGTERM: the trainer checkpoints and exits) and the trial ends pruned;
- the objective values (error, params, MACs, latency); a training that fails makes the trial fail
  with its reason, and the worker goes on.

A trial's process is recorded on it (boot, pid namespace, pid, start time): a RUNNING trial whose
process is gone from this machine is failed and retried by the next worker that takes the lock; on
RDB storages Optuna's heartbeat does the same across machines.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

from se_inject.errors import SEInjectError
from se_inject.files import write_atomically

from ..launch import run_training, train_command
from .model import SearchModel, build_space, references
from .spec import SearchSpec
from .storage import BudgetLock, open_storage, retry_callback

__all__ = ["Job", "Worker", "TrainingFailed", "process_identity", "alive", "counted", "main", "WORKER", "samplers",
           "pruners"]

#: the trial system attribute naming the process that runs it
WORKER = "se_inject:worker"


class TrainingFailed(Exception):
    """A trial's training failed (its reason is the trial's ``fail_reason``): the trial fails, the search goes on."""


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat): with the pid, unique.
    Empty when no such process runs (a zombie, dead but not yet waited for by its parent, runs no more)."""
    stat = _read(f"/proc/{pid}/stat")
    fields = stat.rsplit(")", 1)[-1].split() if stat else []
    return fields[19] if fields and fields[0] not in ("Z", "X") else ""


def process_identity(pid: int | None = None) -> dict[str, Any]:
    """What names a process on this machine for as long as it runs: boot, pid namespace, pid, start time."""
    pid = os.getpid() if pid is None else pid
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    import socket
    return {"boot": _read("/proc/sys/kernel/random/boot_id"), "ns": namespace, "host": socket.gethostname(),
            "pid": pid, "start": _start_time(pid)}


def alive(identity: dict[str, Any]) -> bool | None:
    """Whether the process ``identity`` names still runs; None when this machine cannot tell (another host, or
    another container's pid namespace here: the heartbeat's to judge, on RDB storages)."""
    here = process_identity()
    if identity.get("host") != here["host"]:
        return None
    if identity.get("boot") and here["boot"] and identity["boot"] != here["boot"]:
        return False   # this machine rebooted since: every process of then is gone
    if identity.get("ns") != here["ns"]:
        return None
    start = _start_time(int(identity["pid"]))
    return bool(start) and start == identity.get("start")


def counted(trials: list[Any]) -> int:
    """Trials that count against the budget: all but those that failed and were retried (a retry counts)."""
    from optuna.trial import TrialState
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return sum(1 for t in trials if t.state is not TrialState.FAIL or t.number not in retried)


def samplers() -> dict[str, Any]:
    """Sampler name -> factory(space, seed, options): Optuna's, by the names a search file uses."""
    import optuna
    s = optuna.samplers
    return {
        "tpe": lambda space, seed, o: s.TPESampler(seed=seed, **o),
        "nsga2": lambda space, seed, o: s.NSGAIISampler(seed=seed, **o),
        "random": lambda space, seed, o: s.RandomSampler(seed=seed, **o),
        "grid": lambda space, seed, o: s.GridSampler(space.grid(), seed=seed, **o),
        "cmaes": lambda space, seed, o: s.CmaEsSampler(seed=seed, **o),
        "gp": lambda space, seed, o: s.GPSampler(seed=seed, **o),
    }


def pruners() -> dict[str, Any]:
    import optuna
    p = optuna.pruners
    return {"none": lambda o: p.NopPruner(), "median": lambda o: p.MedianPruner(**o),
            "successive-halving": lambda o: p.SuccessiveHalvingPruner(**o), "hyperband": lambda o: p.HyperbandPruner(**o),
            "threshold": lambda o: p.ThresholdPruner(**o)}


def make_sampler(spec: SearchSpec, space: Any, seed: int | None = None) -> Any:
    from se_inject.errors import SearchError
    sampler = spec.file.sampler
    try:
        return samplers()[spec.sampler_name](space, sampler.seed if seed is None else seed, dict(sampler.options))
    except (TypeError, ValueError, ImportError) as e:
        raise SearchError(f"{spec.source}: sampler {spec.sampler_name} with options {dict(sampler.options)}: "
                          f"{str(e).splitlines()[0]}") from None


def make_pruner(spec: SearchSpec) -> Any:
    from se_inject.errors import SearchError
    try:
        return pruners()[spec.pruner.name](dict(spec.pruner.options))
    except (TypeError, ValueError) as e:
        raise SearchError(f"{spec.source}: pruner {spec.pruner.name} with options {dict(spec.pruner.options)}: "
                          f"{str(e).splitlines()[0]}") from None


class Job:
    """What the command hands its workers (``DIR/search.json``)."""

    def __init__(self, spec: SearchSpec, out_dir: Path, storage: str | None, budget: int, threads: int) -> None:
        self.spec, self.out_dir, self.storage, self.budget, self.threads = spec, out_dir, storage, budget, threads

    def write(self, path: Path) -> None:
        data = {"spec": self.spec.to_dict(), "out_dir": str(self.out_dir), "storage": self.storage,
                "budget": self.budget, "threads": self.threads}
        write_atomically(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1)))

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> "Job":
        data = json.loads(Path(path).read_text())
        return cls(SearchSpec.from_dict(data["spec"]), Path(data["out_dir"]), data["storage"], data["budget"],
                   data["threads"])


class Worker:
    """Runs trials of the job's study until the budget is spent."""

    def __init__(self, job: Job, index: int = 0, echo=print, searched: SearchModel | None = None) -> None:
        import optuna
        optuna.logging.set_verbosity(optuna.logging.ERROR)   # each trial's outcome is one line of ours
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
        self.job, self.spec, self.index, self.echo = job, job.spec, index, echo
        self.searched = searched or build_space(self.spec)
        self.space = self.searched.space
        self.storage = open_storage(job.storage, job.out_dir, self.spec.file.retries)
        study = optuna.load_study(study_name=self.spec.study, storage=self.storage)
        # Each worker's sampler draws its own numbers: the file's seed, moved by the worker's index and by how far
        # the study has got (workers with one seed would propose the same points, and so would a rerun).
        # (Not the grid's: its seed orders the grid, and every worker must see the same order.)
        seed = self.spec.file.sampler.seed
        if seed is not None and self.spec.sampler_name != "grid":
            seed += 1009 * index + 7919 * len(study.get_trials(deepcopy=False))
        self.study = optuna.load_study(study_name=self.spec.study, storage=self.storage,
                                       sampler=make_sampler(self.spec, self.space, seed), pruner=make_pruner(self.spec))
        self.lock = BudgetLock(self.storage, job.storage, job.out_dir, self.spec.study)
        self.references = references(self.space, self.spec.source)
        self.identity = process_identity()
        self.prunes = len(self.spec.objectives) == 1 and self.spec.pruner.name != "none"

    # -- the loop ---------------------------------------------------------------------------------
    def run(self, poll_s: float = 2.0) -> int:
        """Trials until the budget is spent and no trial runs any more; the number this worker ran.

        With the budget spent, a worker waits while other trials run: one whose worker dies is queued again,
        and a waiting worker runs it (the study ends complete, not with a dead worker's trial still RUNNING)."""
        ran = 0
        while True:
            self.lock.acquire()
            held = [True]
            try:
                self.reap()
                trials = self.study.get_trials(deepcopy=False)
                queued = any(t.state.name == "WAITING" for t in trials)   # references and retries: part of the budget
                if not queued and counted(trials) >= self.job.budget:
                    if not any(t.state.name == "RUNNING" for t in trials):
                        return ran
                    self.lock.release()
                    held[0] = False
                    time.sleep(poll_s)
                    continue

                def objective(trial: Any) -> Any:
                    self.storage.set_trial_system_attr(trial._trial_id, WORKER, self.identity)
                    self.lock.release()   # asked and marked: the next worker may count and ask
                    held[0] = False
                    return self.objective(trial)

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")   # Optuna's experimental/future warnings: one per trial otherwise
                    self.study.optimize(objective, n_trials=1, catch=(TrainingFailed,), gc_after_trial=False)
                ran += 1
            finally:
                if held[0]:
                    self.lock.release()

    def reap(self) -> None:
        """Fail and re-queue the RUNNING trials whose process is gone from this machine (under the lock, a trial
        not yet marked is one whose worker died between asking and marking)."""
        import optuna
        from optuna.trial import TrialState
        retry = retry_callback(self.spec.file.retries)
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            who = t.system_attrs.get(WORKER)
            if who is not None and alive(who) is not False:
                continue
            trial_id = t._trial_id   # FrozenTrial keeps the storage id private; Optuna's own reaper uses it too
            why = f"worker died (pid {who['pid']} on {who['host']})" if who else "worker died before the trial started"
            self.storage.set_trial_user_attr(trial_id, "fail_reason", why)
            if self.storage.set_trial_state_values(trial_id, TrialState.FAIL):
                retry(self.study, self.storage.get_trial(trial_id))
                self.echo(f"trial {t.number}: {why}; failed and queued again")
        if isinstance(self.storage, optuna.storages.RDBStorage):   # after ours: this machine's dead say why
            optuna.storages.fail_stale_trials(self.study)          # other machines': Optuna's heartbeat

    # -- one trial --------------------------------------------------------------------------------
    def objective(self, trial: Any) -> Any:
        start = time.perf_counter()
        if trial.user_attrs.get("fail_reason"):
            trial.set_user_attr("fail_reason", None)   # a retry carries its failed attempt's attributes
        policy = self.space.suggest(trial)         # optuna.TrialPruned for an infeasible point
        point = {d.name: d.choices[trial.params[d.name]] if self.space.ordinal else trial.params[d.name]
                 for d in self.space.dims}
        cost = self.space.cost_of(point)
        system_attrs = self.storage.get_trial_system_attrs(trial._trial_id)
        root = system_attrs.get("failed_trial", trial.number)   # a retry trains on in its first attempt's folder
        folder = self.job.out_dir / "trials" / f"{root:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        trial.set_user_attr("folder", str(folder.relative_to(self.job.out_dir)))
        policy_file = folder / "policy.yaml"
        header = f"# search point {self.space.describe(point)} of {self.spec.backbone} (trial {trial.number})\n"
        text = header + yaml.safe_dump(policy.to_dict(), sort_keys=False, default_flow_style=None)
        write_atomically(policy_file, lambda tmp: Path(tmp).write_text(text))
        latency = None
        if "latency" in self.spec.objectives:
            lat = self.spec.file.latency
            latency = self.space.latency(point, device=lat.device, batch_size=lat.batch_size, repeats=lat.repeats)
            trial.set_user_attr("latency_ms", latency)
        se = None if cost.blocks == 0 else {"policy": str(policy_file.resolve())}
        same = self._trained_before(trial)
        if same is not None:   # a sampler may propose a point again: its errors are known, training is not redone
            errors = list(same.user_attrs["errors"])
            trial.set_user_attr("same_as", same.number)
        else:
            errors = []
        for k, seed in enumerate(self.spec.seeds if same is None else ()):
            errors.append(self._train(trial, se, seed, folder / f"seed{seed}", k))
            trial.set_user_attr("errors", errors)
        trial.set_user_attr("errors", errors)
        error = statistics.fmean(errors)
        trial.set_user_attr("error", error)
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 1))
        values = {"error": error, "params": cost.params_added, "macs": cost.macs_added, "latency": latency}
        ref = trial.user_attrs.get("reference") or next((n for n, p in self.references.items() if p == point), None)
        again = f", as trial {same.number} (not trained again)" if same is not None else ""
        self.echo(f"trial {trial.number}{f' ({ref})' if ref else ''}: {self.space.describe(point)}: top-1 error "
                  f"{error:.2f}%, +{cost.params_added:,} params{again} [worker {self.index}, "
                  f"{time.perf_counter() - start:.0f} s]")
        out = [values[o] for o in self.spec.objectives]
        return out[0] if len(out) == 1 else out

    def _trained_before(self, trial: Any) -> Any:
        """A complete trial of the same point (trained with the same seeds), or None."""
        from optuna.trial import TrialState
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.params == trial.params and len(t.user_attrs.get("errors") or ()) == len(self.spec.seeds):
                return t
        return None

    def _train(self, trial: Any, se: dict[str, Any] | None, seed: int, out_dir: Path, k: int) -> float:
        import optuna
        spec = self.spec
        epochs = None
        pruned_at: list[tuple[int, float]] = []

        def on_epoch(record: dict[str, Any]) -> bool:
            err = record.get("top1_err")
            if err is None or not self.prunes:
                return False
            step = k * (epochs or 0) + int(record["epoch"])
            trial.report(float(err), step)
            if trial.should_prune():
                pruned_at.append((int(record["epoch"]), float(err)))
                return True
            return False

        overrides = spec.trial_overrides(se, seed, out_dir)
        if self.prunes:
            from trainers.config import load_config
            epochs = load_config(spec.config, overrides).run.epochs
        resume = (out_dir / "checkpoints").exists()
        cmd = train_command(spec.config, overrides, nproc_per_node=spec.file.launch.nproc_per_node, resume=resume,
                            torchrun=spec.file.launch.nproc_per_node > 1)
        env = dict(os.environ)
        env["OMP_NUM_THREADS"] = str(self.job.threads)
        env["PYTHONUNBUFFERED"] = "1"
        finished = run_training(cmd, out_dir, env, on_epoch=on_epoch, tied=True)
        if pruned_at:
            epoch, err = pruned_at[0]
            why = f"pruned after epoch {epoch} (seed {seed}): top-1 error {err:.2f}%"
            trial.set_user_attr("pruned", why)
            self.echo(f"trial {trial.number}: {why} [worker {self.index}]")
            raise optuna.TrialPruned(why)
        history = out_dir / "metrics.jsonl"
        rows = [json.loads(x) for x in history.read_text().splitlines() if x.strip()] if history.exists() else []
        last = rows[-1] if rows else {}
        if not finished.ok or last.get("top1_err") is None:
            why = finished.reason if not finished.ok else "the run wrote no validation error"
            (out_dir / "error.txt").write_text(f"exit status {finished.returncode}: {why}\n\n"
                                               + "\n".join(finished.lines[-15:]) + "\n")
            trial.set_user_attr("fail_reason", f"seed {seed}: {why}")
            self.echo(f"trial {trial.number}: FAILED (seed {seed}): {why} [worker {self.index}]")
            raise TrainingFailed(why)
        return float(last["top1_err"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainers.search.worker", description=__doc__.splitlines()[0])
    parser.add_argument("job", help="the search.json the command wrote")
    parser.add_argument("--index", type=int, default=0, help="this worker's number on its machine")
    args = parser.parse_args(argv)
    try:
        worker = Worker(Job.read(args.job), args.index, echo=lambda line: print(line, flush=True))
        worker.run()
    except SEInjectError as e:
        print(f"search worker {args.index}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
