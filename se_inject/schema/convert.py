"""Checking and converting: a mapping (a YAML file, ``--set`` overrides) into a frozen dataclass tree,
every key and value checked once, every failure one line that names where the value was set and the key.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal

from ..errors import SEInjectError, did_you_mean
from .fields import _a, _hints, _is_number, _keys, _pairs, _what, expected, flat_keys

__all__ = ["from_dict", "validate", "normalise"]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _sub(label: str, key: Any) -> str:
    """The label of one entry: ``variants.se-r4``, ``r_per_stage[5]``, ``r_by_path['layer4.*']``."""
    if isinstance(key, str) and re.fullmatch(r"[A-Za-z_][\w-]*", key):
        return f"{label}.{key}"
    return f"{label}[{key!r}]"


@dataclasses.dataclass(frozen=True)
class _Context:
    """Where values come from and how a failure is reported."""
    source: str
    error: Callable[[str], Exception]
    what: str
    sources: Mapping[str, str]

    def where(self, key: str) -> str:
        """The origin of a dotted key: its own ``--set``, a parent's (``--set model.se={r: 8}``), or the file."""
        while True:
            if key in self.sources:
                return self.sources[key]
            if "." not in key:
                return self.source
            key = key.rpartition(".")[0]

    def bad(self, where: str, label: str, text: str, value: Any, hint: str = "") -> Exception:
        return self.error(f"{where}: key '{label}' must be {text}, got {_short(value)}{hint or f' ({type(value).__name__})'}")


class _Invalid(Exception):
    """Internal: a value did not convert (the caller words the message)."""

    def __init__(self, label: str, tp: Any, value: Any, hint: str = "") -> None:
        self.label, self.tp, self.value, self.hint = label, tp, value, hint


def _number(value: Any, tp: Any, label: str, meta: Mapping[str, Any]) -> Any:
    raw = value  # messages show the value as written
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _Invalid(label, tp, value)
    if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
        if tp is int or _is_number(tp):
            raise _Invalid(label, tp, value)
        try:
            value = float(value)
        except ValueError:
            raise _Invalid(label, tp, value) from None
    if tp is int:
        if isinstance(value, float):
            if not value.is_integer():
                raise _Invalid(label, tp, value)
            value = int(value)
    elif tp is float:
        value = float(value)
    if (meta.get("finite") and not math.isfinite(value)) or _out_of_bounds(value, meta):
        raise _Invalid(label, tp, raw)
    return value


def _out_of_bounds(v: float, meta: Mapping[str, Any]) -> bool:
    lo, gt, hi, lt = (meta.get(k) for k in ("min", "gt", "max", "lt"))
    return ((lo is not None and not v >= lo) or (gt is not None and not v > gt)
            or (hi is not None and not v <= hi) or (lt is not None and not v < lt))


def _convert(value: Any, tp: Any, label: str, where: str, meta: Mapping[str, Any], ctx: _Context) -> Any:
    """``value`` as ``tp``; raises :class:`_Invalid` naming the innermost failing entry."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in (int, float) or _is_number(tp):
        return _number(value, tp, label, meta)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise _Invalid(label, tp, value)
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            try:
                return _convert(value, options[0], label, where, meta, ctx)
            except _Invalid as e:
                raise (e if e.label != label else _Invalid(label, tp, value, e.hint)) from None
        for option in options:
            try:
                return _convert(value, option, label, where, meta, ctx)
            except _Invalid:
                continue
        raise _Invalid(label, tp, value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise _Invalid(label, tp, value)
        return _build(tp, value, label + ".", ctx)
    if origin is Literal:
        if value in args and type(value) in {type(a) for a in args}:
            return value
        raise _Invalid(label, tp, value, did_you_mean(str(value), [str(a) for a in args]))
    pairs = _pairs(tp)
    if pairs is not None:
        if isinstance(value, Mapping):
            items = list(value.items())
        elif isinstance(value, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
            items = [tuple(p) for p in value]
        else:
            raise _Invalid(label, tp, value)
        return tuple((_key(k, pairs[0], label, tp, value), _convert(v, pairs[1], _sub(label, k), where, meta, ctx))
                     for k, v in items)
    if origin is tuple:
        variadic = len(args) == 2 and args[1] is Ellipsis
        if variadic and not isinstance(value, (list, tuple, Mapping)):
            try:  # a single value is a one-item list; a failure is reported for the key as a whole
                return (_convert(value, args[0], label, where, meta, ctx),)
            except _Invalid as e:
                raise _Invalid(label, tp, value, e.hint) from None
        if not isinstance(value, (list, tuple)) or (not variadic and len(value) != len(args)):
            raise _Invalid(label, tp, value)
        types_ = [args[0]] * len(value) if variadic else list(args)
        out = tuple(_convert(v, t, f"{label}[{i}]", where, meta, ctx) for i, (v, t) in enumerate(zip(value, types_)))
        return tuple(dict.fromkeys(out)) if variadic and typing.get_origin(args[0]) is Literal else out
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise _Invalid(label, tp, value)
        kt, vt = args or (str, Any)
        return {_key(k, kt, label, tp, value): _convert(v, vt, _sub(label, k), where, meta, ctx) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Invalid(label, tp, value)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise _Invalid(label, tp, value)
    if tp is Any:
        return value
    raise TypeError(f"schema: unsupported field type {tp!r} for {label}")


def _key(key: Any, tp: Any, label: str, whole_tp: Any, whole: Any) -> Any:
    """A mapping key as ``tp`` (``'5'`` is stage 5: JSON and some YAML writers quote keys)."""
    if tp is int and isinstance(key, str) and key.isdigit():
        return int(key)
    if tp is str:
        if isinstance(key, str):
            return key
        if isinstance(key, (int, float)) and not isinstance(key, bool):
            return str(key)
    elif tp is int:
        if isinstance(key, int) and not isinstance(key, bool):
            return key
    elif tp is Any:
        return key
    raise _Invalid(label, whole_tp, whole)


def _field(f: dataclasses.Field, tp: Any, value: Any, label: str, ctx: _Context) -> Any:
    """One field's value converted and checked; the error names the key and where it was set."""
    where = ctx.where(label)
    try:
        out = _convert(value, tp, label, where, f.metadata, ctx)
    except _Invalid as e:
        if e.label == label:
            text = expected(tp, f.metadata)
        else:  # one entry of a list or mapping: what that entry takes
            text = expected(e.tp, {k: v for k, v in f.metadata.items() if k != "expected"})
        raise ctx.bad(where, e.label, text, e.value, e.hint) from None
    check = f.metadata.get("check")
    if check is not None and out is not None:
        try:
            message = check(out)
        except SEInjectError as e:
            message = str(e)
        if message:
            raise ctx.error(f"{where}: key '{label}': {message}")
    return out


def _values(cls: type, data: Any, prefix: str, ctx: _Context, required: bool) -> dict[str, Any]:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        names = [f.name for f in _keys(cls)]
        raise ctx.error(f"{ctx.source}: {_a(ctx.what)} is a YAML mapping of keys ({', '.join(names[:4])}, ...), "
                        f"got {_a(type(data).__name__)}")
    hints = _hints(cls)
    fields = {f.name: f for f in _keys(cls)}
    extra_name = getattr(cls, "_extra", None)
    out: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key)
        if key in fields:
            out[key] = _field(fields[key], hints[key], value, prefix + key, ctx)
        elif extra_name:
            extra[key] = value
        else:
            pool = [prefix + k for k in flat_keys(cls)]
            hint = did_you_mean(prefix + key, pool) or did_you_mean(prefix + key, [prefix + n for n in fields])
            raise ctx.error(f"{ctx.where(prefix + key)}: key '{prefix}{key}' is not {_a(ctx.what)} key"
                            f"{hint or ' (keys here: ' + ', '.join(fields) + ')'}")
    if extra_name:
        schema = getattr(cls, "_extra_schema", None)
        if schema is not None and extra:
            inner = schema()
            validate(inner, extra, source=ctx.source, error=ctx.error, what=_what(inner, None), prefix=prefix,
                     sources=ctx.sources)
        out[extra_name] = extra  # as written: the component that takes them reads them again
    if required:
        for name, f in fields.items():
            if name not in out and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ctx.error(f"{ctx.where(prefix + name)}: key '{prefix}{name}' is missing: it must be "
                                f"{expected(hints[name], f.metadata)}")
    return out


def _build(cls: type, data: Any, prefix: str, ctx: _Context) -> Any:
    return cls(**_values(cls, data, prefix, ctx, required=True))


def _context(cls: type, source: str, error: Callable[[str], Exception], what: str | None,
             sources: Mapping[str, str] | None) -> _Context:
    return _Context(source, error, _what(cls, what), dict(sources or {}))


def from_dict(cls: type, data: Mapping[str, Any] | None, *, source: str, error: Callable[[str], Exception],
              what: str | None = None, prefix: str = "", sources: Mapping[str, str] | None = None) -> Any:
    """Build the dataclass ``cls`` from ``data``, checking every key and value once.

    ``source`` names the file in messages; ``sources`` maps dotted keys to another origin (``--set
    optim.lr=x``); ``error`` is the exception type raised (one line); ``what`` names the keys (``config``
    unless ``cls._what`` says otherwise); ``prefix`` is the dotted path of ``data`` in a larger tree.
    """
    return _build(cls, data, prefix, _context(cls, source, error, what, sources))


def validate(cls: type, data: Mapping[str, Any] | None, *, source: str, error: Callable[[str], Exception],
             what: str | None = None, prefix: str = "", sources: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The keys of ``data`` checked against ``cls`` and converted, without building it (for overrides).

        >>> from se_inject.policy import Policy
        >>> from se_inject.errors import PolicyError
        >>> validate(Policy, {"r": 8, "kinds": "residual"}, source="--set", error=PolicyError)
        {'r': 8, 'kinds': ('residual',)}
    """
    return _values(cls, data, prefix, _context(cls, source, error, what, sources), required=False)


def normalise(obj: Any, *, source: str, error: Callable[[str], Exception], what: str | None = None) -> dict[str, Any]:
    """Every key field of a built dataclass checked and converted (for a ``__post_init__``): name -> value."""
    cls = type(obj)
    ctx = _context(cls, source, error, what, None)
    hints = _hints(cls)
    return {f.name: _field(f, hints[f.name], getattr(obj, f.name), f.name, ctx) for f in _keys(cls)}
