"""``python -m trainers.stack``: train K runs as one stacked model (see :mod:`trainers.stack.cli`)."""
import sys

from trainers.stack.cli import main

if __name__ == "__main__":
    sys.exit(main())
