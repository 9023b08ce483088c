"""torch.distributed from torchrun's environment: one process per device, NCCL on GPU, gloo on CPU.

    $ torchrun --nproc_per_node=2 -m trainers.train --config run.yaml      # 2 ranks, one machine
    $ torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d \\
          --rdzv_endpoint=host0:29500 -m trainers.train --config run.yaml  # 2 nodes: torchrun's rendezvous
    $ python -m trainers.train --config run.yaml                            # 1 process, no process group

No launcher of our own: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` come from torchrun.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .errors import ConfigError

__all__ = ["DistInfo", "setup_distributed", "teardown_distributed", "all_reduce_sum", "all_gather_objects",
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
            dist.init_process_group(backend, device_id=dev if use_cuda else None)
    return DistInfo(rank, world, local, dev, backend, nodes)


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
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


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
