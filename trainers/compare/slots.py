"""Where each run of a comparison runs: its GPUs (several runs may share one) or its share of the CPU cores.

On GPUs the visible devices are cut into groups of ``launch.nproc_per_node`` (one GPU a rank), and
``launch.parallel`` runs go at once, spread round-robin over the groups: a new run takes the group
with the fewest runs on it (the lowest-numbered among equals), so runs share a GPU only once every
GPU has one. ``launch.runs_per_gpu`` caps how many share a group (null: as many as ``parallel``
puts there). Each run's processes see only their group (``CUDA_VISIBLE_DEVICES``). Without GPUs
(or with ``run.device: cpu``) nothing changes: ``parallel`` runs at once, the cores split between them.

    >>> plan = plan_slots(["0"], nproc_per_node=1, parallel=6, cpu_count=16)
    >>> plan.at_once, plan.per_group, plan.describe()
    (6, 6, '6 runs at a time on GPU 0 (up to 6 sharing a GPU), 2 CPU threads per process')
    >>> slots = Slots(plan)
    >>> [slots.acquire() for _ in range(2)]
    [('0',), ('0',)]
    >>> plan_slots(["0", "1", "2", "3"], nproc_per_node=2, parallel=3, cpu_count=16).describe()
    '3 runs at a time on GPU groups 0,1 | 2,3 (up to 2 sharing a group), 2 CPU threads per process'
    >>> plan_slots([], nproc_per_node=1, parallel=2, cpu_count=2).describe()
    '2 runs at a time on the CPU, 1 CPU thread per process'
"""
from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from .spec import CompareError

__all__ = ["SlotPlan", "Slots", "plan_slots", "visible_gpus"]


def visible_gpus() -> list[str]:
    """This machine's CUDA device indices, as ``CUDA_VISIBLE_DEVICES`` numbers them (empty without CUDA)."""
    try:
        import torch
        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no torch CUDA build, a broken driver: run on the CPU, as before
        return []


@dataclass(frozen=True)
class SlotPlan:
    """How a comparison's runs are placed: printed by ``--dry-run`` and at the start of a comparison."""
    groups: tuple[tuple[str, ...], ...]  # GPU groups, one per concurrently usable set of nproc_per_node GPUs; () on CPU
    per_group: int                       # runs that may share one group at once
    at_once: int                         # runs at a time
    threads: int                         # torch threads (OMP_NUM_THREADS) per process
    unused: tuple[str, ...] = ()         # GPUs left over when their count is not a multiple of nproc_per_node

    @property
    def gpu(self) -> bool:
        return bool(self.groups)

    def describe(self) -> str:
        threads = f"{self.threads} CPU thread{'s' if self.threads > 1 else ''} per process"
        runs = f"{self.at_once} run{'s' if self.at_once > 1 else ''} at a time"
        if not self.gpu:
            return f"{runs} on the CPU, {threads}"
        if len(self.groups[0]) > 1:
            where, unit = "GPU groups " + " | ".join(",".join(g) for g in self.groups), "group"
        else:
            where, unit = f"GPU{'s' if len(self.groups) > 1 else ''} " + ",".join(g[0] for g in self.groups), "GPU"
        spare = f"; GPU {','.join(self.unused)} unused" if self.unused else ""
        return f"{runs} on {where} (up to {self.per_group} sharing a {unit}){spare}, {threads}"


def plan_slots(gpus: Sequence[str], *, nproc_per_node: int, parallel: int, runs_per_gpu: int | None = None,
               threads: int | None = None, cpu_count: int = 1) -> SlotPlan:
    """The placement of ``parallel`` runs of ``nproc_per_node`` processes on ``gpus`` (empty: the CPU).

    ``runs_per_gpu`` caps the runs sharing one GPU group (null: ``ceil(parallel / groups)``, i.e. as
    ``parallel`` asks); ``threads`` is ``launch.threads`` (null: the cores split between processes).

        >>> plan_slots(["0", "1"], nproc_per_node=1, parallel=8, runs_per_gpu=2, cpu_count=16).at_once
        4
    """
    per = nproc_per_node
    if not gpus:
        return SlotPlan((), 0, parallel, threads or max(1, cpu_count // (parallel * per)))
    if len(gpus) < per:
        raise CompareError(f"launch.nproc_per_node = {per} needs {per} GPUs per run but {len(gpus)} "
                           f"{'is' if len(gpus) == 1 else 'are'} visible: lower launch.nproc_per_node, or train on the "
                           "CPU with set: {run.device: cpu}")
    count = len(gpus) // per
    groups = tuple(tuple(gpus[i * per:(i + 1) * per]) for i in range(count))
    per_group = runs_per_gpu or math.ceil(parallel / count)
    at_once = min(parallel, per_group * count)
    per_group = min(per_group, at_once)
    return SlotPlan(groups, per_group, at_once, threads or max(1, cpu_count // (at_once * per)),
                    tuple(gpus[count * per:]))


class Slots:
    """Hands each starting run a GPU group (the least busy one) and takes it back when the run ends.

        >>> slots = Slots(plan_slots(["0", "1"], nproc_per_node=1, parallel=4, cpu_count=8))
        >>> a, b, c = slots.acquire(), slots.acquire(), slots.acquire()
        >>> a, b, c, slots.load
        (('0',), ('1',), ('0',), [2, 1])
        >>> slots.release(b); slots.acquire(), slots.load      # GPU 1 is free again: the next run goes there
        (('1',), [2, 1])
    """

    def __init__(self, plan: SlotPlan) -> None:
        self.plan = plan
        self.load = [0] * len(plan.groups)
        self.lock = threading.Lock()

    def acquire(self) -> tuple[str, ...] | None:
        """The group for a run about to start (None on the CPU). Never more than ``per_group`` on one:
        the runner starts at most ``at_once`` runs together."""
        if not self.plan.gpu:
            return None
        with self.lock:
            i = min(range(len(self.load)), key=lambda k: (self.load[k], k))
            if self.load[i] >= self.plan.per_group:
                raise RuntimeError(f"every GPU group holds {self.plan.per_group} runs; the runner started too many")
            self.load[i] += 1
            return self.plan.groups[i]

    def release(self, group: tuple[str, ...] | None) -> None:
        if group is None:
            return
        with self.lock:
            self.load[self.plan.groups.index(group)] -= 1
