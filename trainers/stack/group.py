"""K runs trained as one stacked model in one process, each run kept as if it trained alone.

    >>> from trainers import load_config
    >>> from trainers.stack import train_group
    >>> cfgs = [load_config("fashion-mnist", [f"run.seed={s}", f"run.out_dir=runs/seed{s}"]) for s in range(4)]
    >>> outcomes = train_group(cfgs)          # doctest: +SKIP
    >>> [o.state for o in outcomes]           # doctest: +SKIP
    ['done', 'done', 'done', 'done']

Each run (a :class:`~trainers.stack.member.Member`, the trainer's own :class:`~trainers.trainer._Run` with the step taken
away) builds its model from its own seed, its data loaders, its optimizer and timm scheduler, chooses
its checkpoint, and keeps its ``run.yaml``, ``metrics.jsonl``/``.csv``, checkpoints (in the format a
lone run writes and reads: a run can leave the group and go on alone) and final weights in its own
``run.out_dir``. The group stacks the models (:class:`~trainers.stack.flat.FlatStack`) and trains them
with one step (:class:`~trainers.stack.step.StackedStep`).

Stops:

- a run whose loss or gradients go non-finite (``run.nonfinite=stop``) stops alone: the group notices
  at its next look (every ``run.log_every`` steps, a checkpoint, the epoch's end), writes that run's
  last good state (its step was never taken) with the rolled-back position, reports its
  :class:`~trainers.errors.NonFiniteError`, and goes on without it. ``skip``: the step is dropped for
  that run only and counted in its ``skipped_steps``;
- SIGTERM / SIGUSR1: every run finishes the step and checkpoints, then the group raises
  :class:`~trainers.errors.Preempted` (exit status 75);
- a killed group resumes from its runs' checkpoints (``--resume auto``): at the newest step every run
  has a checkpoint of (a kill between the runs' writes leaves some one checkpoint ahead; they go back).
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from .. import checkpoint as ckpt
from ..config import TrainConfig
from ..data import load_datasets
from ..data.on_device import DeviceTrainLoader
from ..distributed import DistInfo, setup_distributed, teardown_distributed
from ..errors import CheckpointError, ConfigError, NonFiniteError, Preempted
from ..factory import build_loss
from ..loop import EpochProgress, Halt, Stopped, _nonfinite_detail
from ..metrics import peak_memory_mb, reset_peak_memory
from ..preemption import PreemptionSignals
from ..resume import log, warn
from ..rng import capture_rng
from ..trainer import _AMP, _epoch_line
from .batches import DeviceBatches, HostBatches
from .flat import FlatStack
from .member import Member, MemberDist, MemberOutcome
from .plan import config_differences, run_tags, stack_blockers
from .sgd import StackedSGD
from .step import StackedStep

__all__ = ["train_group", "MemberOutcome"]


class _Group:
    """The group's life cycle: setup, epochs of stacked steps, the runs' records, checkpoints and stops."""

    def __init__(self, cfgs: Sequence[TrainConfig], d: DistInfo, signals: PreemptionSignals) -> None:
        if not cfgs:
            raise ConfigError("a stacked group needs at least one run")
        if d.distributed:
            raise ConfigError("a stacked group trains in one process: launch it with python -m trainers.stack, "
                              "not torchrun")
        self.d, self.signals = d, signals
        base = {f.name: getattr(d, f.name) for f in fields(DistInfo)}
        tags = run_tags([c.run.out_dir for c in cfgs])
        self.members = [Member(c, MemberDist(**base, tag=t), signals) for c, t in zip(cfgs, tags)]
        self.all = list(self.members)  # the runs that still train are self.members
        self.outcomes: dict[Path, MemberOutcome] = {}
        self.host: HostBatches | None = None

    # -- setup -------------------------------------------------------------------------------------
    def _check_configs(self) -> None:
        first = self.members[0].cfg
        blockers = stack_blockers(first)
        if blockers:
            raise ConfigError(f"these runs cannot be stacked: {'; '.join(blockers)}; train them alone (in a comparison: "
                              "launch.stack: off)")
        outs = [m.out.resolve() for m in self.members]
        if len(set(outs)) != len(outs):
            raise ConfigError("two runs of the group share one run.out_dir; give each its own")
        named = [m.cfg.checkpoint.resume for m in self.members if m.cfg.checkpoint.resume not in (None, "auto")]
        if len(self.members) > 1 and len(set(named)) < len(named):
            raise ConfigError(f"checkpoint.resume = {named[0]} for several runs of the group: a checkpoint is one run's; "
                              "resume each from its own (--member checkpoint.resume=PATH), or use --resume auto")
        for m in self.members[1:]:
            diff = config_differences(first, m.cfg)
            if diff:
                raise ConfigError(f"runs of a stacked group may differ in seed, out_dir and SE settings only; "
                                  f"{m.out} differs from {self.members[0].out} in {', '.join(diff)}")

    def _setup(self) -> None:
        d = self.d
        self._check_configs()
        raws: dict[str, Any] = {}
        models = []
        for m in self.members:
            # the same data set for every seed is read once (synthetic data depend on the seed)
            key = repr(m.cfg.data) + (f"seed {m.cfg.run.seed}" if m.cfg.data.dataset == "synthetic" else "")
            if key not in raws:
                raws[key] = load_datasets(m.cfg)
            models.append(m._setup_model(raws[key]))
        self._align_resume()
        self.stack = FlatStack(models)
        for k, m in enumerate(self.members):
            m._setup_run(m.module)
            m.rng = capture_rng()
        self._attach_momentum(load=True)
        first = self.members[0]
        clocks = {(m.progress.epoch, m.progress.batch, m.progress.num_updates) for m in self.members}
        if len(clocks) != 1:
            raise CheckpointError(f"the runs resume at different steps {sorted(clocks)}: a group trains in lock step; "
                                  "resume them alone (in a comparison: launch.stack: off)")
        cfg = first.cfg
        sgd = StackedSGD.from_optimizers(self.stack, [m.sgd for m in self.members])
        batches = None
        if all(isinstance(m.data.train_loader, DeviceTrainLoader) for m in self.members):
            batches = DeviceBatches([m.data.train_loader for m in self.members], first.num_batches)
        else:
            self.host = HostBatches([m.data for m in self.members])
        graphs = cfg.run.cuda_graphs and d.device.type == "cuda"
        self.step = StackedStep(
            self.stack, sgd, build_loss(cfg, None), d.device, num_batches=first.num_batches, batches=batches,
            amp_dtype=_AMP[cfg.run.amp], channels_last=cfg.run.channels_last, nonfinite=cfg.run.nonfinite,
            clip_grad=cfg.optim.clip_grad, clip_mode=cfg.optim.clip_mode, cuda_graphs=graphs, compile=cfg.run.compile)
        self.step.template.train()
        self.clock = EpochProgress(first.progress.epoch, first.progress.batch, first.progress.num_updates)
        self.clock.train_time = first.progress.train_time
        how = "the whole step as one CUDA graph" if graphs else "eager steps"
        if cfg.run.cuda_graphs and not graphs:
            how += " (run.cuda_graphs ignored: CUDA graphs need a GPU)"
        data = "batches gathered on the device" if batches is not None else "each run's DataLoader"
        log(d, f"stacked group: {self.stack.k} runs of {cfg.model.name} as one model (vmap) on {d.device.type}, "
               f"{self.stack.flat.shape[1] / 1e6:.2f}M params a run; {how}; {data}")

    def _align_resume(self) -> None:
        """The runs go on from one step: the newest that every run has a checkpoint of. (A group killed while its
        runs wrote their checkpoints leaves the first runs one checkpoint ahead.)"""
        def step_of(m: Member) -> int:
            return 0 if m.resume_from is None else int(m.resume_from.state["ranks"][0]["progress"]["num_updates"])

        target = min(step_of(m) for m in self.members)
        for m in self.members:
            if step_of(m) == target:
                continue
            if target == 0:
                folder, moved = ckpt.set_aside_later(m.ckpt_root, 0)
                warn(m.d, f"another run of the group has no checkpoint: this one starts over too; its checkpoints "
                          f"({', '.join(moved)}) moved to {folder}")
                m.resume_from = None
                continue
            path = m.ckpt_root / f"step-{target:08d}"
            if not path.is_dir():
                raise CheckpointError(f"{m.out} has no checkpoint of step {target}, where another run of the group "
                                      "stopped: resume them alone (in a comparison: launch.stack: off)")
            warn(m.d, f"resuming at step {target} with the rest of the group, not at step {step_of(m)}")
            m.resume_from = ckpt.load_checkpoint(path)

    def _attach_momentum(self, load: bool) -> None:
        """Each run's optimizer state (momentum buffers) as views of the stack's (``load``: copy it in first)."""
        for k, m in enumerate(self.members):
            views = self.stack.momentum_views(k)
            for name, p in m.module.named_parameters():
                state = m.sgd.state[p]
                old = state.get("momentum_buffer")
                if load and old is not None:
                    views[name].copy_(old)
                state["momentum_buffer"] = views[name]

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> list[MemberOutcome]:
        self._setup()
        epochs = self.members[0].cfg.run.epochs
        c = self.clock
        while self.members and c.epoch < epochs:
            epoch_start = time.perf_counter()
            reset_peak_memory(self.d.device)
            time_before = c.train_time
            self._begin_epoch()
            stopped = self._train_epoch()
            self._sync()
            if not self.members:
                break
            if stopped:
                self._preempted()
            self._end_epoch(time.perf_counter() - epoch_start - (c.train_time - time_before))
            if c.epoch < epochs and self.members and self.signals.poll() is not None:
                self._preempted()
        for m in self.members:
            self.outcomes[m.out] = MemberOutcome(m.out, "done", result=m._finish())
        return [self.outcomes[m.out] for m in self.all]

    def _lr_table(self) -> torch.Tensor:
        """``(K, num_batches)``: each run's learning rate at each step of this epoch from the clock's batch on, as
        its own scheduler sets it (``step_update`` after each step); the optimizers are left as they were."""
        c, width = self.clock, self.members[0].num_batches
        rows, seen = [], {}
        for m in self.members:
            now = [g["lr"] for g in m.sgd.param_groups]
            sched = m.scheduler.state_dict() if m.scheduler is not None else None
            key = (json.dumps(sched, sort_keys=True, default=str), tuple(now))
            if key not in seen:
                row = [m.lr()] * width
                if m.scheduler is not None and m.cfg.sched.per_step:
                    for b in range(c.batch + 1, width):
                        m.scheduler.step_update(num_updates=c.num_updates + b - c.batch)
                        row[b] = m.lr()
                    for g, lr in zip(m.sgd.param_groups, now):
                        g["lr"] = lr
                seen[key] = row
            rows.append(seen[key])
        return torch.tensor(rows, dtype=torch.float64)

    def _begin_epoch(self) -> None:
        c = self.clock
        self._epoch_start = (c.batch, c.num_updates)
        ps = [m.progress for m in self.members]
        self.step.begin_epoch(c.batch, self._lr_table(), torch.stack([p.loss_sum.double().cpu() for p in ps]),
                              [p.samples for p in ps], [p.skipped_steps for p in ps])
        if self.step.batches is not None:
            self.step.batches.begin_epoch(c.epoch)
        else:
            self.host.begin_epoch(c.epoch, c.batch)

    def _train_epoch(self) -> bool:
        """Steps until the epoch's end (True: stopped early by a signal, after a step)."""
        c = self.clock
        cfg = self.members[0].cfg
        num_batches, every, log_every = self.members[0].num_batches, cfg.checkpoint.every_steps, cfg.run.log_every
        start = time.perf_counter()
        while c.batch < num_batches:
            if self.step.batches is not None:
                self.step.run()
            else:
                self.step.run(*self.host.next())
            c.batch += 1
            c.num_updates += 1
            if every and c.num_updates % every == 0 and c.batch < num_batches:
                c.train_time += time.perf_counter() - start
                self._sync()
                for m in self.members:
                    m._save(m.progress)
                start = time.perf_counter()
                if not self.members:
                    return False
            if self.signals.poll() is not None:
                c.train_time += time.perf_counter() - start
                return True
            if c.num_updates % log_every == 0:
                self._sync()  # a run that stopped leaves the group now rather than at the epoch's end
                if not self.members:
                    break
        c.train_time += time.perf_counter() - start
        return False

    def _sync(self) -> None:
        """Read the step's device state: every run's progress; the runs that stopped leave the group."""
        st, c = self.step, self.clock
        if self.members and self.members[0].scheduler is not None and self.members[0].cfg.sched.per_step:
            for m in self.members:
                m.scheduler.step_update(num_updates=c.num_updates)
        state = torch.stack([st.alive.long(), st.died_at, st.died_loss.long(), st.died_grad.long(), st.samples,
                             st.skipped]).tolist()  # one read of the device
        alive, died_at, dl, dg, samples, skipped = state
        b0, u0 = self._epoch_start
        keep = []
        for i, m in enumerate(self.members):
            p = m.progress
            p.epoch, p.batch, p.num_updates, p.train_time = c.epoch, c.batch, c.num_updates, c.train_time
            p.loss_sum, p.samples, p.skipped_steps = st.loss_sum[i].clone(), samples[i], skipped[i]
            if skipped[i] > m.reported_skips:
                warn(m.d, f"{skipped[i] - m.reported_skips} non-finite step(s) skipped for this run by step "
                          f"{c.num_updates} (epoch {c.epoch}; run.nonfinite=skip)")
                m.reported_skips = skipped[i]
            if alive[i]:
                keep.append(i)
                continue
            p.batch, p.num_updates = died_at[i], u0 + died_at[i] - b0  # rolled back to the start of the bad step
            if m.scheduler is not None and m.cfg.sched.per_step:
                m.scheduler.step_update(num_updates=p.num_updates)
            halt = Stopped(Halt.NONFINITE, p.num_updates + 1, _nonfinite_detail(dl[i], dg[i], 1), m.rng)
            try:
                m._halt(halt, p)
            except NonFiniteError as e:
                warn(m.d, f"NonFiniteError: {e}; the other runs of the group go on")
                self.outcomes[m.out] = MemberOutcome(m.out, "failed", f"NonFiniteError: {e}")
        if len(keep) < len(self.members):
            self.members = [self.members[i] for i in keep]
            if self.members:
                st.keep(keep)
                self._attach_momentum(load=False)
                if self.host is not None:
                    self.host.keep(keep)

    def _end_epoch(self, other_time: float) -> None:
        c = self.clock
        cfg = self.members[0].cfg
        for m in self.members:
            if m.scheduler is not None and not cfg.sched.per_step:
                m.scheduler.step(c.epoch + 1)
        eval_start = time.perf_counter()
        if c.epoch + 1 == cfg.run.epochs or (c.epoch + 1) % cfg.run.eval_every == 0:
            sums = self.step.evaluate(self._val_batches(), cfg.data.limit_val_batches).tolist()
            for m, (loss, c1, c5, n) in zip(self.members, sums):
                n = max(n, 1.0)
                m.eval_metrics = {"val_loss": loss / n, "top1_err": 100.0 * (1 - c1 / n),
                                  "top5_err": 100.0 * (1 - c5 / n), "val_images": int(n)}
        other_time += time.perf_counter() - eval_start
        images = 0
        for m in self.members:
            p = m.progress
            record = m._epoch_record(p, other_time)
            images += p.samples
            m.history.append(record)
            if m.metrics is not None:
                m.metrics.append(record)
            log(m.d, _epoch_line(record))
        log(self.d, f"stacked group: epoch {c.epoch} | {len(self.members)} runs | {images / max(c.train_time, 1e-9):.0f} "
                    f"img/s together | peak {peak_memory_mb(self.d.device):.0f} MB")
        c.epoch, c.batch, c.train_time = c.epoch + 1, 0, 0.0
        for m in self.members:
            p = m.progress
            p.epoch, p.batch, p.samples, p.train_time, p.skipped_steps = c.epoch, 0, 0, 0.0, 0
            p.loss_sum = torch.zeros((), dtype=torch.float64)
            m.reported_skips = 0
            m._save(p)

    def _val_batches(self):
        for pairs in zip(*(m.data.val_loader for m in self.members)):
            yield torch.stack([x for x, _ in pairs]), torch.stack([y for _, y in pairs])

    def _preempted(self) -> None:
        """Every run checkpoints where it is, then the group stops (:class:`Preempted`)."""
        paths = []
        for m in self.members:
            try:
                m._preempted(m.progress)
            except Preempted as e:
                paths.append(e.checkpoint)
                self.outcomes[m.out] = MemberOutcome(m.out, "interrupted", f"Preempted: {e}")
        c = self.clock
        signal = self.signals.requested or "a preemption signal"
        raise Preempted(f"stopped by {signal} after step {c.num_updates} (epoch {c.epoch}, batch {c.batch}); "
                        f"{sum(p is not None for p in paths)} of {len(paths)} runs checkpointed; continue with "
                        "--resume auto", paths[0] if paths else None)


def train_group(cfgs: Sequence[TrainConfig]) -> list[MemberOutcome]:
    """Train the runs of ``cfgs`` as one stacked model in this process; one outcome per run, in order.

    :class:`~trainers.errors.Preempted` when a signal stopped the group (every run checkpointed first);
    a run that went non-finite is a ``failed`` outcome, not an exception.
    """
    d = setup_distributed(cfgs[0].run.device if cfgs else "auto")
    try:
        with PreemptionSignals() as signals:
            return _Group(cfgs, d, signals).run()
    finally:
        teardown_distributed()
