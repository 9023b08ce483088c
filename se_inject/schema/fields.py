"""What a schema field takes: its type, its keys, and the words for them (``a list of 3 integers``).

    >>> describe_type(tuple[int, int, int]), describe_type(dict[int, float] | None)
    ('a list of 3 integers', 'a mapping integer -> number or null')
"""
from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

__all__ = ["Number", "INTERNAL", "describe_type", "expected", "flat_keys"]

#: a number kept as given: ``16`` stays an int, ``0.5`` a float (bools are not numbers here).
Number = typing.Union[int, float]
#: field metadata of a dataclass field that is not a key (``source: str = field(metadata=INTERNAL)``).
INTERNAL: Mapping[str, Any] = types.MappingProxyType({"internal": True})
_BOUNDS = (("min", ">="), ("gt", ">"), ("max", "<="), ("lt", "<"))


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _keys(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` that are keys (not internal, not the ``_extra`` dict)."""
    extra = getattr(cls, "_extra", None)
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("internal") and f.name != extra]


def _what(cls: type, what: str | None) -> str:
    return what or getattr(cls, "_what", "config")


def _a(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def _optional(tp: Any) -> tuple[Any, bool]:
    """``(T, True)`` for ``T | None``, ``(tp, False)`` otherwise."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args:
            rest = tuple(a for a in args if a is not type(None))
            return (rest[0] if len(rest) == 1 else typing.Union[rest]), True
    return tp, False


def _is_number(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and set(typing.get_args(tp)) == {int, float}


def _pairs(tp: Any) -> tuple[Any, Any] | None:
    """``(K, V)`` when ``tp`` is ``tuple[tuple[K, V], ...]`` (a frozen mapping), else None."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple and len(args) == 2 and args[1] is Ellipsis:
        inner = typing.get_args(args[0])
        if typing.get_origin(args[0]) is tuple and len(inner) == 2 and Ellipsis not in inner:
            return inner
    return None


def describe_type(tp: Any) -> str:
    """A person's name for a field type: ``a number``, ``one of sgd, adamw``, ``a list of 3 integers``."""
    inner, optional = _optional(tp)
    if optional:
        return describe_type(inner) + " or null"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_number(tp):
        return "a number"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    pairs = _pairs(tp)
    if pairs is not None:
        return f"a mapping {_bare(pairs[0])} -> {_bare(pairs[1])}"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            if typing.get_origin(args[0]) is Literal:
                return "a list of " + ", ".join(str(a) for a in typing.get_args(args[0]))
            return f"a list of {_plural(args[0])}"
        return f"a list of {len(args)} {_plural(args[0])}"
    if origin is dict or tp is dict:
        return f"a mapping {_bare(args[0])} -> {_bare(args[1])}" if args and args[1] is not Any else "a mapping"
    if dataclasses.is_dataclass(tp):
        names = [f.name for f in _keys(tp)]
        more = ", ..." if len(names) > 4 or getattr(tp, "_extra", None) else ""
        return f"a mapping of keys ({', '.join(names[:4])}{more})"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", Any: "any value"}.get(tp, str(tp))


def _bare(tp: Any) -> str:
    """``integer`` for ``an integer``: a type named inside another description."""
    text = describe_type(tp)
    return text.split(" ", 1)[1] if text.startswith(("a ", "an ")) else text


def _plural(tp: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings"}.get(tp, "numbers" if _is_number(tp) else describe_type(tp))


def _bounds(meta: Mapping[str, Any]) -> str:
    parts = [f"{sign} {meta[name]}" for name, sign in _BOUNDS if meta.get(name) is not None]
    return " " + " and ".join(parts) if parts else ""


def expected(tp: Any, meta: Mapping[str, Any] | None = None) -> str:
    """What a field takes, in words: its ``expected`` metadata, else its type with bounds.

        >>> expected(float | None, {"min": 0, "finite": True})
        'a finite number >= 0 or null'
    """
    meta = meta or {}
    if meta.get("expected"):
        return meta["expected"]
    inner, optional = _optional(tp)
    text = describe_type(inner)
    if meta.get("finite"):
        text = re.sub(r"\bnumbers?\b", lambda m: "finite " + m.group(0), text, count=1)
    return text + _bounds(meta) + (" or null" if optional else "")


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass inside ``tp`` (``D`` or ``D | None``), or None."""
    for arg in (tp, *typing.get_args(tp)):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def flat_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key a dataclass tree accepts (``['run.epochs', 'optim.lr', ...]``)."""
    keys = []
    hints = _hints(cls)
    for f in _keys(cls):
        key = f"{prefix}{f.name}"
        sub = _dataclass_in(hints[f.name])
        keys += flat_keys(sub, key + ".") if sub else [key]
    return keys
