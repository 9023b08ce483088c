"""The trainer's exception types; subclasses of :class:`se_inject.SEInjectError`, printed as one line."""
from __future__ import annotations

from se_inject.errors import SEInjectError

__all__ = ["ConfigError", "CheckpointError", "DataError"]


class ConfigError(SEInjectError, ValueError):
    """A run config (YAML file or ``--set`` override) has an unknown key or a bad value."""


class CheckpointError(SEInjectError, RuntimeError):
    """A checkpoint is missing, truncated, corrupted or from an incompatible run."""


class DataError(SEInjectError, RuntimeError):
    """A dataset cannot be found or read (missing idx files, empty ImageFolder, ...)."""
