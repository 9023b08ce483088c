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
    """A free TCP port for a rendezvous, below the kernel's ephemeral range.

    A port the kernel hands out for ``bind(0)`` can be handed out again, to any outgoing connection (gloo's
    pairs make many), between this call and torchrun's bind: the launch then fails to start, at random, more
    often when two test workers launch at once. Ports below the ephemeral range are only ever taken by an
    explicit bind, so a port found free here stays free unless another launch picks the same one.
    """
    import random
    import socket
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()  # its own seed: tests seed the global generator
    for _ in range(200):
        port = rng.randrange(10000, max(low, 10001))
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free TCP port below the ephemeral range")


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


def assert_same_end(reference: Path, out: Path) -> str:
    """Two runs ended alike: the same last checkpoint, identical final weights, EMA and optimizer state, and the
    same per-epoch loss and errors. Returns the last checkpoint's name."""
    a, b = final_state(reference), final_state(out)
    assert a["step"] == b["step"], f"last checkpoint {a['step']} vs {b['step']}"
    for key in ("model", "ema", "optimizer"):
        assert_identical(a[key], b[key], key)
    for ra, rb in zip(a["history"], b["history"], strict=True):
        keys = ("train_loss", "top1_err", "ema_top1_err")
        assert [ra.get(k) for k in keys] == [rb.get(k) for k in keys], f"history {ra} vs {rb}"
    return a["step"]


# -- launching the way a cluster does, and doing to the processes what a cluster does ---------------------------

def torchrun(args: list[str], nproc: int = 2, launcher: tuple[str, ...] = (), script: str | None = None) -> list[str]:
    """``torchrun --nproc_per_node N [launcher flags] -m trainers.train ARGS`` (or a test ``script`` instead)."""
    if not any(flag.startswith(("--rdzv", "--standalone", "--master_port")) for flag in launcher):
        launcher = ("--master_port", str(_free_port()), *launcher)
    entry = [script] if script else ["-m", "trainers.train"]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), *launcher, *entry, *args]


class Launched:
    """A trainer (or torchrun) process in its own session, its output in a file (a pipe nobody reads fills up)."""

    def __init__(self, cmd: list[str], log: Path, prefix: tuple[str, ...] = (), extra_env: dict[str, str] | None = None
                 ) -> None:
        self.log = log
        self._out = open(log, "wb")
        self.proc = subprocess.Popen([*prefix, *cmd], cwd=REPO, env={**env(), **(extra_env or {})}, stdout=self._out,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = 240) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"still running after {timeout}s:\n{self.output()[-3000:]}") from None
        finally:
            self._out.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def wait_for_checkpoint(self, out_dir: Path, step: int, timeout: float = 120) -> int:
        """Block until a complete checkpoint of step >= ``step`` exists; the newest complete step then."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            steps = complete_steps(out_dir)
            if steps and steps[0] >= step:
                return steps[0]
            if self.proc.poll() is not None:
                raise AssertionError(f"exited ({self.proc.returncode}) before step {step}:\n{self.output()[-3000:]}")
            time.sleep(0.005)
        self.kill()
        raise AssertionError(f"no checkpoint of step {step} within {timeout}s")


def complete_steps(out_dir: Path) -> list[int]:
    """Steps of the complete checkpoints (manifest written) in ``out_dir``, newest first."""
    return sorted((int(p.parent.name.split("-")[1]) for p in (out_dir / "checkpoints").glob("step-*/manifest.json")),
                  reverse=True)


def worker_pid(agent_pid: int, rank: int) -> int:
    """The pid of torchrun's worker with ``RANK=rank`` (a child of the agent), read from /proc."""
    children = []
    for task in Path(f"/proc/{agent_pid}/task").iterdir():
        children += (task / "children").read_text().split()
    for child in children:
        try:
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if f"RANK={rank}".encode() in environ:
            return int(child)
    raise AssertionError(f"torchrun {agent_pid} has no worker of rank {rank} (children {children})")
