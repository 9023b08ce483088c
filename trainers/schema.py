"""Frozen dataclass trees <-> plain dicts, checked once at the edge.

    >>> from dataclasses import dataclass, field
    >>> @dataclass(frozen=True)
    ... class Optim:
    ...     lr: float = field(default=0.1, metadata={"help": "learning rate", "min": 0})
    >>> from_dict(Optim, {"lr": 0.5}, source="run.yaml")
    Optim(lr=0.5)
    >>> from_dict(Optim, {"lrr": 0.5}, source="run.yaml")
    Traceback (most recent call last):
    ...
    trainers.errors.ConfigError: run.yaml: key 'lrr' is not a config key (did you mean 'lr'?)

Supported field types: ``bool``, ``int``, ``float``, ``str``, ``Literal[...]``, ``tuple[T, ...]``,
fixed ``tuple[T, T]``, ``dict[str, Any]``, nested dataclasses, and ``X | None`` of any of them.
Field ``metadata`` may hold ``help`` (documentation), ``min`` / ``max`` (inclusive bounds) and
``check`` (a function returning an error message or ``None``). A dataclass with a class attribute
``_extra = "name"`` keeps the keys it does not declare in its ``name`` dict field instead of rejecting
them (for options another component validates, such as the SE engine's overrides).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal

from se_inject.errors import did_you_mean

from .errors import ConfigError

__all__ = ["from_dict", "to_dict", "flat_keys", "describe_type", "reference_rows"]

_MISSING = object()


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def flat_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key a dataclass tree accepts (``['run.epochs', 'optim.lr', ...]``)."""
    keys = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        sub = _dataclass_in(_hints(cls)[f.name])
        keys += flat_keys(sub, key + ".") if sub else [key]
    return keys


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass inside ``tp`` (``D`` or ``D | None``), or None."""
    for arg in (tp, *typing.get_args(tp)):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def describe_type(tp: Any) -> str:
    """A person's name for a field type: ``a number``, ``one of sgd, adamw``, ``a list of 3 integers``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [describe_type(a) for a in args if a is not type(None)]
        return " or ".join(inner) + (" or null" if type(None) in args else "")
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(args[0])}"
        return f"a list of {len(args)} {_plural(args[0])}"
    if origin is dict or tp is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping of keys"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _plural(tp: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings"}.get(tp, describe_type(tp))


def _convert(value: Any, tp: Any, key: str, source: str, sources: Mapping[str, str] | None = None) -> Any:
    """``value`` checked against ``tp`` (dataclass sections recurse); ConfigError naming ``key`` if it fails."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    bad = ConfigError(f"{source}: {key} = {value!r} is not valid: expected {describe_type(tp)}")
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise bad
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _convert(value, options[0], key, source, sources)
        for option in options:
            try:
                return _convert(value, option, key, source, sources)
            except ConfigError:
                continue
        raise bad
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: {key} must be a mapping of keys (got {value!r})")
        return from_dict(tp, value, source=source, prefix=key + ".", sources=sources)
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{source}: {key} = {value!r} is not valid: expected {describe_type(tp)}"
                          f"{did_you_mean(str(value), [str(a) for a in args])}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value] if not isinstance(value, (str, Mapping)) and args and args[-1] is Ellipsis else value
        if not isinstance(value, (list, tuple)):
            raise bad
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], key, source) for v in value)
        if len(value) != len(args):
            raise bad
        return tuple(_convert(v, a, key, source) for v, a in zip(value, args))
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise bad
        return {str(k): v for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    if tp is Any:
        return value
    raise TypeError(f"schema: unsupported field type {tp!r} for {key}")


def _check_bounds(value: Any, meta: Mapping[str, Any], tp: Any, key: str, source: str) -> None:
    if value is None:
        return
    items = value if isinstance(value, tuple) else (value,)
    for item in items:
        if not isinstance(item, (int, float)) or isinstance(item, bool):
            continue
        lo, hi = meta.get("min"), meta.get("max")
        if (lo is not None and item < lo) or (hi is not None and item > hi):
            bounds = " and ".join(s for s in (f">= {lo}" if lo is not None else "", f"<= {hi}" if hi is not None else "") if s)
            raise ConfigError(f"{source}: {key} = {value!r} is not valid: expected {describe_type(tp)} {bounds}")
    check: Callable[[Any], str | None] | None = meta.get("check")
    if check is not None:
        message = check(value)
        if message:
            raise ConfigError(f"{source}: {key} = {value!r} is not valid: {message}")


def from_dict(cls: type, data: Mapping[str, Any] | None, *, source: str, prefix: str = "",
              sources: Mapping[str, str] | None = None) -> Any:
    """Build the frozen dataclass ``cls`` from ``data``, checking every key and value once.

    ``source`` names the file in error messages; ``sources`` maps dotted keys to another origin
    (``--set optim.lr=x``) so an error names where the bad value came from.
    """
    data = dict(data or {})
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    extra_field = getattr(cls, "_extra", None)
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key)
        where = (sources or {}).get(prefix + key, source)
        if key not in names or key == extra_field:
            if extra_field:
                extra[key] = value
                continue
            pool = [prefix + k for k in flat_keys(cls)]
            hint = did_you_mean(prefix + key, pool) or did_you_mean(prefix + key, [prefix + n for n in names])
            if not hint:
                hint = f" (keys here: {', '.join(names)})"
            raise ConfigError(f"{where}: key '{prefix}{key}' is not a config key{hint}")
        kwargs[key] = _convert(value, hints[key], prefix + key, where, sources)
    for f in dataclasses.fields(cls):
        value = kwargs.get(f.name, _MISSING)
        if value is _MISSING:
            continue
        _check_bounds(value, f.metadata, hints[f.name], prefix + f.name, (sources or {}).get(prefix + f.name, source))
    if extra_field:
        kwargs[extra_field] = extra
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain dicts/lists (tuples become lists), ``_extra`` keys folded back in."""
    if dataclasses.is_dataclass(obj):
        extra_field = getattr(type(obj), "_extra", None)
        out = {}
        for f in dataclasses.fields(obj):
            if f.name == extra_field:
                continue
            out[f.name] = to_dict(getattr(obj, f.name))
        if extra_field:
            out.update(to_dict(getattr(obj, extra_field)))
        return out
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def reference_rows(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """``(key, type, default, help)`` for every key of a dataclass tree: the config reference's rows."""
    rows = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == getattr(cls, "_extra", None):
            rows.append((f"{prefix}*", "any", "", f.metadata.get("help", "")))
            continue
        key, tp = prefix + f.name, hints[f.name]
        sub = _dataclass_in(tp)
        if sub is not None:
            default = f.default if f.default is not dataclasses.MISSING else None
            if default is None and type(None) in typing.get_args(tp):
                rows.append((key, "section or null", "null", f.metadata.get("help", "")))
            rows += reference_rows(sub, key + ".")
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = ""
        rows.append((key, describe_type(tp), _yaml_scalar(default), f.metadata.get("help", "")))
    return rows


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_yaml_scalar(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{}" if not value else str(value)
    return str(value)
