"""trainers.preemption: SIGTERM / SIGUSR1 become a request to stop after the step, with a checkpoint, exit status 75.

(The 2-rank torchrun case, SIGUSR1 to the launcher and a bit-identical resume, is in test_trainer_reliability.py.)
"""
from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time

import pytest

from trainer_runs import Launched, complete_steps
from trainers.checkpoint import load_checkpoint
from trainers.errors import ExitStatus
from trainers.preemption import PreemptionSignals


def test_handlers_are_put_back_and_a_second_signal_changes_nothing():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    with PreemptionSignals() as stop:
        assert stop.installed
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.requested == "SIGTERM"
    assert {sig: signal.getsignal(sig) for sig in before} == before


def _drop_underneath_python(sig: int) -> None:
    """Set ``sig`` to SIG_IGN through glibc, as a native library replaces a handler: Python still reports its own."""
    import ctypes
    libc_signal = ctypes.CDLL(None).signal
    libc_signal.argtypes, libc_signal.restype = (ctypes.c_int, ctypes.c_void_p), ctypes.c_void_p
    libc_signal(sig, 1)  # SIG_IGN


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="replaces a handler through glibc's signal()")
def test_poll_puts_back_a_handler_a_native_library_replaced():
    with PreemptionSignals() as stop:
        _drop_underneath_python(signal.SIGUSR1)  # what a native library can do: here the signal is dropped
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.poll() is None
        os.kill(os.getpid(), signal.SIGUSR1)  # after a poll (the trainer polls once per step) it is heard again
        assert stop.poll() == "SIGUSR1"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="replaces a handler through glibc's signal()")
def test_a_run_hears_sigusr1_after_a_native_library_replaced_its_handler(tmp_path, monkeypatch):
    """The H200 failure (benchmarks/results/gpu_reliability.md) on the CPU: the handler is replaced under Python
    during step 2, the signal comes at step 3; the run must stop there, not train on."""
    from trainers import trainer
    from trainers.train import main
    train_one_epoch, checks = trainer.train_one_epoch, []

    def with_a_library(ctx, batches, progress, num_batches, **kw):
        ask = ctx.stop_requested

        def check() -> bool:
            checks.append(progress.num_updates)
            if len(checks) == 2:
                _drop_underneath_python(signal.SIGUSR1)
            elif len(checks) == 3:
                os.kill(os.getpid(), signal.SIGUSR1)
            return ask()

        ctx.stop_requested = check
        return train_one_epoch(ctx, batches, progress, num_batches, **kw)

    monkeypatch.setattr(trainer, "train_one_epoch", with_a_library)
    sets = [f"run.out_dir={tmp_path}", "run.epochs=1", "run.progress=false", "data.dataset=synthetic",
            "data.synthetic.train_samples=128", "data.synthetic.val_samples=16", "data.synthetic.size=[3,8,8]",
            "data.batch_size=16", "data.workers=0", "model.name=cifar_resnet8"]
    assert main([a for s in sets for a in ("--set", s)]) == ExitStatus.PREEMPTED
    assert len(checks) == 3 and complete_steps(tmp_path) == [3]  # stopped after the signalled step, of 8


def test_outside_the_main_thread_it_stays_out_of_the_way():
    seen = []

    def body():
        with PreemptionSignals() as stop:
            seen.append(stop.installed)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == [False]


@pytest.mark.slow
def test_sigterm_to_se_inject_train_checkpoints_once_and_exits_75(tmp_path):
    out = tmp_path / "run"
    sets = [f"run.out_dir={out}", "run.deterministic=true", "run.epochs=2", "run.progress=false",
            "data.dataset=synthetic", "data.synthetic.train_samples=256", "data.synthetic.val_samples=32",
            "data.synthetic.size=[3,16,16]", "data.batch_size=16", "data.workers=0", "model.name=cifar_resnet8",
            "ema.decay=0.9"]
    cmd = [sys.executable, "-m", "se_inject_cli", "train", *[a for s in sets for a in ("--set", s)]]  # `se-inject train`
    run = Launched(cmd, tmp_path / "log")
    deadline = time.monotonic() + 120
    while "steps/epoch x 2 epochs" not in run.output():  # set up: training starts
        assert run.proc.poll() is None and time.monotonic() < deadline, run.output()[-3000:]
        time.sleep(0.005)
    os.kill(run.pid, signal.SIGTERM)
    assert run.wait() == ExitStatus.PREEMPTED == 75
    last = run.output().strip().splitlines()[-1]
    m = re.fullmatch(rf"se-inject train: Preempted: stopped by SIGTERM after step (\d+) \(epoch 0, batch \1/16\); "
                     rf"checkpoint {out}/checkpoints/step-0*\1; continue with --resume auto", last)
    assert m, run.output()[-3000:]
    step = int(m.group(1))
    assert complete_steps(out) == [step]  # epoch-end checkpoints only: this is the one the signal wrote
    assert load_checkpoint(out / "checkpoints" / f"step-{step:08d}").state["ranks"][0]["progress"]["batch"] == step
    assert "Traceback" not in run.output()
