"""One run of a stacked group: the trainer's own run (:class:`~trainers.trainer._Run`) with its step taken
away, and what the group reports of it.

A run keeps everything it would have alone: its config and ``run.yaml``, its model (built from its seed, its
parameters then views of the stack), its data loaders, its optimizer (timm's factory on its module, so its
checkpoints have the layout a lone run's have; the momentum buffers are views of the stack) and timm scheduler,
its checkpoints, metrics and final weights. The group (:mod:`.group`) takes the steps and tells each run where
it is.

    >>> o = MemberOutcome(Path("runs/s0"), "failed", "NonFiniteError: step 3 ...")
    >>> o.to_json()
    {'state': 'failed', 'error': 'NonFiniteError: step 3 ...'}
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from ..distributed import DistInfo
from ..errors import ConfigError
from ..factory import build_optimizer, build_scheduler
from ..loop import EpochProgress
from ..resume import log
from ..trainer import RunResult, _Run

__all__ = ["MemberDist", "MemberOutcome", "RunOptimizer", "Member"]


@dataclass(frozen=True)
class MemberDist(DistInfo):
    """The process's :class:`DistInfo`, naming the run its lines are about."""
    tag: str = ""


@dataclass
class MemberOutcome:
    """How one run of a group ended: ``done`` (``result`` set), ``failed`` (``error``: its one line)."""
    out_dir: Path
    state: str
    error: str = ""
    result: RunResult | None = None

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "error": self.error}


class RunOptimizer:
    """What the checkpoint code sees as a run's optimizer: its own ``torch.optim.SGD`` (built by timm's
    factory on the run's module: same groups, same state-dict layout), whose momentum buffers are views of
    the stack; ``state_dict()`` copies them out, so a checkpoint holds this run's state only."""

    def __init__(self, sgd: torch.optim.Optimizer) -> None:
        self.sgd = sgd

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.sgd.param_groups

    def state_dict(self) -> dict[str, Any]:
        sd = self.sgd.state_dict()
        return {"state": {i: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
                          for i, s in sd["state"].items()},
                "param_groups": [dict(g) for g in sd["param_groups"]]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sgd.load_state_dict(state)


class Member(_Run):
    """One run of a group: the trainer's run, whose steps the group takes."""

    def _build_optimization(self, model: nn.Module) -> None:
        cfg = self.cfg
        batches = self.data.batches_per_epoch
        if cfg.data.limit_train_batches:
            batches = min(batches, cfg.data.limit_train_batches)
        self.updates_per_epoch = self.num_batches = batches
        self.global_batch = cfg.data.batch_size
        self.sgd = build_optimizer(cfg, model, self.global_batch)
        self.optimizer = RunOptimizer(self.sgd)
        self.scheduler = build_scheduler(cfg, self.sgd, self.updates_per_epoch)
        self.ema = None
        self.ctx = SimpleNamespace(scaler=None)
        self.history: list[dict[str, Any]] = []
        self.progress = EpochProgress(epoch=0)
        if self.resume_from is not None:
            self._restore(self.resume_from, model, None)
            self._set_aside_later()
        self.eval_metrics: dict[str, Any] = {}
        self.reported_skips = 0

    def _evaluate(self) -> dict[str, Any]:
        return self.eval_metrics  # the group evaluated every run at once

    def _save(self, progress: EpochProgress, rng: dict[str, Any] | None = None, last: bool = False) -> Path | None:
        # the run's own RNG state (what it would hold alone): the group never draws from the process RNG
        return super()._save(progress, rng if rng is not None else self.rng, last)

    def _finish(self) -> RunResult:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):  # the summary table and best epoch, tagged as this run's other lines
            result = super()._finish()
        for line in out.getvalue().splitlines():
            log(self.d, line)
        return result

    def lr(self) -> float:
        """The learning rate of this run's optimizer (one for all its groups: timm's schedulers set them alike)."""
        values = {float(g["lr"]) for g in self.sgd.param_groups}
        if len(values) != 1:
            raise ConfigError(f"run {self.out}: its optimizer groups have different learning rates {sorted(values)}; "
                              "stacked runs take one learning rate per run: train them alone (in a comparison: "
                              "launch.stack: off)")
        return values.pop()
