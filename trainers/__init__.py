"""se-inject's trainer: DDP (torchrun), AMP, EMA, exact resume, Fashion-MNIST / ImageFolder / synthetic data.

    >>> from trainers import load_config, train
    >>> cfg = load_config("fashion-mnist", ["run.epochs=1"])   # a recipe name or a YAML path
    >>> result = train(cfg)                                      # doctest: +SKIP

From the shell: ``python -m trainers.train``, ``torchrun --nproc_per_node=N -m trainers.train`` or
``se-inject train``. See docs/training.md and docs/reliability.md.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .config import TrainConfig, load_config
from .errors import CheckpointError, CheckpointWriteError, ConfigError, DataError, ExitStatus, NonFiniteError, Preempted

if TYPE_CHECKING:
    from .trainer import RunResult

__all__ = ["TrainConfig", "load_config", "train", "load_run_model", "ConfigError", "CheckpointError", "CheckpointWriteError", "DataError",
           "NonFiniteError", "Preempted", "ExitStatus"]


def train(cfg: TrainConfig) -> "RunResult":
    """Train as ``cfg`` says in this process (alone, or as one rank under torchrun); see :mod:`trainers.trainer`."""
    from .trainer import train as _train  # torch.distributed, timm and the loop load only now
    return _train(cfg)


def load_run_model(run_dir, weights: str = "model.safetensors"):
    """A finished run's trained model, in eval mode: :func:`trainers.run_model.load_run_model`."""
    from .run_model import load_run_model as _load
    return _load(run_dir, weights)
