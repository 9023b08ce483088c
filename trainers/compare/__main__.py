"""``python -m trainers.compare --config compare.yaml [--out DIR]`` (same as ``se-inject compare``)."""
import sys

from trainers.compare.cli import main

if __name__ == "__main__":
    sys.exit(main())
