"""``python -m trainers.search FILE -o DIR [--workers N] ...`` (same as ``se-inject search``)."""
import sys

from trainers.search.cli import main

if __name__ == "__main__":
    sys.exit(main())
