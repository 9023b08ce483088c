"""YAML in: the one reader of policy, config and comparison files, and the one ``KEY=VALUE`` parser.

    >>> from se_inject.errors import PolicyError
    >>> parse_yaml("r: 8\\nexclude: [layer1.*]\\n", "mine.yaml", error=PolicyError, what="policy")
    {'r': 8, 'exclude': ['layer1.*']}
    >>> parse_yaml("r: [8\\n", "mine.yaml", error=PolicyError, what="policy")
    Traceback (most recent call last):
    ...
    se_inject.errors.PolicyError: mine.yaml:2: not valid YAML: expected ',' or ']', but got '<stream end>' (while parsing a flow sequence from line 1)

An override's value is read as YAML; text that is not valid YAML stays a string, and the schema then
says what the key takes (``--set 'layouts=[nchw'`` ends as "key 'layouts' must be a list of nchw,
nhwc, nlc, got '[nchw'", not as a YAML parser's traceback):

    >>> parse_override("layouts=[nchw, nlc]", error=PolicyError), parse_override("layouts=[nchw", error=PolicyError)
    (('layouts', ['nchw', 'nlc']), ('layouts', '[nchw'))
    >>> format_override("model.se", {"policy": "paper", "r": 16})
    'model.se={policy: paper, r: 16}'
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

__all__ = ["read_yaml", "parse_yaml", "parse_override", "format_override"]


def _a(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def parse_yaml(text: str, source: str, *, error: Callable[[str], Exception], what: str,
               keys: Iterable[str] = ()) -> dict[str, Any]:
    """The mapping a YAML text holds (empty: ``{}``); a syntax error or a non-mapping is ``error``,
    one line naming ``source`` and the line (``what`` and ``keys`` word the non-mapping case)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(e, "problem", None) or e
        context, context_mark = getattr(e, "context", None), getattr(e, "context_mark", None)
        if context and context_mark is not None:
            problem = f"{problem} ({context} from line {context_mark.line + 1})"
        raise error(f"{where}: not valid YAML: {_one_line(problem)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        listed = list(keys)[:4]
        inside = f" ({', '.join(listed)}, ...)" if listed else ""
        raise error(f"{source}: {_a(what)} is a YAML mapping of keys{inside}, got {_a(type(data).__name__)}")
    return data


def read_yaml(path: str | os.PathLike[str], *, error: Callable[[str], Exception], what: str,
              keys: Iterable[str] = ()) -> dict[str, Any]:
    """The mapping of a YAML file; an unreadable file is ``error`` too ("cannot read the policy file: ...")."""
    source = os.fspath(path)
    try:
        text = Path(source).read_text()
    except OSError as e:
        raise error(f"{source}: cannot read the {what} file: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise error(f"{source}: cannot read the {what} file: not text ({e.reason})") from None
    return parse_yaml(text, source, error=error, what=what, keys=keys)


def parse_override(item: str, *, error: Callable[[str], Exception], example: str = "key=value") -> tuple[str, Any]:
    """``("key", value)`` of ``KEY=VALUE``, the value read as YAML (an empty one is null; text that is not
    YAML stays a string). No ``=`` or no key is ``error``: ``--set 'r': expected key=value, e.g. --set r=8``."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise error(f"--set {item!r}: expected key=value, e.g. --set {example}")
    if not raw.strip():
        return key, None
    try:
        return key, yaml.safe_load(raw)
    except yaml.YAMLError:
        return key, raw


def format_override(key: str, value: Any) -> str:
    """``KEY=VALUE`` that :func:`parse_override` reads back as ``(key, value)``."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30).strip()
    return f"{key}={text.removesuffix('...').strip()}"
