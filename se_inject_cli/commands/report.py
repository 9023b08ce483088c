"""``se-inject report DIR``: rebuild a comparison's report.md, results.csv and PNGs from its runs."""
from __future__ import annotations

import argparse

HELP = "rebuild a comparison's report (report.md, results.csv, curve PNGs) from its run directories"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="the comparison's output folder")
    p.add_argument("--title", default=None)
    p.add_argument("--no-latency", action="store_true", help="skip the inference-latency measurement")


def run(args: argparse.Namespace) -> int:
    from trainers.compare import write_report
    print(f"report: {write_report(args.dir, title=args.title, latency=not args.no_latency)}")
    return 0
