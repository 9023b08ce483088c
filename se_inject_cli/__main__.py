"""``python -m se_inject_cli ...``: the same as the ``se-inject`` console script."""
import sys

from .app import main

if __name__ == "__main__":
    sys.exit(main())
