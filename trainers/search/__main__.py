"""``python -m trainers.search FILE -o DIR``: the same as ``se-inject search``."""
import sys

from .cli import main

sys.exit(main())
