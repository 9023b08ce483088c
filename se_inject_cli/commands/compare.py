"""``se-inject compare --config compare.yaml``: train baseline and SE variants, then write the report."""
from __future__ import annotations

import argparse

HELP = "train a matrix of variants (baseline, SE r, placements) x seeds and write report.md / results.csv / PNGs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from trainers.compare.cli import add_arguments as add  # argparse only: the trainer loads in run()
    add(p)


def run(args: argparse.Namespace) -> int:
    from trainers.compare.cli import run as run_comparison
    return run_comparison(args)
