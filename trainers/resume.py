"""Checkpoints, resume and stops of a training run: the part of :class:`trainers.trainer._Run` that
decides which checkpoint to start from, writes them (rank 0, every rank told the outcome), and ends
a run that must stop (preemption, a non-finite step) with the one checkpoint that lets it continue.

    >>> changed_keys("run: {epochs: 3, seed: 1}", {"run": {"epochs": 5, "seed": 2}})   # epochs may change on resume
    ['run.seed']
    >>> changed_keys("run: {out_dir: a}", {"run": {"out_dir": "b"}})   # as may the folder (another run's checkpoint)
    []
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from se_inject.errors import first_line

from . import checkpoint as ckpt
from .config import dump_config
from .distributed import DistInfo, all_gather_objects, all_reduce_sum, broadcast_object
from .errors import CheckpointError, CheckpointWriteError, ConfigError, NonFiniteError, Preempted
from .loop import EpochProgress, Halt, Stopped
from .rng import capture_rng
from se_inject.schema import to_dict

__all__ = ["Checkpointing", "STATE_FORMAT", "changed_keys", "elastic_restart", "log", "warn"]

STATE_FORMAT = 1


def log(d: DistInfo, message: str) -> None:
    if d.is_main:
        print(_tagged(d, message), flush=True)


def warn(d: DistInfo, message: str) -> None:
    if d.is_main:
        print(_tagged(d, f"warning: {message}"), file=sys.stderr, flush=True)


def _tagged(d: DistInfo, message: str) -> str:
    """``[tag] message`` for one run of a stacked group (:mod:`trainers.stack`: its ``d`` names the run), else as is."""
    tag = getattr(d, "tag", "")
    return f"[{tag}] {message}" if tag else message


def elastic_restart() -> int:
    """How many times torchrun's agent has restarted this worker group (0: the first start, or no torchrun)."""
    value = os.environ.get("TORCHELASTIC_RESTART_COUNT", "")
    return int(value) if value.isdigit() else 0




class Checkpointing:
    """Mixed into the run: needs ``cfg``, ``d``, ``out``, ``ckpt_root``, ``saved_step``, ``signals``,
    ``optimizer``, ``scheduler``, ``ctx``, ``ema``, ``module``, ``history``, ``num_batches``."""

    def _choose_checkpoint(self) -> ckpt.Checkpoint | None:
        """Rank 0 picks (and verifies) the checkpoint to resume; every rank then loads that one: where this launch
        left off if this is a later attempt of it (:meth:`_going_on_from`), else what ``--resume`` says."""
        resume = self.cfg.checkpoint.resume
        found: ckpt.Checkpoint | None = None
        error: Exception | None = None
        if self.d.is_main:
            try:
                found, why = self._going_on_from()
                if found is not None:
                    log(self.d, f"{why}: resuming from the newest complete checkpoint"
                                f"{' of this launch' if resume not in (None, 'auto') else ''}, {found.path}")
                else:
                    if why:
                        log(self.d, f"{why}: no checkpoint of this launch yet in {self.ckpt_root}, choosing as it did" +
                                    (f" (--resume {resume})" if resume is not None else ""))
                    found = self._first_choice(resume)
            except (ConfigError, CheckpointError) as e:
                error = e
        choice, error = broadcast_object((str(found.path) if found else None, error))
        if error is not None:
            raise error
        if self.d.is_main or choice is None:
            return found
        return ckpt.load_checkpoint(choice)

    def _going_on_from(self) -> tuple[ckpt.Checkpoint | None, str]:
        """For a later attempt of this launch (torchrun restarted the worker group): the checkpoint to go on from
        (None: the launch has written none yet) and a few words saying why; ``(None, "")`` for a first attempt.

        A later attempt is one torchrun counts (``TORCHELASTIC_RESTART_COUNT`` > 0), or one that finds checkpoints
        this launch wrote (:meth:`_launch`; only with a run id of its own: a restart after a node joined or left is
        not counted, nor is a requeued SLURM job). With ``--resume auto`` or none it goes on from the newest
        checkpoint in the folder; with ``--resume <checkpoint>`` from the newest this launch wrote, as the newest in
        the folder may be the old timeline's (the rewind died before :meth:`_set_aside_later` was done) or another
        run's (the checkpoint named came from elsewhere).
        """
        restart, launch = elastic_restart(), self._launch()
        if not restart and (launch["torchrun_run_id"] in ("", "none") or  # no run id of its own: a first attempt
                            not any(ckpt.launch_of(p) == launch for p in ckpt.list_checkpoints(self.ckpt_root))):
            return None, ""
        why = (f"elastic restart {restart}" if restart else f"torchrun run {launch['torchrun_run_id']} already wrote "
               "checkpoints here (a restart after a node joined or left, or a requeue)")
        report = lambda m: warn(self.d, m)  # noqa: E731
        if launch["resume"] in (None, "auto"):
            return ckpt.find_latest(self.ckpt_root, report), why
        try:
            return ckpt.find_latest(self.ckpt_root, report, written_by=launch), why
        except CheckpointError as e:  # none of this launch's verifies: what it first chose may
            warn(self.d, f"{first_line(e, with_type=False)}; choosing as the launch did")
            return None, why

    def _first_choice(self, resume: str | None) -> ckpt.Checkpoint | None:
        if resume is None:
            if ckpt.list_checkpoints(self.ckpt_root):
                raise ConfigError(f"run.out_dir {self.out} already holds checkpoints; pass --resume auto to "
                                  "continue that run, or choose another run.out_dir")
            return None
        if resume == "auto":
            found = ckpt.find_latest(self.ckpt_root, lambda m: warn(self.d, m))
            if found is None:
                log(self.d, f"resume auto: no checkpoint in {self.ckpt_root}, starting fresh")
            return found
        return ckpt.load_checkpoint(resume)

    def _launch(self) -> dict[str, Any]:
        """What names this launch in the checkpoints it writes, the same in every attempt on every machine: what
        ``--resume`` said, as written (the same command runs every attempt; a resolved path could change with the
        working directory or once the checkpoint named is pruned), and torchrun's run id. torchrun makes that a
        fresh uuid for a launch on one machine without ``--rdzv-endpoint`` / ``--master-port`` (``--standalone``
        included); otherwise it is ``--rdzv-id``, by default the constant ``none``, which every launch shares."""
        return {"resume": self.cfg.checkpoint.resume, "torchrun_run_id": os.environ.get("TORCHELASTIC_RUN_ID", "")}

    def _set_aside_later(self) -> None:
        """After a resume: the checkpoints in this run's folder past the step resumed belong to a timeline this run
        abandons (a rewind, a broken newer one ``--resume auto`` skipped, or another run's checkpoint resumed into
        this folder). Rank 0 moves them aside, so that ``keep_last`` keeps the new checkpoints and ``--resume auto``
        continues this run."""
        step, error = self.progress.num_updates, None
        if self.d.is_main:
            try:
                folder, moved = ckpt.set_aside_later(self.ckpt_root, step, keep=self.resume_from.path)
            except OSError as e:
                error = CheckpointError(f"cannot move the checkpoints past step {step} out of {self.ckpt_root} "
                                        f"({first_line(e, with_type=False)}); move or delete them, then resume again")
            else:
                if folder is not None:
                    which = moved[0] if len(moved) == 1 else f"{len(moved)} checkpoints, {moved[-1]} to {moved[0]}"
                    warn(self.d, f"resumed at step {step}: the checkpoints past it ({which}) moved to {folder}, so "
                                  "new checkpoints are kept and --resume auto continues this run")
        error = broadcast_object(error)
        if error is not None:
            raise error

    def _restore(self, c: ckpt.Checkpoint, model: nn.Module, scaler: Any) -> None:
        state = c.state
        if state.get("format") != STATE_FORMAT:
            raise CheckpointError(f"checkpoint file {c.path / ckpt.STATE_FILE} has format {state.get('format')}, "
                                  f"this trainer reads {STATE_FORMAT}")
        try:
            model.load_state_dict(c.model)
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint {c.path} does not fit this model/optimizer "
                                  f"({first_line(e, with_type=False)}); resume with the config it was written with "
                                  f"({self.out / 'run.yaml'})") from None
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        rank_state = state["ranks"][self.d.rank]
        self.progress = EpochProgress.from_state(rank_state["progress"], self.d.device)
        self.history = list(state["history"])
        changed = changed_keys(state.get("config", ""), self.cfg)
        if changed:
            warn(self.d, f"resuming with a config that differs from the checkpoint's in {', '.join(changed)}")

    # -- checkpoints ---------------------------------------------------------------------------
    def _save(self, progress: EpochProgress, rng: dict[str, Any] | None = None, last: bool = False) -> Path | None:
        """Checkpoint ``progress`` (with each rank's ``rng``, default: the current states); its path, or None if
        the write failed and the run goes on. Every rank learns the outcome, so all stop or go on together.

        ``last``: the run ends after this one anyway (preemption, non-finite stop): a failure is reported, not raised.
        """
        per_rank = all_gather_objects({"rng": rng if rng is not None else capture_rng(), "progress": progress.to_state()})
        outcome: tuple[str | None, str | None] = (None, None)
        if self.d.is_main:
            state = {
                "format": STATE_FORMAT, "world_size": self.d.world_size,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "scaler": self.ctx.scaler.state_dict() if self.ctx.scaler is not None else None,
                "ranks": per_rank, "history": self.history, "config": dump_config(self.cfg),
            }
            ema = self.ema.module.state_dict() if self.ema is not None else None
            try:
                path = ckpt.save_checkpoint(self.ckpt_root, progress.num_updates, self.module.state_dict(), ema, state,
                                            keep_last=self.cfg.checkpoint.keep_last, launch=self._launch())
                outcome = (str(path), None)
            except CheckpointWriteError as e:
                outcome = (None, str(e))
        path, error = broadcast_object(outcome)
        if error is None:
            self.saved_step = progress.num_updates
            return Path(path)
        if self.cfg.checkpoint.on_write_error == "stop" and not last:
            raise CheckpointWriteError(f"{error}: free space and run again with --resume auto, or set "
                                       "checkpoint.on_write_error=continue")
        warn(self.d, error + ("" if last else "; training goes on (checkpoint.on_write_error=continue)"))
        return None

    def _on_update(self, progress: EpochProgress) -> None:
        every = self.cfg.checkpoint.every_steps
        if every and progress.num_updates % every == 0 and progress.batch < self.num_batches:
            self._save(progress)

    def _on_skip(self, progress: EpochProgress, detail: str) -> None:
        warn(self.d, f"step {progress.num_updates} (epoch {progress.epoch}, batch {progress.batch}/{self.num_batches}): "
                      f"{detail}; skipped on every rank (run.nonfinite=skip)")

    def _stop_requested(self) -> bool:
        return self.signals.poll() is not None  # once per step: puts back a handler a library replaced

    def _halt(self, halt: Stopped, p: EpochProgress) -> None:
        """The loop stopped early: write the one checkpoint that lets a run continue, then end this one."""
        if halt.reason == Halt.NONFINITE:  # p is rolled back to the start of the bad step, the RNG states with it
            path = self._save(p, rng=halt.rng, last=True)
            kept = (f"checkpoint {path} holds the last good state" if path is not None
                    else "the last good state could not be saved")
            raise NonFiniteError(
                f"step {halt.step} (epoch {p.epoch}, batch {p.batch + 1}/{self.num_batches}): {halt.detail}; {kept} "
                f"(step {p.num_updates}): lower optim.lr, set optim.clip_grad or run.nonfinite=skip, then --resume auto")
        self._preempted(p)

    def _preempted(self, p: EpochProgress) -> None:
        done = self.saved_step == p.num_updates  # the step's own checkpoint (every_steps, epoch end) is written
        path = (self.ckpt_root / f"step-{p.num_updates:08d}") if done else self._save(p, last=True)
        signal = self.signals.requested or "a preemption signal to another rank"
        where = f"step {p.num_updates} (epoch {p.epoch}, batch {p.batch}/{self.num_batches})"
        kept = f"checkpoint {path}" if path is not None else "no new checkpoint"
        raise Preempted(f"stopped by {signal} after {where}; {kept}; continue with --resume auto", path)

    def _stop_agreed(self) -> bool:
        """Whether any rank was signalled (one all-reduce; between epochs, where the step loop does not ask)."""
        flag = torch.tensor([1.0 if self._stop_requested() else 0.0], device=self.d.device)
        return all_reduce_sum(flag).item() > 0


#: keys whose change between a checkpoint and its resume is expected (length, logging, where to resume from and write
#: to, what a bad step does: run.nonfinite=skip is how a run stopped by a non-finite step goes on).
_FREE_KEYS = ("run.epochs", "run.progress", "run.log_every", "run.tensorboard", "run.nonfinite", "run.out_dir",
              "checkpoint.")


def changed_keys(saved_yaml: str, cfg: Any) -> list[str]:
    """Config keys that differ between a checkpoint's saved config and ``cfg`` (a config or a plain
    mapping), but for those a resume may change (:data:`_FREE_KEYS`)."""
    import yaml
    if not saved_yaml:
        return []

    def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in (tree or {}).items():
            if isinstance(v, dict) and v:
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    old, new = flat(yaml.safe_load(saved_yaml)), flat(cfg if isinstance(cfg, dict) else to_dict(cfg))
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return [k for k in keys if not k.startswith(_FREE_KEYS)]
