"""One training as a child process: its command, its log, its per-epoch records, its end.

The one way ``compare`` and ``search`` run many trainings: each run is ``python -m trainers.train``
(under ``torchrun`` for several ranks) with ``--set`` overrides, its output in ``<out_dir>/train.log``.
:func:`run_training` waits for it and, when given ``on_epoch``, hands each new line of the run's
``metrics.jsonl`` to it as the run writes it; ``on_epoch`` returning True stops the run the way a
scheduler does (SIGTERM: the trainer finishes its step, checkpoints and exits 75).

    >>> train_command("fashion-mnist", ["run.epochs=1"], torchrun=False)[1:]
    ['-m', 'trainers.train', '--config', 'fashion-mnist', '--set', 'run.epochs=1']
    >>> reason(["epoch 0 ...", "trainers.errors.DataError: fashion-mnist: no idx files in /data"])
    'trainers.errors.DataError: fashion-mnist: no idx files in /data'
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["train_command", "run_training", "Finished", "reason", "out_of_memory", "die_with_parent", "LOG",
           "DIE_WITH_PARENT", "command_main"]

LOG = "train.log"
#: set in a training's environment: each of its processes dies with its parent (a search worker killed with
#: SIGKILL takes its training, and torchrun's ranks, with it; see :func:`die_with_parent`)
DIE_WITH_PARENT = "SE_INJECT_DIE_WITH_PARENT"


def train_command(config: str | None, overrides: Sequence[str], *, nproc_per_node: int = 1, resume: bool = False,
                  torchrun: bool = True) -> list[str]:
    """The command line of one training (``torchrun --standalone`` for its ranks, or one plain process)."""
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}",
               "-m", "trainers.train"]
    else:
        cmd = [sys.executable, "-m", "trainers.train"]
    if config:
        cmd += ["--config", config]
    for item in overrides:
        cmd += ["--set", item]
    if resume:
        cmd += ["--resume", "auto"]
    return cmd


_ERROR_LINE = re.compile(r"^([\w.]+)?(Error|Exception|Interrupt)\w*: ")
_OOM = re.compile(r"out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED|CUDNN_STATUS_(ALLOC_FAILED|NOT_ENOUGH_WORKSPACE)")


def reason(lines: Sequence[str]) -> str:
    """The run's own one-line error (ours, or a traceback's last line), not torchrun's summary."""
    found = [line for line in lines if _ERROR_LINE.match(line) and "ChildFailedError" not in line]
    return found[0].strip()[:300] if found else ""


def out_of_memory(lines: Sequence[str]) -> bool:
    return any(_OOM.search(line) for line in lines)


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (``PR_SET_PDEATHSIG``); elsewhere nothing.

    A training started by a search worker must not outlive it: a worker killed with SIGKILL cannot stop its
    children, and an orphaned training would go on writing into a trial the next worker retries.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # no prctl: the child may outlive a killed parent, as before
        return


@dataclass
class Finished:
    """How a training ended: ``returncode`` 0 is done; ``stopped``: ``on_epoch`` asked it to stop."""
    returncode: int
    seconds: float
    lines: list[str] = field(default_factory=list, repr=False)   # the log's last lines
    stopped: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.stopped

    @property
    def reason(self) -> str:
        return reason(self.lines) or f"exit status {self.returncode}"


class _Records:
    """New lines of a run's ``metrics.jsonl`` (the trainer rewrites it on resume: a shorter file starts over)."""

    def __init__(self, path: Path) -> None:
        self.path, self.seen = path, 0

    def new(self) -> list[dict[str, Any]]:
        try:
            lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        except OSError:
            return []
        complete = []
        for line in lines:
            try:
                complete.append(json.loads(line))
            except ValueError:  # the line being written
                break
        if len(complete) < self.seen:
            self.seen = 0
        fresh, self.seen = complete[self.seen:], len(complete)
        return fresh


def run_training(cmd: Sequence[str], out_dir: Path, env: dict[str, str] | None = None, *,
                 on_epoch: Callable[[dict[str, Any]], bool] | None = None, tied: bool = False,
                 poll_s: float = 0.5, stop_grace_s: float = 120.0) -> Finished:
    """Run ``cmd`` with its output appended to ``out_dir/train.log``; returns when it ends.

    ``on_epoch(record)`` sees each epoch's record as the run writes it; True stops the run (SIGTERM, then
    SIGKILL after ``stop_grace_s``). ``tied``: the run, and each of its processes, dies with this one.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ if env is None else env)
    if tied:
        env[DIE_WITH_PARENT] = "1"
    records = _Records(out_dir / "metrics.jsonl") if on_epoch is not None else None
    start = time.perf_counter()
    stopped, stopped_at = False, 0.0
    with open(out_dir / LOG, "a") as log:
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=die_with_parent if tied else None)
        try:
            while True:
                try:
                    proc.wait(timeout=poll_s if records is not None else None)
                except subprocess.TimeoutExpired:
                    pass
                if records is not None and not stopped:
                    for record in records.new():
                        if on_epoch(record):
                            stopped, stopped_at = True, time.perf_counter()
                            proc.send_signal(signal.SIGTERM)
                            break
                if proc.returncode is not None:
                    break
                if stopped and time.perf_counter() - stopped_at > stop_grace_s and proc.poll() is None:
                    proc.kill()
        except BaseException:  # this process is being stopped: so is the run
            proc.kill()
            proc.wait()
            raise
    lines = (out_dir / LOG).read_text(errors="replace").strip().splitlines()[-200:]
    return Finished(proc.returncode, time.perf_counter() - start, lines, stopped)


def command_main(prog: str, description: str, add_arguments: Callable[[Any], None], run: Callable[[Any], int],
                 argv: Sequence[str] | None = None) -> int:
    """``python -m trainers.compare`` / ``trainers.search``: parse ``argv``, ``run`` it, and turn one of our
    errors into its one line on stderr and exit status 2 (as ``se-inject`` does)."""
    import argparse

    from se_inject.errors import SEInjectError
    p = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except SEInjectError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 2
