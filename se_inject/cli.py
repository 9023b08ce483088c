"""The ``se-inject`` command line: one sub-command a module, listed in ``COMMANDS``.

    $ se-inject plan resnet50 --r 16
    $ se-inject apply resnet50 --policy paper-no-last-stage -o se_resnet50.pt
    $ se-inject export resnet50 -o se_resnet50.onnx

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``;
command modules import heavy dependencies (torch, timm, the trainer) inside ``run`` so that building
the parser stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import SEInjectError

#: command name -> module implementing it.
COMMANDS: dict[str, str] = {
    "plan": "se_inject.commands.plan",
    "apply": "se_inject.commands.apply",
    "export": "se_inject.commands.export",
    "policy": "se_inject.commands.policy",
    "backbones": "se_inject.commands.backbones",
    "train": "trainers.commands.train",
    "compare": "trainers.commands.compare",
    "report": "trainers.commands.report",
    "excitations": "se_inject.commands.excitations",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="se-inject", description="Squeeze-and-Excitation for any backbone.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
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
