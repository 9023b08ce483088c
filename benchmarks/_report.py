"""What every benchmark does last: print its Markdown report and, with ``--out``, write it whole.

    >>> from benchmarks._report import emit
    >>> text = emit(["# title", "", "| a |"], None)   # prints; writes nothing
    # title
    <BLANKLINE>
    | a |
    <BLANKLINE>
"""
from __future__ import annotations

from pathlib import Path

from se_inject.files import write_atomically


def emit(lines: list[str], out: Path | None) -> str:
    """Print ``lines`` as one text and, when ``out`` is given, write it there atomically (a report
    cut off half-way never replaces the last good one). Returns the text."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(out, lambda tmp: Path(tmp).write_text(text))
    return text
