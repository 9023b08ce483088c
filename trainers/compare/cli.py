"""``python -m trainers.compare`` and ``se-inject compare``: train baseline and SE variants, then write the report."""
from __future__ import annotations

import argparse

HELP = "train a matrix of variants (baseline, SE r, placements) x seeds and write report.md / results.csv / PNGs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", required=True, help="comparison YAML (see examples/fashion_mnist_compare.yaml)")
    p.add_argument("--out", default=None, help="output folder (default: the file's out_dir)")
    p.add_argument("--dry-run", action="store_true", help="validate and list the runs, train nothing")


def run(args: argparse.Namespace) -> int:
    from trainers.compare import load_spec, run_matrix, write_report
    from trainers.compare.runner import RunState, launch_plan, launch_units, status_of
    spec = load_spec(args.config, args.out)
    if args.dry_run:
        for r in spec.runs:
            print(f"{r.key:50s} {status_of(r.out_dir):12s} {r.out_dir}")
        plan = launch_plan(spec)
        todo = [r for r in spec.runs if status_of(r.out_dir) is not RunState.DONE]
        units, note = launch_units(spec, todo, plan.gpu)
        for u in units:
            if u.stacked:
                print(f"stacked: {u.name}")
        print(f"{len(spec.runs)} runs; launch here: {plan.describe()}; {note}")
        return 0
    statuses = run_matrix(spec)
    report = write_report(spec.out_dir, title=spec.name)
    failed = [s for s in statuses if s.state is RunState.FAILED]
    print(f"report: {report}" + (f" ({len(failed)} run(s) failed, shown in the report)" if failed else ""))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    from ..launch import command_main
    return command_main("python -m trainers.compare", HELP, add_arguments, run, argv)
