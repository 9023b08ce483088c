"""Stress the end of multi-rank runs: the flows whose launches once aborted at exit (issue 23), many times,
two at a time on the machine's cores (as ``make test``'s two xdist workers run them).

    $ .venv/bin/python benchmarks/teardown_stress.py --rounds 30 --parallel 2 \\
          --out benchmarks/results/teardown_stress.md

Each round runs four flows, each a real ``torchrun`` job of 2 gloo ranks training a ResNet-8 on synthetic data:

- ``kill-resume``: a launch SIGKILLed (whole process group) after its step-3 checkpoint, then ``--resume auto``;
- ``restart``: ``--standalone --max-restarts 1``; rank 1 is SIGKILLed after step 3, torchrun restarts the group;
- ``two-agents``: two torchrun agents of one rank each joining one c10d rendezvous (two "machines");
- ``preempt-resume``: SIGUSR1 to torchrun as training starts (every rank stops, exit 75), then ``--resume auto``.

Every launch that should succeed must exit 0 (the preempted one 75 / torchrun's 1) and no output may hold
``terminate called`` (a rank aborting in C++ teardown). The report counts launches, exit statuses and aborts.
"""
from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from trainer_runs import Launched, _free_port, torchrun, worker_pid  # noqa: E402

ABORT = "terminate called"


def _args(out: Path, *extra: str) -> list[str]:
    sets = [f"run.out_dir={out}", "run.deterministic=true", "run.epochs=2", "run.progress=false", "run.device=cpu",
            "data.dataset=synthetic", "data.synthetic.train_samples=256", "data.synthetic.val_samples=32",
            "data.synthetic.size=[3,16,16]", "data.batch_size=16", "data.workers=0", "model.name=cifar_resnet8",
            "ema.decay=0.9", "checkpoint.every_steps=3", "checkpoint.keep_last=100"]
    return [a for s in sets for a in ("--set", s)] + list(extra)


def _wait_for_line(run: Launched, text: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while text not in run.output():
        if run.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"no {text!r}: {run.output()[-2000:]}")
        time.sleep(0.01)


def kill_resume(tmp: Path) -> list[tuple[str, int, str]]:
    out = tmp / "run"
    first = Launched(torchrun(_args(out)), tmp / "log1")
    first.wait_for_checkpoint(out, 3)
    first.kill()
    first.wait()
    resumed = Launched(torchrun(_args(out, "--resume", "auto")), tmp / "log2")
    return [("resume", resumed.wait(), resumed.output())]


def restart(tmp: Path) -> list[tuple[str, int, str]]:
    out = tmp / "run"
    run = Launched(torchrun(_args(out), launcher=("--standalone", "--max-restarts", "1")), tmp / "log",
                   extra_env={"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"})
    run.wait_for_checkpoint(out, 3)
    os.kill(worker_pid(run.pid, rank=1), signal.SIGKILL)
    return [("restarted", run.wait(), run.output())]


def two_agents(tmp: Path) -> list[tuple[str, int, str]]:
    out = tmp / "run"
    rendezvous = ("--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}",
                  "--rdzv-id", f"stress-{os.getpid()}-{time.monotonic_ns()}")
    agents = [Launched(torchrun(_args(out), nproc=1, launcher=rendezvous), tmp / f"node{i}.log") for i in range(2)]
    return [(f"agent{i}", a.wait(), a.output()) for i, a in enumerate(agents)]


def preempt_resume(tmp: Path) -> list[tuple[str, int, str]]:
    out = tmp / "run"
    args = _args(out, "--set", "checkpoint.every_steps=null")
    run = Launched(torchrun(args, launcher=("--signals-to-handle", "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1")),
                   tmp / "log1")
    _wait_for_line(run, "steps/epoch x 2 epochs")
    os.kill(run.pid, signal.SIGUSR1)
    stopped = ("preempted", run.wait(), run.output())
    resumed = Launched(torchrun(args + ["--resume", "auto"]), tmp / "log2")
    return [stopped, ("resume", resumed.wait(), resumed.output())]


FLOWS = {"kill-resume": kill_resume, "restart": restart, "two-agents": two_agents, "preempt-resume": preempt_resume}


def _expected(step: str, rc: int, output: str) -> bool:
    if step == "preempted":  # the ranks exit 75; torchrun reports a failed worker group (1)
        return rc in (1, 75) and "Preempted: stopped by SIGUSR1" in output
    return rc == 0


def one(flow: str, index: int, root: Path) -> list[dict]:
    tmp = root / f"{flow}-{index}"
    tmp.mkdir(parents=True)
    start = time.monotonic()
    try:
        steps = FLOWS[flow](tmp)
    except Exception as e:  # a flow that could not even be driven counts as a failure
        return [{"flow": flow, "round": index, "step": "driver", "rc": None, "ok": False, "abort": False,
                 "seconds": time.monotonic() - start, "detail": str(e)[-500:]}]
    return [{"flow": flow, "round": index, "step": step, "rc": rc, "ok": _expected(step, rc, output),
             "abort": ABORT in output, "seconds": time.monotonic() - start,
             "detail": "" if _expected(step, rc, output) and ABORT not in output else output[-1500:]}
            for step, rc, output in steps]


def report(rows: list[dict], args: argparse.Namespace, wall: float) -> str:
    import torch
    lines = [f"# Teardown stress: multi-rank flows, {args.parallel} at a time ({date.today().isoformat()})", "",
             "Reproduce:", "", "```", f"{Path(sys.executable).relative_to(REPO) if str(sys.executable).startswith(str(REPO)) else 'python'} "
             f"benchmarks/teardown_stress.py --rounds {args.rounds} --parallel {args.parallel}"
             + (f" --load {args.load}" if args.load else "") + (f" --out {args.out}" if args.out else ""), "```", "",
             f"Machine: {os.cpu_count()} cores, {platform.platform()}; torch {torch.__version__}, gloo on CPU. "
             f"{args.load} extra busy-loop process(es) beside the launches. Wall time {wall / 60:.1f} min.", "",
             "| flow | launch | launches | exit as expected | `terminate called` |", "|---|---|---:|---:|---:|"]
    by = Counter((r["flow"], r["step"]) for r in rows)
    for (flow, step), n in sorted(by.items()):
        sel = [r for r in rows if r["flow"] == flow and r["step"] == step]
        lines.append(f"| {flow} | {step} | {n} | {sum(r['ok'] for r in sel)} | {sum(r['abort'] for r in sel)} |")
    total, ok, aborts = len(rows), sum(r["ok"] for r in rows), sum(r["abort"] for r in rows)
    lines += ["", f"**{ok} of {total} launches exited as expected; {aborts} printed `terminate called`.**", ""]
    bad = [r for r in rows if not r["ok"] or r["abort"]]
    for r in bad[:5]:
        lines += [f"- {r['flow']} round {r['round']} {r['step']}: rc {r['rc']}", "", "```", r["detail"][-1200:], "```"]
    return "\n".join(lines) + "\n"


def _busy() -> None:
    while True:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--flows", default=",".join(FLOWS), help="comma-separated subset of " + ", ".join(FLOWS))
    parser.add_argument("--load", type=int, default=0, help="extra busy-loop processes beside the launches")
    parser.add_argument("--out", default=None, help="write the Markdown report here")
    args = parser.parse_args()
    flows = args.flows.split(",")
    unknown = sorted(set(flows) - set(FLOWS))
    if unknown:
        parser.error(f"unknown flow(s) {unknown}; choose from {sorted(FLOWS)}")
    import multiprocessing
    hogs = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(args.load)]
    for h in hogs:
        h.start()
    jobs = [(flow, i) for i in range(args.rounds) for flow in flows]
    start = time.monotonic()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="teardown-stress-") as root, ThreadPoolExecutor(args.parallel) as pool:
        for result in pool.map(lambda job: one(job[0], job[1], Path(root)), jobs):
            rows += result
            r = result[-1]
            print(f"{r['flow']:<15} round {r['round']:>3}: " + ", ".join(
                f"{x['step']} rc {x['rc']}{' ABORT' if x['abort'] else ''}{'' if x['ok'] else ' UNEXPECTED'}"
                for x in result), flush=True)
    for h in hogs:
        h.terminate()
    text = report(rows, args, time.monotonic() - start)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0 if all(r["ok"] and not r["abort"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
