"""The ``se-inject`` parser and entry point: one sub-command a module, listed in :data:`COMMANDS`.

    >>> build_parser().parse_args(["plan", "resnet50", "--r", "8"]).r
    8.0
"""
from __future__ import annotations

import argparse
import importlib
import sys


#: command name -> module implementing it.
COMMANDS: dict[str, str] = {name: f"se_inject_cli.commands.{name}" for name in (
    "plan", "apply", "export", "policy", "backbones", "train", "compare", "search", "report", "excitations", "prune",
    "fold")}

#: command -> the extra of the package it needs (:mod:`se_inject._extras`); checked before the command
#: runs, so a missing one is a one-line error naming the extra, not a traceback half-way through.
NEEDS: dict[str, str] = {"export": "onnx", "train": "train", "compare": "train", "search": "search", "report": "train",
                         "excitations": "train", "prune": "prune"}


def build_parser() -> argparse.ArgumentParser:
    from se_inject import __version__  # se_inject/__init__ imports no torch
    parser = argparse.ArgumentParser(prog="se-inject", description="Squeeze-and-Excitation for any backbone.")
    parser.add_argument("--version", action="version", version=f"se-inject {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; our errors (:class:`se_inject.SEInjectError`) print one line and exit with 2."""
    args = build_parser().parse_args(argv)
    from se_inject._extras import require
    from se_inject.errors import SEInjectError  # after parsing: --help never imports the engine
    try:
        if args.command in NEEDS:
            require(NEEDS[args.command], for_=f"se-inject {args.command}")
        return int(args._run(args) or 0)
    except BrokenPipeError:  # `se-inject plan resnet50 | head`
        sys.stderr.close()
        return 0
    except SEInjectError as e:
        # Our errors are one line that says what to change: no traceback.
        print(f"se-inject {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
