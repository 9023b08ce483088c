"""torch.distributed from torchrun's environment: one process per device, NCCL on GPU, gloo on CPU.

    $ torchrun --nproc_per_node=2 -m trainers.train --config run.yaml      # 2 ranks, one machine
    $ torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d \\
          --rdzv_endpoint=host0:29500 -m trainers.train --config run.yaml  # 2 nodes: torchrun's rendezvous
    $ python -m trainers.train --config run.yaml                            # 1 process, no process group

No launcher of our own: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` come from torchrun.
"""
from __future__ import annotations

import gc
import os
import traceback
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .errors import ConfigError

__all__ = ["DistInfo", "setup_distributed", "teardown_distributed", "release_frames", "all_reduce_sum", "all_gather_objects",
           "broadcast_object", "barrier", "restart_hazard"]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run."""
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None: a single process without a process group
    nodes: int = 1       # machines (torchrun agents): world_size / LOCAL_WORLD_SIZE

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def setup_distributed(device: str = "auto") -> DistInfo:
    """Join torchrun's process group (if launched by torchrun) and pick this rank's device."""
    world, rank, local = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    nodes = max(1, world // max(1, _env_int("LOCAL_WORLD_SIZE", world)))
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device = 'cuda' but no CUDA device is visible; use run.device=auto or cpu")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        dev = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    backend = None
    if world > 1:
        backend = "nccl" if use_cuda else "gloo"
        if not dist.is_initialized():
            _import_before_the_group()
            dist.init_process_group(backend, device_id=dev if use_cuda else None)
    return DistInfo(rank, world, local, dev, backend, nodes)


def _import_before_the_group() -> None:
    """Import what binds the default group at import time while there is none.

    ``torch.distributed.nn.functional`` (imported by DDP's constructor) gives ten functions the default
    argument ``group=group.WORLD``, evaluated at import: imported after ``init_process_group`` it holds
    the group for the life of the process (torch 2.14), so ``destroy_process_group`` cannot free it and
    gloo's threads are torn down in interpreter finalisation, where a rank can abort after a
    successful run (issue 23). Imported first, the defaults are ``None``, which means the same group.
    """
    import torch.distributed.nn.functional  # noqa: F401


def restart_hazard(env: dict[str, str] | None = None) -> str | None:
    """Why torchrun's restart of this group may fail to reconnect, or None.

    With ``--max-restarts`` > 0, torchrun (2.14) hands every attempt the same shared TCP store, and the
    keys a dead attempt left there (each rank's gloo/NCCL address) can be read by the next attempt before
    they are rewritten: the restarted group then fails to connect, at random. The c10d rendezvous with
    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` gives each attempt a fresh store.

        >>> restart_hazard({"TORCHELASTIC_MAX_RESTARTS": "1", "TORCHELASTIC_USE_AGENT_STORE": "True"})[:45]
        'torchrun --max-restarts=1 shares one TCP stor'
        >>> restart_hazard({"TORCHELASTIC_MAX_RESTARTS": "1", "TORCHELASTIC_USE_AGENT_STORE": "False"}) is None
        True
    """
    env = os.environ if env is None else env
    restarts = env.get("TORCHELASTIC_MAX_RESTARTS", "0")
    if restarts in ("", "0") or env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    return (f"torchrun --max-restarts={restarts} shares one TCP store between attempts, so a restarted group can "
            "read the dead one's addresses and fail to connect: launch with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 "
            "and --rdzv-backend=c10d (or --standalone)")


def teardown_distributed() -> None:
    """Destroy the process group so that its threads are joined now, while the interpreter is alive.

    ``destroy_process_group`` only drops the registry's reference: the C++ group (and gloo's worker and
    transport threads) lives on while anything else holds it, and a DDP wrapper's reducer does, from
    inside reference cycles (the run's bound methods, DDP's own hooks) that only the cyclic collector
    frees. Left to interpreter finalisation, those threads die under a Python that is being torn
    down and a rank aborts with ``terminate called without an active exception`` after its run
    succeeded (issue 23). So the garbage is collected first; callers drop their own references to
    the wrapped model (and an exception's frames: :func:`release_frames`) before calling this.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()
    dist.destroy_process_group()
    gc.collect()  # a group an object in a cycle still held after the registry let go


def release_frames(error: BaseException) -> None:
    """Drop the local variables of the finished frames of ``error``'s traceback (and of the errors it
    chains), which hold the model, its DDP wrapper and through it the process group, so that
    :func:`teardown_distributed` can destroy the group while ``error`` propagates. The traceback still
    prints (file, line and code of each frame); only the locals go."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        error = error.__cause__ or error.__context__


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over ranks, in place (unchanged in a single process)."""
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if _active():
        dist.barrier()
