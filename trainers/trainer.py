"""One training run from a validated config: setup, resume, epochs, checkpoints, metrics, summary.

    >>> from trainers import load_config, train
    >>> result = train(load_config(None, ["data.dataset=synthetic", "run.epochs=1", "run.out_dir=/tmp/smoke",
    ...                                   "model.name=cifar_resnet8", "run.progress=false"]))  # doctest: +SKIP
    >>> result.history[-1]["top1_err"]  # doctest: +SKIP

Launch it with ``python -m trainers.train`` (1 process), ``torchrun --nproc_per_node=N -m trainers.train``
(N ranks) or ``se-inject train``; all three read the same config.

What a cluster does to a run, and what the run does about it (docs/reliability.md):

- torchrun restarts the worker group after a rank dies (``--max-restarts``): the restarted ranks
  resume by themselves from where their launch left off
  (:meth:`~trainers.resume.Checkpointing._going_on_from`).
- SIGTERM / SIGUSR1 (:mod:`trainers.preemption`): every rank finishes its step, rank 0 writes one
  checkpoint, and :class:`~trainers.errors.Preempted` ends the run (exit status 75).
- a NaN/inf loss or gradient on any rank (``run.nonfinite``): the step is dropped everywhere, or the
  last good state is checkpointed and :class:`~trainers.errors.NonFiniteError` ends the run.
- a checkpoint that cannot be written (``checkpoint.on_write_error``): one line, the previous
  checkpoint intact; the run stops or goes on.
"""
from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from se_inject._extras import require

from . import checkpoint as ckpt
from .config import TrainConfig, dump_config
from .data import load_datasets, make_loaders, resolve_input
from .distributed import (DistInfo, all_gather_objects, all_reduce_sum, barrier, broadcast_object, release_frames,
                          restart_hazard, setup_distributed, teardown_distributed)
from .errors import CheckpointError, CheckpointWriteError, ConfigError
from .factory import (add_se, build_backbone, build_ema, build_loss, build_mixup, build_optimizer, build_scheduler,
                      scaled_lr, wrap_model)
from .loop import EpochProgress, StepContext, evaluate, train_one_epoch
from .metrics import MetricsWriter, peak_memory_mb, reset_peak_memory, summary_table
from .preemption import PreemptionSignals
from .resume import Checkpointing, log, warn
from .rng import restore_rng, seed_everything, set_deterministic

__all__ = ["train", "RunResult"]

_AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class RunResult:
    """What a finished run returns on every rank (the same history everywhere)."""
    out_dir: Path
    history: list[dict[str, Any]]
    num_updates: int
    resumed_from: Path | None
    model: nn.Module          # the trained model, unwrapped (no DDP / compile)
    ema: nn.Module | None     # the EMA weights' model, when EMA is on


def train(cfg: TrainConfig) -> RunResult:
    """Train as ``cfg`` says, in this process (one rank of a torchrun job, or alone)."""
    require("train", for_="trainers.train")
    if cfg.run.tensorboard:
        require("tensorboard", for_="run.tensorboard=true")
    d = setup_distributed(cfg.run.device)
    try:
        with PreemptionSignals() as signals:
            return _Run(cfg, d, signals).run()
    except BaseException as e:  # a stop (preemption, non-finite), a bad config, a crash: the group goes all the same
        release_frames(e)
        raise
    finally:
        teardown_distributed()


class _Run(Checkpointing):
    """The state of one run on one rank; ``run()`` is the whole life cycle (checkpoints, resume and
    stops: :class:`trainers.resume.Checkpointing`)."""

    def __init__(self, cfg: TrainConfig, d: DistInfo, signals: PreemptionSignals | None = None) -> None:
        self.cfg, self.d = cfg, d
        self.signals = signals or PreemptionSignals()
        self.out = Path(cfg.run.out_dir)
        self.ckpt_root = self.out / "checkpoints"
        self.saved_step: int | None = None  # the step of the last checkpoint this process saw written

    def _setup(self) -> None:
        self._setup_run(self._setup_model())

    def _setup_model(self, raw: Any = None) -> nn.Module:
        """Seeds, the checkpoint to resume, the model and the data (``raw``: data sets already loaded, as
        :func:`~trainers.data.load_datasets` returns them); nothing that holds the model's parameters yet."""
        cfg, d = self.cfg, self.d
        set_deterministic(cfg.run.deterministic)
        seed_everything(cfg.run.seed)  # the same on every rank: identical initial weights
        self.resume_from = self._choose_checkpoint()
        if self.resume_from is not None and self.resume_from.state.get("world_size") != d.world_size:
            n = self.resume_from.state.get("world_size")
            raise CheckpointError(f"checkpoint {self.resume_from.path} was written by {n} ranks, this run has "
                                  f"{d.world_size}: resume with torchrun --nproc_per_node={n} (data order and RNG "
                                  "streams are per rank)")
        return self._build_model_and_data(raw)

    def _setup_run(self, model: nn.Module) -> None:
        """Optimization (and the resumed state), run.yaml, the metrics files, the header, the RNG streams."""
        cfg, d = self.cfg, self.d
        self._build_optimization(model)
        if d.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "run.yaml").write_text(dump_config(self.cfg))
        self.metrics = MetricsWriter(self.out, ema=self.ema is not None and self.cfg.ema.evaluate,
                                     tensorboard=cfg.run.tensorboard) if d.is_main else None
        if self.metrics is not None:
            self.metrics.rewrite(self.history)
        self._print_header()
        hazard = restart_hazard()
        if hazard:
            warn(d, hazard)
        # Ranks share the initial weights (seeded above) but not their noise: dropout, mixup and random
        # erasing draw from seed + rank, as in timm's train.py.
        seed_everything(cfg.run.seed + d.rank)
        if self.resume_from is not None:
            # last, so nothing in setup draws from the restored streams
            restore_rng(self.resume_from.state["ranks"][d.rank]["rng"])

    def _build_model_and_data(self, raw: Any = None) -> nn.Module:
        """Data sets, the model (plain, then SE with the resolved input size), loaders; fills run.yaml's blanks."""
        cfg, d = self.cfg, self.d
        raw = raw if raw is not None else load_datasets(cfg)
        model = build_backbone(cfg, raw.num_classes, raw.in_chans or cfg.model.in_chans or 3)
        rc = resolve_input(cfg, raw, model)
        model = add_se(cfg, model, tuple(rc["input_size"]))
        self.data = make_loaders(cfg, raw, d.rank, d.world_size, d.device, model)
        self.cfg = replace(cfg, model=replace(cfg.model, num_classes=cfg.model.num_classes or raw.num_classes,
                                              in_chans=self.data.input_size[0]),
                           data=replace(cfg.data, input_size=self.data.input_size, mean=self.data.mean,
                                        std=self.data.std, crop_pct=self.data.crop_pct))
        model.to(d.device)
        if cfg.run.channels_last:
            model.to(memory_format=torch.channels_last)
        self.module = model
        return model

    def _build_optimization(self, model: nn.Module) -> None:
        """Optimizer, schedule, scaler, mixup, loss, EMA and wrappers; restores a checkpoint into them."""
        cfg, d = self.cfg, self.d
        accum = cfg.optim.accum_steps
        batches = self.data.batches_per_epoch
        if cfg.data.limit_train_batches:
            batches = min(batches, cfg.data.limit_train_batches)
        self.updates_per_epoch = batches // accum
        if self.updates_per_epoch == 0:
            raise ConfigError(f"optim.accum_steps = {accum} exceeds the {batches} batches of an epoch")
        self.num_batches = self.updates_per_epoch * accum  # a trailing partial accumulation is not trained on
        self.global_batch = cfg.data.batch_size * d.world_size * accum

        self.optimizer = build_optimizer(cfg, model, self.global_batch)
        self.scheduler = build_scheduler(cfg, self.optimizer, self.updates_per_epoch)
        scaler = torch.amp.GradScaler(d.device.type) if cfg.run.amp == "fp16" else None
        mixup = build_mixup(cfg, self.data.num_classes)
        random_erasing = None
        if cfg.data.aug.re_prob > 0:
            from timm.data.random_erasing import RandomErasing
            random_erasing = RandomErasing(cfg.data.aug.re_prob, mode="pixel", device=d.device)

        self.history: list[dict[str, Any]] = []
        self.progress = EpochProgress(epoch=0)
        if self.resume_from is not None:
            self._restore(self.resume_from, model, scaler)
        self.ema = build_ema(cfg, model)
        if self.ema is not None and self.resume_from is not None:
            if self.resume_from.ema is None:
                raise CheckpointError(f"checkpoint {self.resume_from.path} has no EMA weights but ema is on; "
                                      "set ema=null or resume a run trained with EMA")
            self.ema.module.load_state_dict(self.resume_from.ema)
        if self.resume_from is not None:  # the resume took: only now is the old timeline set aside
            self._set_aside_later()

        wrapped, graphs, note = wrap_model(cfg, model, d.device, d.distributed)
        if note:
            log(d, f"note: {note}")
        self.ctx = StepContext(
            model=wrapped, module=model, optimizer=self.optimizer, loss_fn=build_loss(cfg, mixup), device=d.device,
            scheduler=self.scheduler, per_step_schedule=cfg.sched.per_step, scaler=scaler, ema=self.ema, mixup=mixup,
            random_erasing=random_erasing, amp_dtype=_AMP[cfg.run.amp], channels_last=cfg.run.channels_last,
            accum_steps=accum, clip_grad=cfg.optim.clip_grad, clip_mode=cfg.optim.clip_mode, world_size=d.world_size,
            nonfinite=cfg.run.nonfinite, stop_requested=self._stop_requested, cuda_graphs=graphs)

    def _print_header(self) -> None:
        cfg, d, data = self.cfg, self.d, self.data
        params = sum(p.numel() for p in self.module.parameters()) / 1e6
        se = f" + SE ({cfg.model.se.policy})" if cfg.model.se is not None else ""
        size = "x".join(str(s) for s in data.input_size)
        where_data = f" on {d.device.type}" if cfg.data.on_device else ""
        log(d, f"model {cfg.model.name}{se}: {params:.2f}M params | data {cfg.data.dataset}{where_data}: {data.num_train} "
                f"train / {data.num_val} val images, {size}, {data.num_classes} classes")
        nodes = f" on {d.nodes} nodes" if d.nodes > 1 else ""
        where = f"{d.world_size} rank{'s' if d.world_size > 1 else ''}{nodes} ({d.backend or 'single process'}, {d.device.type})"
        # the peak lr (the optimizer's own is the warm-up's first value until the scheduler moves it)
        warmup = f" after {cfg.sched.warmup_epochs:g} warm-up epoch(s) from {cfg.sched.warmup_lr:.2g}" \
            if cfg.sched.warmup_epochs else ""
        log(d, f"{where} | global batch {self.global_batch} = {cfg.data.batch_size}/rank x {d.world_size} x "
                f"{cfg.optim.accum_steps} accum | lr {scaled_lr(cfg, self.global_batch):.4g}{warmup} | "
                f"{self.updates_per_epoch} steps/epoch x {cfg.run.epochs} epochs | out {self.out}")
        if self.resume_from is not None:
            p = self.progress
            log(d, f"resumed from {self.resume_from.path} at epoch {p.epoch}, batch {p.batch}/{self.num_batches} "
                    f"(step {p.num_updates})")

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> RunResult:
        self._setup()
        cfg, d = self.cfg, self.d
        from tqdm import tqdm

        p = self.progress
        while p.epoch < cfg.run.epochs:
            epoch_start = time.perf_counter()
            reset_peak_memory(d.device)
            self.data.train_sampler.set_epoch(p.epoch, start_batch=p.batch)
            bar = tqdm(total=self.num_batches, initial=p.batch, desc=f"epoch {p.epoch}", unit="batch",
                       dynamic_ncols=True, leave=False, file=sys.stderr) if (d.is_main and cfg.run.progress) else None
            time_before = p.train_time
            halt = train_one_epoch(self.ctx, self.data.train_loader, p, self.num_batches, on_update=self._on_update,
                                   on_skip=self._on_skip, bar=bar, log_every=cfg.run.log_every)
            if bar is not None:
                bar.close()
            if halt is not None:
                self._halt(halt, p)
            if d.distributed and cfg.run.dist_bn != "none":
                # DDP keeps parameters in sync, not BN running stats (each rank updates its own)
                from timm.utils import distribute_bn
                distribute_bn(self.module, d.world_size, reduce=cfg.run.dist_bn == "reduce")
            if self.scheduler is not None and not cfg.sched.per_step:
                self.scheduler.step(p.epoch + 1)
            record = self._epoch_record(p, time.perf_counter() - epoch_start - (p.train_time - time_before))
            self.history.append(record)
            if self.metrics is not None:
                self.metrics.append(record)
            log(d, _epoch_line(record))
            p.epoch, p.batch, p.samples, p.train_time, p.skipped_steps = p.epoch + 1, 0, 0, 0.0, 0
            p.loss_sum = torch.zeros((), dtype=torch.float64, device=d.device)
            self._save(p)
            if p.epoch < cfg.run.epochs and self._stop_agreed():  # signalled during evaluation or the checkpoint
                self._preempted(p)
        return self._finish()

    def _epoch_record(self, p: EpochProgress, other_time: float) -> dict[str, Any]:
        cfg, d = self.cfg, self.d
        sums = torch.stack([p.loss_sum.double(), torch.tensor(float(p.samples), dtype=torch.float64, device=d.device),
                            torch.tensor(p.train_time, dtype=torch.float64, device=d.device)])
        loss_sum, samples, _ = all_reduce_sum(sums).tolist()
        record: dict[str, Any] = {"epoch": p.epoch, "train_loss": loss_sum / max(samples, 1)}
        last = p.epoch + 1 == cfg.run.epochs
        eval_start = time.perf_counter()
        if last or (p.epoch + 1) % cfg.run.eval_every == 0:
            record.update(self._evaluate())
        eval_time = time.perf_counter() - eval_start
        record.update({
            "lr": self.optimizer.param_groups[0]["lr"],
            "img_per_s": samples / max(p.train_time, 1e-9),  # this rank's step-loop time; samples of all ranks
            "epoch_time_s": p.train_time + other_time + eval_time,
            "peak_mem_mb": max(all_gather_objects(peak_memory_mb(d.device))),
            "num_updates": p.num_updates,
            "skipped_steps": p.skipped_steps,
        })
        return record

    def _evaluate(self) -> dict[str, Any]:
        """Validation metrics of the model (and of the EMA weights) for the epoch record."""
        cfg, d = self.cfg, self.d
        amp = _AMP[cfg.run.amp]
        metrics = evaluate(self.module, self.data.val_loader, d.device, amp, cfg.run.channels_last,
                           cfg.data.limit_val_batches)
        if self.ema is not None and cfg.ema.evaluate:
            ema_metrics = evaluate(self.ema.module, self.data.val_loader, d.device, amp, cfg.run.channels_last,
                                   cfg.data.limit_val_batches, prefix="ema_")
            ema_metrics.pop("ema_val_images", None)
            metrics.update(ema_metrics)
        return metrics

    def _finish(self) -> RunResult:
        d = self.d
        error = None
        if d.is_main:
            try:
                ckpt.save_weights(self.module.state_dict(), self.out / "model.safetensors")
                if self.ema is not None:
                    ckpt.save_weights(self.ema.module.state_dict(), self.out / "ema.safetensors")
            except CheckpointWriteError as e:
                error = str(e)
        error = broadcast_object(error)
        if error is not None:
            raise CheckpointWriteError(error)
        if d.is_main:
            self._write_model_config()
            if self.metrics is not None:
                self.metrics.close()
            print(summary_table(self.history), flush=True)
            evaluated = [r for r in self.history if r.get("top1_err") is not None]
            if evaluated:
                best = min(evaluated, key=lambda r: r["top1_err"])
                print(f"best top-1 error {best['top1_err']:.2f} % (top-5 {best['top5_err']:.2f} %) at epoch "
                      f"{best['epoch']}; weights {self.out / 'model.safetensors'}", flush=True)
        barrier()
        return RunResult(self.out, self.history, self.progress.num_updates,
                         self.resume_from.path if self.resume_from else None, self.module,
                         self.ema.module if self.ema is not None else None)

    def _write_model_config(self) -> None:
        """``config.json`` beside ``model.safetensors``: se_inject.load_pretrained(out_dir) rebuilds the net from it.
        The weights are written already; a config that cannot be is a warning, not a failed run."""
        from se_inject.errors import SEInjectError
        from se_inject.pretrained import write_config
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a base without a name: load_pretrained says what to pass
                write_config(self.module, self.out)
        except (SEInjectError, OSError) as e:
            (self.out / "config.json").unlink(missing_ok=True)  # an earlier run's would describe another net
            warn(self.d, f"{self.out / 'config.json'} not written ({e}); se_inject.load_pretrained rebuilds the model "
                         "from run.yaml instead")


def _epoch_line(r: dict[str, Any]) -> str:
    parts = [f"epoch {r['epoch']}", f"train_loss {r['train_loss']:.4f}"]
    if r.get("top1_err") is not None:
        parts += [f"val_loss {r['val_loss']:.4f}", f"top1_err {r['top1_err']:.2f}%", f"top5_err {r['top5_err']:.2f}%"]
    if r.get("ema_top1_err") is not None:
        parts.append(f"ema_top1_err {r['ema_top1_err']:.2f}%")
    if r.get("skipped_steps"):
        parts.append(f"{r['skipped_steps']} non-finite step{'s' if r['skipped_steps'] > 1 else ''} skipped")
    parts += [f"lr {r['lr']:.4g}", f"{r['img_per_s']:.0f} img/s", f"{r['epoch_time_s']:.1f}s"]
    return " | ".join(parts)
