"""se-inject's trainer: DDP (torchrun), AMP, EMA, exact resume, Fashion-MNIST / ImageFolder / synthetic data.

    >>> from trainers import load_config, train
    >>> cfg = load_config("fashion-mnist", ["run.epochs=1"])   # a recipe name or a YAML path
    >>> result = train(cfg)                                      # doctest: +SKIP

From the shell: ``python -m trainers.train``, ``torchrun --nproc_per_node=N -m trainers.train`` or
``se-inject train``. See ``trainers/README.md``.
"""
from .config import TrainConfig, load_config
from .errors import CheckpointError, ConfigError, DataError

__all__ = ["TrainConfig", "load_config", "train", "ConfigError", "CheckpointError", "DataError"]


def train(cfg: TrainConfig):  # noqa: D103 - lazy import keeps `import trainers` light
    from .trainer import train as _train
    return _train(cfg)


train.__doc__ = "Train as ``cfg`` says (see :func:`trainers.trainer.train`)."
