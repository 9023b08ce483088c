"""``se-inject backbones [PATTERN]``: list the backbone names the other commands accept."""
from __future__ import annotations

import argparse
import fnmatch

HELP = "list backbone names (own, timm, torchvision, transformers where installed), optionally filtered by a glob"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="glob, e.g. 'resnet*', 'tv:*' or 'hf:*'")
    p.add_argument("--source", choices=["own", "timm", "tv", "hf"], default=None)


def run(args: argparse.Namespace) -> int:
    from backbones import list_backbones
    names = [n for n in list_backbones(args.source) if fnmatch.fnmatchcase(n, args.pattern)]
    print("\n".join(names))
    return 0 if names else 1
