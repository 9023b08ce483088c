"""``se-inject report DIR``: rebuild a comparison's report.md, results.csv and PNGs from its runs, or a search's
report from its study (a folder holding ``search.json``)."""
from __future__ import annotations

import argparse

HELP = ("rebuild a comparison's report (report.md, results.csv, curve PNGs) from its run directories, or a search's "
        "(report.md, trials.csv, pareto.csv/png, best/) from its study")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="the comparison's output folder")
    p.add_argument("--title", default=None)
    p.add_argument("--no-latency", action="store_true", help="skip the inference-latency measurement")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path
    if (Path(args.dir) / "search.json").exists():
        from trainers.search.runner import rebuild_report
        print(f"report: {rebuild_report(Path(args.dir))}")
        return 0
    from trainers.compare import write_report
    print(f"report: {write_report(args.dir, title=args.title, latency=not args.no_latency)}")
    return 0
