"""The trainer's exception types and exit statuses.

Errors are subclasses of :class:`se_inject.SEInjectError`, printed as one line. :class:`Preempted` is
not an error: the run stopped on request with a checkpoint to resume from.

A process started by ``python -m trainers.train`` or ``se-inject train`` (each rank, under torchrun)
exits with one of :class:`ExitStatus`, so a job script can tell "requeue me" from "fix something":

    >>> [(s.name, int(s)) for s in ExitStatus]
    [('OK', 0), ('ERROR', 2), ('NONFINITE', 3), ('PREEMPTED', 75)]
"""
from __future__ import annotations

from enum import IntEnum
from pathlib import Path

from se_inject.errors import SEInjectError

__all__ = ["ConfigError", "CheckpointError", "CheckpointWriteError", "DataError", "NonFiniteError", "Preempted",
           "ExitStatus"]


class ExitStatus(IntEnum):
    """Exit statuses of a training process (each rank's, under torchrun)."""
    OK = 0
    ERROR = 2        # bad config, unreadable data or checkpoint, a failed checkpoint write: change something
    NONFINITE = 3    # run.nonfinite=stop: a step's loss or gradient was NaN/inf; the last good state is saved
    PREEMPTED = 75   # SIGTERM/SIGUSR1: checkpoint written, resume with --resume auto (sysexits' EX_TEMPFAIL)


class ConfigError(SEInjectError, ValueError):
    """A run config (YAML file or ``--set`` override) has an unknown key or a bad value."""


class CheckpointError(SEInjectError, RuntimeError):
    """A checkpoint is missing, truncated, corrupted or from an incompatible run."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (full disk, I/O error); the previous checkpoints are untouched."""


class DataError(SEInjectError, RuntimeError):
    """A dataset cannot be found or read (missing idx files, empty ImageFolder, ...)."""


class NonFiniteError(SEInjectError, ArithmeticError):
    """A training step produced a NaN/inf loss or gradient (``run.nonfinite: stop``)."""


class Preempted(Exception):
    """The run was asked to stop (SIGTERM, SIGUSR1) and stopped after a step, with a checkpoint."""

    def __init__(self, message: str, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint
