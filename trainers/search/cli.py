"""``se-inject search FILE -o DIR`` and ``python -m trainers.search``: a whole search, then its report."""
from __future__ import annotations

import argparse
import shlex
import sys

HELP = ("search SE placements with Optuna (stages x r, objectives error / params / MACs / latency), each trial "
        "trained by the bundled trainer; writes report.md, trials.csv, pareto.csv, pareto.png and best/*.yaml")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="search YAML (see examples/search_tiny.yaml)")
    p.add_argument("-o", "--out", required=True, help="output folder: the study journal, the trials, the report")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="a database the workers of several machines share (postgresql://user@host/db); default: a "
                        "journal file under the output folder")
    p.add_argument("--trials", type=int, default=None, help="the trial budget (overrides the file's trials)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a search-file key, e.g. --set sampler.name=random, --set set.run.epochs=2 (value read as YAML)")


def _command(args: argparse.Namespace) -> str:
    parts = ["se-inject", "search", args.config, "-o", args.out]
    if args.workers != 1:
        parts += ["--workers", str(args.workers)]
    if args.storage:
        from .storage import redact
        parts += ["--storage", redact(args.storage)]
    if args.trials is not None:
        parts += ["--trials", str(args.trials)]
    for item in args.sets:
        parts += ["--set", item]
    return " ".join(shlex.quote(p) for p in parts)


def run(args: argparse.Namespace) -> int:
    from trainers.search.runner import run_search
    outcome = run_search(args.config, args.out, workers=args.workers, storage=args.storage, trials=args.trials,
                         sets=tuple(args.sets), command=_command(args))
    done = ", ".join(f"{n} {s.lower()}" for s, n in sorted(outcome.states.items()))
    print(f"report: {outcome.report} ({done})")
    if outcome.workers_failed:
        print(f"{outcome.workers_failed} worker(s) stopped with an error (above)", file=sys.stderr)
    return 1 if outcome.workers_failed or outcome.failed else 0


def main(argv: list[str] | None = None) -> int:
    from ..launch import command_main
    return command_main("python -m trainers.search", HELP, add_arguments, run, argv)
