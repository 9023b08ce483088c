"""Preemption: SIGTERM or SIGUSR1 asks the run to stop after its current step, with one checkpoint.

Schedulers warn before they kill: SLURM sends SIGTERM at the time limit (and SIGUSR1 ahead of it with
``--signal=USR1@90``), Kubernetes sends SIGTERM and kills after the grace period. torchrun forwards
the signals it handles to every worker (``--signals-to-handle``; SIGUSR1 is not among its defaults).
The handler only records the signal. The step loop adds the flag to the one all-reduce it makes per
optimizer step (with the non-finite check), so every rank stops after the same step, even when only
one of them was signalled; rank 0 then writes the checkpoint and every rank exits with status 75.

    >>> import os, signal
    >>> with PreemptionSignals() as stop:
    ...     before = stop.requested
    ...     os.kill(os.getpid(), signal.SIGUSR1)
    ...     before, stop.requested
    (None, 'SIGUSR1')
"""
from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

__all__ = ["PreemptionSignals", "SIGNALS"]

#: What asks a run to stop and save: SIGTERM (every scheduler), SIGUSR1 (SLURM's --signal).
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionSignals:
    """While entered, SIGTERM and SIGUSR1 set ``requested`` (the first signal's name) instead of killing.

    Outside the main thread (where Python cannot install handlers) it does nothing and ``installed`` is
    False. The previous handlers come back on exit.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = SIGNALS) -> None:
        self.signals = signals
        self.requested: str | None = None
        self.installed = False
        self._previous: dict[signal.Signals, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is None:  # a second signal (SLURM signals every process, torchrun forwards) changes nothing
            self.requested = signal.Signals(signum).name

    def __enter__(self) -> "PreemptionSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
            self.installed = True
        return self

    def poll(self) -> str | None:
        """``requested``, after putting the handlers back in place.

        Native code can replace a handler underneath Python, which goes on reporting its own. On an H200 under
        ``run.cuda_graphs`` a SIGUSR1 forwarded by torchrun was dropped and the run trained on, and a probe
        found the C-level SIGUSR1 handler replaced by one in a shared library (which one was not pinned down;
        LLVM, inside Triton, installs such a handler): ``benchmarks/results/gpu_reliability.md``. The trainer
        calls this once per optimizer step (two ``sigaction`` calls), so a replaced handler cannot outlive
        the step it appeared in (or the evaluation: the epoch end checks too); a signal that lands before the
        next check can still be lost.
        """
        if self.installed:
            for sig in self.signals:
                signal.signal(sig, self._handle)
        return self.requested

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
        self.installed = False
