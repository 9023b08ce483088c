"""``python -m trainers.train`` / ``torchrun ... -m trainers.train``: train from a config.

    $ python -m trainers.train                                   # Fashion-MNIST, ResNet-20, defaults
    $ python -m trainers.train --config senet-paper --set data.root=/data/imagenet
    $ torchrun --nproc_per_node=2 -m trainers.train --config run.yaml --resume auto

Errors in the config, the data or a checkpoint are printed as one line (by rank 0) and exit with
status 2; a non-finite step with ``run.nonfinite=stop`` exits 3, a run stopped by SIGTERM or SIGUSR1
(with its checkpoint written) exits 75: see :class:`trainers.errors.ExitStatus`.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

__all__ = ["add_arguments", "main", "run_from_args"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=None,
                        help="YAML config or recipe name (fashion-mnist, senet-paper); default: built-in defaults")
    parser.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set optim.lr=0.1 (repeatable; value parsed as YAML)")
    parser.add_argument("--resume", default=None, metavar="auto|PATH",
                        help="auto: newest complete checkpoint in run.out_dir (or start fresh); or a checkpoint directory")


def run_from_args(args: argparse.Namespace, prog: str = "") -> int:
    """Train as ``args`` say; the exit status. A preemption or a non-finite stop is one line on stderr (rank 0)."""
    from .config import load_config
    from .errors import ExitStatus, NonFiniteError, Preempted
    from .trainer import train

    overrides = list(args.overrides)
    if args.resume is not None:
        overrides.append(f"checkpoint.resume={args.resume}")
    cfg = load_config(args.config, overrides)
    try:
        train(cfg)
    except (Preempted, NonFiniteError) as e:
        _print_once(f"{prog}{type(e).__name__}: {e}")
        return ExitStatus.PREEMPTED if isinstance(e, Preempted) else ExitStatus.NONFINITE
    return ExitStatus.OK


def _print_once(line: str) -> None:
    if os.environ.get("RANK", "0") == "0":  # every rank stops the same way; one line is enough
        print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    from se_inject.errors import SEInjectError

    from .launch import DIE_WITH_PARENT, die_with_parent
    if os.environ.get(DIE_WITH_PARENT) == "1":  # started by a search worker (each rank, under torchrun)
        die_with_parent()

    parser = argparse.ArgumentParser(prog="python -m trainers.train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_from_args(args)
    except SEInjectError as e:  # every rank fails the same way
        _print_once(f"{type(e).__name__}: {e}")
        return 2


class _CallableModule(type(sys)):
    """``trainers.train`` names both this module (``python -m trainers.train``) and the function
    ``trainers.train(cfg)``. Importing the module rebinds the package's attribute to the module, so a
    later ``from trainers import train`` gets the module: it is callable, the same call as the function."""

    def __call__(self, cfg: Any) -> Any:
        from .trainer import train
        return train(cfg)


if __name__ == "__main__":
    sys.exit(main())
else:
    sys.modules[__name__].__class__ = _CallableModule
