"""Writing a dataclass tree back out: plain mappings (what a YAML file of it holds) and the Markdown
reference tables the docs carry (docs/policy.md, docs/training.md: generated, so they cannot drift from the fields).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from .fields import _dataclass_in, _hints, _keys, _optional, _pairs, expected

__all__ = ["to_dict", "reference_rows", "reference_table"]


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain dicts and lists (frozen mappings become dicts, ``_extra`` keys folded back
    in, internal fields left out): what a YAML file of it holds."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        cls = type(obj)
        hints = _hints(cls)
        out: dict[str, Any] = {}
        for f in _keys(cls):
            value = getattr(obj, f.name)
            if _pairs(_optional(hints[f.name])[0]) is not None and value is not None:
                out[f.name] = {k: to_dict(v) for k, v in value}
            else:
                out[f.name] = to_dict(value)
        extra = getattr(cls, "_extra", None)
        if extra:
            out.update(to_dict(getattr(obj, extra)))
        return out
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def reference_rows(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """``(key, expected, default, help)`` for every key of a dataclass tree: a reference table's rows."""
    rows = []
    hints = _hints(cls)
    for f in _keys(cls):
        key, tp = prefix + f.name, hints[f.name]
        sub = _dataclass_in(tp)
        if sub is not None:
            if f.default is None:
                rows.append((key, "a section or null", "null", f.metadata.get("help", "")))
            rows += reference_rows(sub, key + ".")
            continue
        if f.default is not dataclasses.MISSING:
            default = _yaml(f.default, tp)
        elif f.default_factory is not dataclasses.MISSING:
            default = _yaml(f.default_factory(), tp)
        else:
            default = ""
        rows.append((key, expected(tp, f.metadata), default, f.metadata.get("help", "")))
    extra = getattr(cls, "_extra", None)
    if extra:
        f = next(f for f in dataclasses.fields(cls) if f.name == extra)
        rows.append((f"{prefix}*", f.metadata.get("expected", "any value"), "", f.metadata.get("help", "")))
    return rows


def reference_table(cls: type, rows: Iterable[tuple[str, str, str, str]] = ()) -> str:
    """The Markdown table of every key of ``cls`` (and ``rows``, added at the end).

        >>> from dataclasses import dataclass, field
        >>> @dataclass(frozen=True)
        ... class Run:
        ...     epochs: int = field(default=10, metadata={"help": "Epochs to train.", "min": 1})
        >>> print(reference_table(Run))
        | key | default | expected | meaning |
        |---|---|---|---|
        | `epochs` | `10` | an integer >= 1 | Epochs to train. |
    """
    lines = ["| key | default | expected | meaning |", "|---|---|---|---|"]
    for key, text, default, meaning in [*reference_rows(cls), *rows]:
        cells = [f"`{key}`", f"`{default}`" if default else "", text, meaning]
        lines.append(f"| {' | '.join(cells)} |".replace("|  |", "| |"))
    return "\n".join(lines)


def _yaml(value: Any, tp: Any = None) -> str:
    """A default as it reads in YAML (``true``, ``null``, ``[nchw, nhwc]``, ``{}``)."""
    if tp is not None and _pairs(_optional(tp)[0]) is not None and isinstance(value, tuple):
        return "{" + ", ".join(f"{_yaml(k)}: {_yaml(v)}" for k, v in value) + "}"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_yaml(k)}: {_yaml(v)}" for k, v in value.items()) + "}"
    return str(value)
