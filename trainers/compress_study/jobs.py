"""The study's units of work, each resumable (a finished one leaves its ``.json`` and is skipped):

- ``base``: train one backbone with SE through the trainer (``python -m trainers.train``), once;
- ``reference``: the base model's accuracy and excitation statistics (what the fold tolerances read);
- ``prune``: calibrate (seeded), ``se_inject.prune`` by one criterion to one MAC target, accuracy
  before fine-tuning, fine-tune with the trainer's step loop, accuracy after;
- ``fold``: ``se_inject.fold`` at one tolerance, the per-block plan, accuracy (no fine-tuning);
- latency: batch-1 CPU time of every architecture, in interleaved rounds (:func:`measure_latency`).
"""
from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .spec import StudySpec, base_overrides

__all__ = ["Job", "run_job", "plan_jobs", "measure_latency", "result_path"]

DEVICE = torch.device("cpu")


@dataclass(frozen=True)
class Job:
    kind: str                    # base | reference | prune | fold
    backbone: str
    criterion: str = ""
    amount: float = 0.0
    seed: int = 0
    tolerance: float = 0.0

    @property
    def name(self) -> str:
        if self.kind == "prune":
            return f"prune-{self.criterion}-{self.amount:.2f}-seed{self.seed}"
        if self.kind == "fold":
            return f"fold-{self.tolerance:g}"
        return self.kind


def result_path(root: Path, job: Job) -> Path:
    return root / job.backbone / f"{job.name}.json"


def plan_jobs(spec: StudySpec) -> list[Job]:
    """Every job in queue order: the base trainings (longest first: with two workers the big net trains
    while the small one is pruned), each backbone's reference and pruning jobs (smallest backbone
    first), the folds last (their tolerances are read off the reference statistics)."""
    jobs = [Job("base", b) for b in sorted(spec.backbones, key=_depth, reverse=True)]
    for b in sorted(spec.backbones, key=_depth):
        jobs.append(Job("reference", b))
        jobs += [Job("prune", b, c, a, s) for a in spec.prune.amounts for s in spec.seeds for c in spec.prune.criteria]
    jobs += [Job("fold", b, tolerance=t) for b in sorted(spec.backbones, key=_depth) for t in spec.fold.tolerances]
    return jobs


def _depth(name: str) -> int:
    digits = "".join(ch for ch in name.rpartition("_")[2] if ch.isdigit())
    return int(digits) if digits else 0


def run_job(spec: StudySpec, job: Job) -> dict[str, Any]:
    """Run ``job`` (or read its result); failures are results too (``error``), so the study goes on."""
    torch.set_num_threads(1)
    root = Path(spec.out_dir)
    path = result_path(root, job)
    if path.exists():
        return json.loads(path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    failed = path.with_suffix(".failed.json")
    failed.unlink(missing_ok=True)  # a failed job runs again
    start = time.perf_counter()
    try:
        result = _RUNNERS[job.kind](spec, root, job)
    except Exception as e:  # recorded, shown in the report as failed
        (path.with_suffix(".error.txt")).write_text(traceback.format_exc())
        result = {"job": job.name, "backbone": job.backbone, "kind": job.kind, "error": f"{type(e).__name__}: {e}"}
        failed.write_text(json.dumps(result))
        return result
    result.update(job=job.name, backbone=job.backbone, kind=job.kind, seconds=round(time.perf_counter() - start, 1))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)
    return result


# -- base model -------------------------------------------------------------------------------------

def base_dir(root: Path, backbone: str) -> Path:
    return root / backbone / "base"


def _train_base(spec: StudySpec, root: Path, job: Job) -> dict[str, Any]:
    out = base_dir(root, job.backbone)
    if not (out / "model.safetensors").exists():
        cmd = [sys.executable, "-m", "trainers.train", "--config", spec.train.config]
        for item in (*spec.train_overrides, *base_overrides(spec, job.backbone, out), "run.progress=false"):
            cmd += ["--set", item]
        if (out / "checkpoints").exists():  # a study killed while this trained: continue from its checkpoint
            cmd += ["--resume", "auto"]
        out.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with open(out.parent / "base.log", "a") as log:
            done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"training {job.backbone} failed (exit status {done.returncode}); see {out.parent / 'base.log'}")
    return {"run_dir": str(out)}


def _wait_for_base(root: Path, backbone: str) -> Path:
    out, failed = base_dir(root, backbone), root / backbone / "base.error.txt"
    while not (out / "model.safetensors").exists():
        if failed.exists():
            raise RuntimeError(f"the base model of {backbone} did not train; see {failed}")
        time.sleep(5)
    return out


def load_base(root: Path, backbone: str) -> tuple[Any, nn.Module]:
    from safetensors.torch import load_file

    from trainers.config import load_config
    from trainers.factory import build_model
    run = _wait_for_base(root, backbone)
    cfg = load_config(str(run / "run.yaml"), ["data.workers=0"])
    model = build_model(cfg, cfg.model.num_classes, tuple(cfg.data.input_size))
    model.load_state_dict(load_file(str(run / "model.safetensors")))
    return cfg, model.eval()


# -- data, calibration, evaluation, fine-tuning -----------------------------------------------------

def _data(root: Path, backbone: str, overrides: list[str]) -> Any:
    from trainers.config import load_config
    from trainers.data import build_data
    cfg = load_config(str(base_dir(root, backbone) / "run.yaml"), ["data.workers=0", *overrides])
    return cfg, build_data(cfg, rank=0, world_size=1, device=DEVICE)


def calibration_stats(spec: StudySpec, root: Path, backbone: str, model: nn.Module, seed: int) -> Any:
    """Excitation statistics on ``calibration.batches`` training batches, unaugmented, drawn by ``seed``."""
    import se_inject
    _, data = _data(root, backbone, [f"data.batch_size={spec.calibration.batch_size}", "data.aug.crop=none",
                                     "data.aug.hflip=0", "data.aug.re_prob=0", f"run.seed={seed}"])
    data.train_sampler.set_epoch(10_000 + seed)
    return se_inject.excitation_stats(model, data.train_loader, max_batches=spec.calibration.batches)


def accuracy(spec: StudySpec, root: Path, backbone: str, model: nn.Module) -> float:
    """Top-1 accuracy (%) on the first ``measure.eval_images`` test images."""
    from trainers.loop import evaluate
    _, data = _data(root, backbone, ["data.eval_batch_size=500"])
    limit = math.ceil(spec.measure.eval_images / 500) if spec.measure.eval_images else None
    return round(100.0 - evaluate(model, data.val_loader, DEVICE, limit=limit)["top1_err"], 3)


def finetune(spec: StudySpec, root: Path, backbone: str, model: nn.Module, seed: int) -> None:
    """The trainer's step loop, optimizer and schedule at the fine-tuning settings (cosine to 0)."""
    from trainers.factory import build_loss, build_optimizer, build_scheduler
    from trainers.loop import EpochProgress, StepContext, train_one_epoch
    from trainers.rng import seed_everything
    ft = spec.finetune
    if ft.epochs == 0:
        return
    limit = f"data.limit_train_batches={ft.batches_per_epoch}" if ft.batches_per_epoch else "data.limit_train_batches=null"
    cfg, data = _data(root, backbone, [f"run.seed={seed}", f"run.epochs={ft.epochs}", f"optim.lr={ft.lr}",
                                       "optim.lr_base_batch=null", f"data.batch_size={ft.batch_size}",
                                       "sched.warmup_epochs=0", "sched.min_lr=0", limit])
    seed_everything(seed)
    batches = min(data.batches_per_epoch, ft.batches_per_epoch or data.batches_per_epoch)
    optimizer = build_optimizer(cfg, model, ft.batch_size)
    scheduler = build_scheduler(cfg, optimizer, batches)
    ctx = StepContext(model=model, module=model, optimizer=optimizer, loss_fn=build_loss(cfg, None), device=DEVICE,
                      scheduler=scheduler, per_step_schedule=cfg.sched.per_step)
    updates = 0
    for epoch in range(ft.epochs):
        data.train_sampler.set_epoch(epoch)
        progress = EpochProgress(epoch=epoch, num_updates=updates)
        train_one_epoch(ctx, data.train_loader, progress, num_batches=batches, log_every=10 ** 9)
        updates = progress.num_updates
        if scheduler is not None and not cfg.sched.per_step:
            scheduler.step(epoch + 1)
    model.eval()


def _size(model: nn.Module, cfg: Any) -> dict[str, Any]:
    from se_inject.accounting import count_macs, count_params
    return {"macs": count_macs(model, tuple(cfg.data.input_size)), "params": count_params(model)}


# -- the jobs ---------------------------------------------------------------------------------------

def _reference(spec: StudySpec, root: Path, job: Job) -> dict[str, Any]:
    cfg, model = load_base(root, job.backbone)
    stats = calibration_stats(spec, root, job.backbone, model, spec.seeds[0])
    stats.save(root / job.backbone / "excitations.pt")
    torch.save(model, root / job.backbone / "base.pt")
    return {**_size(model, cfg), "accuracy": accuracy(spec, root, job.backbone, model),
            "variation": {b: stats.variation(b) for b in stats.blocks},
            "labels": dict(stats.labels), "summary": stats.summary()}


def _prune(spec: StudySpec, root: Path, job: Job) -> dict[str, Any]:
    import se_inject
    cfg, model = load_base(root, job.backbone)
    base = _size(model, cfg)
    stats = calibration_stats(spec, root, job.backbone, model, job.seed) if job.criterion == "excitation" else None
    t0 = time.perf_counter()
    small = se_inject.prune(model, stats, job.amount, importance=job.criterion, seed=job.seed,
                            input_size=tuple(cfg.data.input_size))
    prune_s = time.perf_counter() - t0
    size = _size(small, cfg)
    before = accuracy(spec, root, job.backbone, small)
    t0 = time.perf_counter()
    finetune(spec, root, job.backbone, small, job.seed)
    finetune_s = time.perf_counter() - t0
    if job.seed == spec.seeds[0]:  # one model of each architecture for the latency rounds
        torch.save(small, result_path(root, job).with_suffix(".pt"))
    return {**size, "criterion": job.criterion, "amount": job.amount, "seed": job.seed,
            "macs_removed": round(1 - size["macs"] / base["macs"], 4), "accuracy_pruned": before,
            "accuracy": accuracy(spec, root, job.backbone, small), "prune_s": round(prune_s, 1),
            "finetune_s": round(finetune_s, 1)}


def _fold(spec: StudySpec, root: Path, job: Job) -> dict[str, Any]:
    import se_inject
    cfg, model = load_base(root, job.backbone)
    stats = calibration_stats(spec, root, job.backbone, model, spec.seeds[0])
    plan = se_inject.fold_plan(model, stats, job.tolerance)
    folded = se_inject.fold(model, stats, job.tolerance)
    torch.save(folded, result_path(root, job).with_suffix(".pt"))
    base = _size(model, cfg)
    size = _size(folded, cfg)
    return {**size, "tolerance": job.tolerance, "plan": str(plan), "macs_removed": round(1 - size["macs"] / base["macs"], 4),
            "folded": [d.block for d in plan.decisions if d.action.value == "folded"],
            "constant": [d.block for d in plan.decisions if d.action.value == "constant"],
            "accuracy": accuracy(spec, root, job.backbone, folded)}


_RUNNERS = {"base": _train_base, "reference": _reference, "prune": _prune, "fold": _fold}


def measure_latency(models: dict[str, nn.Module], input_size: tuple[int, ...], reps: int, rounds: int) -> dict[str, float]:
    """Median batch-1 CPU forward time (ms) of each model, one thread, in ``rounds`` interleaved rounds of
    ``reps`` calls: a machine that gets busier slows every model alike instead of the last ones."""
    torch.set_num_threads(1)
    x = torch.randn(1, *input_size)
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():
            m.eval()
            for _ in range(3):
                m(x)
        for _ in range(rounds):
            for key, m in models.items():
                for _ in range(reps):
                    t0 = time.perf_counter()
                    m(x)
                    times[key].append(time.perf_counter() - t0)
    return {k: round(1000 * statistics.median(v), 4) for k, v in times.items()}
