"""Helpers for tests that launch the trainer as real processes (python -m / torchrun) and read what it wrote."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("OMP_NUM_THREADS", "1")  # ranks share the 2 CI cores; also what torchrun sets
    return e


def command(args: list[str], nproc: int = 1) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "trainers.train", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(_free_port()),
            "-m", "trainers.train", *args]


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: list[str], nproc: int = 1, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run the trainer to completion; fail the test with its output if it fails."""
    p = subprocess.run(command(args, nproc), cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"trainer exited {p.returncode}\nSTDOUT:\n{p.stdout[-3000:]}\nSTDERR:\n{p.stderr[-3000:]}"
    return p


def run_and_kill(args: list[str], out_dir: Path, kill_after_step: int, nproc: int = 1, timeout: float = 240) -> int:
    """Start the trainer, SIGKILL its whole process group once a checkpoint past ``kill_after_step`` is complete.

    Returns the newest complete checkpoint step seen before the kill.
    """
    proc = subprocess.Popen(command(args, nproc), cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own process group: torchrun and every rank
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            steps = [int(p.parent.name.split("-")[1]) for p in (out_dir / "checkpoints").glob("step-*/manifest.json")]
            if steps and max(steps) >= kill_after_step:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return max(steps)
            if proc.poll() is not None:
                raise AssertionError(f"trainer ended (rc {proc.returncode}) before step {kill_after_step}:\n"
                                     f"{proc.stdout.read().decode()[-3000:]}")
            time.sleep(0.01)
        raise AssertionError(f"no checkpoint past step {kill_after_step} within {timeout}s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def final_state(out_dir: Path) -> dict[str, object]:
    """Final weights, EMA weights, and the last checkpoint's optimizer state and history."""
    from safetensors.torch import load_file
    from trainers.checkpoint import list_checkpoints, load_checkpoint
    last = load_checkpoint(list_checkpoints(out_dir / "checkpoints")[0])
    ema = out_dir / "ema.safetensors"
    return {"model": load_file(str(out_dir / "model.safetensors")),
            "ema": load_file(str(ema)) if ema.exists() else None,
            "optimizer": last.state["optimizer"], "history": last.state["history"], "step": last.path.name}


def assert_identical(a: object, b: object, path: str = "") -> None:
    """Exact (atol = 0) equality of nested dicts/lists of tensors and numbers."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), f"{path}: max |diff| {(a.double() - b.double()).abs().max().item():.3g}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys differ"
        for k in a:
            assert_identical(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"
