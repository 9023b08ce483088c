"""Griffe extension: the project's reST-ish docstrings read as Markdown in the API reference.

The docstrings stay what ``help()`` and the doctests (tests/test_docs.py) read; only their copy for the
site changes: doctest examples (``>>>`` lines and their output) and ``::`` literal blocks become code
blocks, Sphinx roles (:func:`apply`) and double backticks become inline code.
"""
from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|obj|exc|const|ref):`~?([^`]+)`")
_DOUBLE = re.compile(r"``([^`]+)``")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def to_markdown(text: str) -> str:
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith(">>>"):                      # a doctest: it and its output, up to a blank line
            pad = " " * _indent(line)                       # reST indents it; Markdown would read a code block
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i][len(pad):] if lines[i].startswith(pad) else lines[i].strip())
                i += 1
            out += ["", "```pycon", *block, "```", ""]
            continue
        if stripped.endswith("::") and not stripped.startswith(".."):   # a literal block follows
            out.append(line[:-1] if stripped != "::" else "")
            i += 1
            while i < len(lines) and not lines[i].strip():
                i += 1
            base = _indent(line)
            block = []
            while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            if block:
                cut = min(_indent(b) for b in block if b.strip())
                pad = " " * base
                out += ["", pad + "```python", *(pad + b[cut:] for b in block), pad + "```", ""]
            continue
        out.append(_DOUBLE.sub(r"`\1`", _ROLE.sub(r"`\1`", line)))
        i += 1
    return "\n".join(out)


class RestDocstrings(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
