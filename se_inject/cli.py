"""Deprecated: the command line moved to :mod:`se_inject_cli` (the application layer; the engine
imports neither the CLI nor the trainer). ``se_inject.cli.main`` and ``python -m se_inject.cli``
still work and say where to go.
"""
from __future__ import annotations

import sys
import warnings


def main(argv: list[str] | None = None) -> int:
    warnings.warn("se_inject.cli is deprecated: use se_inject_cli.main (or the se-inject command)",
                  DeprecationWarning, stacklevel=2)
    from se_inject_cli import main as cli_main  # noqa: PLC0415 - the one upward import, on demand
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
