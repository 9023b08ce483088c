"""The trainer's view of :mod:`se_inject.schema` (the one validator of policies, configs and
comparison files), with :class:`~trainers.errors.ConfigError` as the error type. Kept so that
``from trainers.schema import from_dict`` goes on working; new code imports ``se_inject.schema``.

    >>> from dataclasses import dataclass, field
    >>> @dataclass(frozen=True)
    ... class Optim:
    ...     lr: float = field(default=0.1, metadata={"help": "learning rate", "min": 0})
    >>> from_dict(Optim, {"lr": 0.5}, source="run.yaml")
    Optim(lr=0.5)
    >>> from_dict(Optim, {"lrr": 0.5}, source="run.yaml")
    Traceback (most recent call last):
    ...
    trainers.errors.ConfigError: run.yaml: key 'lrr' is not a config key (did you mean 'lr'?)
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from se_inject import schema as _schema
from se_inject.schema import describe_type, flat_keys, reference_rows, to_dict

from .errors import ConfigError

__all__ = ["from_dict", "to_dict", "flat_keys", "describe_type", "reference_rows"]


def from_dict(cls: type, data: Mapping[str, Any] | None, *, source: str, prefix: str = "",
              sources: Mapping[str, str] | None = None) -> Any:
    """:func:`se_inject.schema.from_dict` raising :class:`ConfigError`."""
    return _schema.from_dict(cls, data, source=source, error=ConfigError, prefix=prefix, sources=sources)
