"""Why a preemption signal is lost under run.cuda_graphs (seen on an H200, gpu_reliability.md): a probe.

Runs the trainer in this process; at every step's stop check it records the C-level SIGUSR1 handler
(glibc sigaction), Python's, and whether the run's flag is set; at step KILL it sends itself SIGUSR1.
With ``--reinstall K`` it re-installs the Python handlers at step K first. It also lists every C-level
handler seen at a step's check, with the shared object that holds it.

    PYTHONPATH=. python benchmarks/signal_probe.py --set run.cuda_graphs=true [--reinstall 25]
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys

sys.path.insert(0, os.getcwd())

libc = ctypes.CDLL(None, use_errno=True)


class _SigAction(ctypes.Structure):  # glibc's struct sigaction on Linux x86_64 / aarch64
    _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_ulong * 16), ("flags", ctypes.c_int),
                ("restorer", ctypes.c_void_p)]


def c_handler(sig: int) -> int:
    old = _SigAction()
    libc.sigaction(sig, None, ctypes.byref(old))
    return old.handler or 0


class _DlInfo(ctypes.Structure):
    _fields_ = [("fname", ctypes.c_char_p), ("fbase", ctypes.c_void_p), ("sname", ctypes.c_char_p),
                ("saddr", ctypes.c_void_p)]


def where(addr: int) -> str:
    """The shared object (and symbol) an address lies in."""
    info = _DlInfo()
    if not addr or not libc.dladdr(ctypes.c_void_p(addr), ctypes.byref(info)):
        return hex(addr)
    name = (info.fname or b"?").decode().rsplit("/", 1)[-1]
    return f"{hex(addr)} {name}:{(info.sname or b'?').decode()}"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--kill", type=int, default=30)
    p.add_argument("--reinstall", type=int, default=None)
    p.add_argument("--set", action="append", default=[])
    a = p.parse_args()
    from trainers import trainer
    from trainers.train import main as train_main
    seen: list[tuple] = []
    handlers: dict[str, list[int]] = {}
    step = {"n": 0}
    original = trainer.train_one_epoch

    def probed(ctx, batches, progress, num_batches, **kw):
        ask = ctx.stop_requested

        def probe() -> bool:
            step["n"] += 1
            n = step["n"]
            if a.reinstall is not None and n == a.reinstall:
                for sig in (signal.SIGTERM, signal.SIGUSR1):
                    signal.signal(sig, signal.getsignal(sig))
            if n == a.kill:
                os.kill(os.getpid(), signal.SIGUSR1)
            handlers.setdefault(where(c_handler(signal.SIGUSR1)), []).append(n)  # before ask(), which puts ours back
            answer = ask()
            if n in (1, 2, 3, 5, 10, a.kill - 1, a.kill, a.kill + 1) or (a.reinstall and n == a.reinstall):
                seen.append((n, where(c_handler(signal.SIGUSR1)), getattr(signal.getsignal(signal.SIGUSR1), "__qualname__",
                             signal.getsignal(signal.SIGUSR1)), answer))
            return answer

        ctx.stop_requested = probe
        try:
            return original(ctx, batches, progress, num_batches, **kw)
        finally:
            ctx.stop_requested = ask

    trainer.train_one_epoch = probed
    print("before the run: C handler", hex(c_handler(signal.SIGUSR1)), flush=True)
    sets = ["run.device=cuda", "run.amp=bf16", "run.channels_last=true", "model.se.policy=paper", "model.se.r=16",
            "data.on_device=true", "data.batch_size=256", "data.limit_train_batches=60", "data.limit_val_batches=2",
            "run.epochs=1", "run.progress=false", "run.out_dir=/tmp/probe", *a.set]
    try:
        rc = train_main(["--config", "fashion-mnist", *[x for s in sets for x in ("--set", s)]])
    except BaseException as e:  # noqa: BLE001 - a probe reports whatever ends the run
        rc = f"{type(e).__name__}: {e}"
    print("run ended:", rc)
    print("step | C-level SIGUSR1 handler | Python's | stop_requested()")
    for row in seen:
        print(*row, sep=" | ")
    print("C-level SIGUSR1 handler found at each step's check (before it is put back):")
    for name, steps in handlers.items():
        print(f"  {name}: {len(steps)} steps, first {steps[0]}, last {steps[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
