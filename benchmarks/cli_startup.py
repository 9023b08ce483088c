"""How long `se-inject --help` takes to start (issue 12: under 0.5 s), beside a bare Python start.

    python benchmarks/cli_startup.py                 # 15 runs each, writes benchmarks/results/cli_startup.md

Each run is a fresh process, as a user's shell starts it; runs of the two commands alternate, and
the medians are reported with the machine's load, since other processes on the machine count.
"""
from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _time(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cli_startup.md")
    args = ap.parse_args(argv)
    script = shutil.which("se-inject", path=str(Path(sys.executable).parent)) or shutil.which("se-inject")
    commands = {"`se-inject --help`": [script, "--help"] if script else [sys.executable, "-m", "se_inject_cli", "--help"],
                "`python -c pass` (the floor)": [sys.executable, "-c", "pass"],
                "`python -c 'import torch'` (what --help avoids)": [sys.executable, "-c", "import torch"]}
    load = os.getloadavg()[0]
    times: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(args.runs):
        for name, cmd in commands.items():
            times[name].append(_time(cmd))
    lines = ["# `se-inject --help` start-up time", "",
             f"- date: {datetime.date.today()}; python {sys.version.split()[0]}; {os.cpu_count()} CPUs; "
             f"load average at start {load:.1f}, at end {os.getloadavg()[0]:.1f}",
             f"- command: `python benchmarks/cli_startup.py --runs {args.runs}` ({args.runs} fresh processes each, "
             "alternating)", "", "| command | median s | min s | max s |", "|---|---|---|---|"]
    for name, ts in times.items():
        lines.append(f"| {name} | {statistics.median(ts):.3f} | {min(ts):.3f} | {max(ts):.3f} |")
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
