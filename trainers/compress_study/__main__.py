"""``python -m trainers.compress_study --config study.yaml``: see :mod:`trainers.compress_study`."""
import sys

from trainers.compress_study.cli import main

if __name__ == "__main__":
    sys.exit(main())
