"""``se-inject train``: train a backbone (plain or SE) from a config; see docs/training.md.

    $ se-inject train --config run.yaml --set optim.lr=0.1 --resume auto
"""
from __future__ import annotations

import argparse

HELP = "train a backbone (plain or with SE) from a YAML config, on 1 process or under torchrun"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from trainers.train import add_arguments as add  # argparse only: the trainer loads in run()
    add(parser)


def run(args: argparse.Namespace) -> int:
    from trainers.train import run_from_args  # torch, timm and the trainer load only now
    return run_from_args(args, prog="se-inject train: ")
