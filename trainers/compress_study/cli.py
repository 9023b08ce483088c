"""``python -m trainers.compress_study``: run the compression study, then write its report."""
from __future__ import annotations

import argparse
import sys

HELP = ("train SE models once, prune them by excitation / magnitude / random to MAC targets (fine-tuned, several "
        "seeds), fold near-constant SE blocks, and report accuracy vs MACs and latency")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", required=True, help="study YAML (see examples/fashion_mnist_compress.yaml)")
    p.add_argument("--out", default=None, help="output folder (default: the file's out_dir)")
    p.add_argument("--report", default=None, help="report path without suffix (default: OUT/report): writes .md, "
                   "_results.csv, _macs.png, _latency.png")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from the finished jobs")
    p.add_argument("--dry-run", action="store_true", help="validate the file and list the jobs")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from trainers.compress_study import load_spec, run_study
    from trainers.compress_study.jobs import plan_jobs, result_path
    from trainers.compress_study.report import write_report
    spec = load_spec(args.config, args.out)
    if args.dry_run:
        for job in plan_jobs(spec):
            done = result_path(Path(spec.out_dir), job).exists()
            print(f"{job.backbone:20s} {job.name:40s} {'done' if done else 'to run'}")
        return 0
    results = [] if args.report_only else run_study(spec)
    report = write_report(spec, Path(args.report) if args.report else None, command=getattr(args, "command", None))
    failed = [r for r in results if "error" in r]
    print(f"report: {report}" + (f" ({len(failed)} job(s) failed, listed in the report)" if failed else ""))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    from se_inject.errors import SEInjectError
    p = argparse.ArgumentParser(prog="python -m trainers.compress_study", description=HELP)
    add_arguments(p)
    args = p.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv  # the study's command line, as the report quotes it
    args.command = " ".join(["python -m trainers.compress_study", *(a for a in given if a != "--report-only")])
    try:
        return run(args)
    except SEInjectError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 2
