"""``se-inject search FILE -o DIR``: an Optuna search over SE placements, trained by the bundled trainer."""
from __future__ import annotations

import argparse

HELP = ("search SE placements with Optuna (stages x r; error, params, MACs, latency), each trial trained by the "
        "bundled trainer: report.md, trials.csv, pareto.csv/png, best/*.yaml")

__all__ = ["HELP", "add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from trainers.search.cli import add_arguments as add  # argparse only: Optuna and the trainer load in run()
    add(p)


def run(args: argparse.Namespace) -> int:
    from trainers.search.cli import run as run_search
    return run_search(args)
