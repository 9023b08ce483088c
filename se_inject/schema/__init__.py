"""Frozen dataclass trees <-> plain mappings, checked once at the edge: the one validator behind
policies, trainer configs and comparison files. The caller picks the error type.

    >>> from dataclasses import dataclass, field
    >>> from se_inject.errors import PolicyError
    >>> @dataclass(frozen=True)
    ... class Optim:
    ...     lr: float = field(default=0.1, metadata={"help": "learning rate", "min": 0})
    ...     betas: tuple[float, float] = (0.9, 0.999)
    >>> from_dict(Optim, {"lr": 0.5, "betas": [0.8, 0.9]}, source="run.yaml", error=PolicyError)
    Optim(lr=0.5, betas=(0.8, 0.9))
    >>> from_dict(Optim, {"lrr": 0.5}, source="run.yaml", error=PolicyError)
    Traceback (most recent call last):
    ...
    se_inject.errors.PolicyError: run.yaml: key 'lrr' is not a config key (did you mean 'lr'?)
    >>> from_dict(Optim, {"lr": -1}, source="run.yaml", error=PolicyError)
    Traceback (most recent call last):
    ...
    se_inject.errors.PolicyError: run.yaml: key 'lr' must be a number >= 0, got -1 (int)

Field types: ``bool``, ``int``, ``float`` (ints become floats), :data:`Number` (``int | float``, kept
as given), ``str``, ``Any``, ``Literal[...]``, ``tuple[T, ...]`` (a single value is a one-item list; a
list of ``Literal`` choices drops repeats), fixed ``tuple[A, B]``, ``tuple[tuple[K, V], ...]`` (a
frozen mapping: read from a mapping or a list of pairs, written back as a mapping), ``dict[K, V]``,
nested dataclasses, and unions such as ``X | None``.

Field ``metadata``: ``help`` (documentation), ``expected`` (what the key takes, in words, instead of
the text made from the type), ``min`` / ``max`` (inclusive) and ``gt`` / ``lt`` (exclusive) bounds and
``finite`` (no inf, no nan) on every number in the value, ``check`` (a function of the converted value
returning an error message, or raising one of our errors), ``internal`` (a dataclass field that is not
a key, such as ``Policy.source``). Class attributes: ``_what`` names the keys in messages (``policy``:
"key 'rr' is not a policy key"); ``_extra = "name"`` keeps the keys the class does not declare in its
``name`` dict, checked against the dataclass that ``_extra_schema()`` returns when it has one.

Every error is one line: where the value came from (a file, ``--set r=0``), the dotted key, what it
takes and what it got.
"""
from __future__ import annotations

from .convert import from_dict, normalise, validate
from .fields import INTERNAL, Number, describe_type, expected, flat_keys
from .write import reference_rows, reference_table, to_dict

__all__ = ["Number", "from_dict", "validate", "normalise", "to_dict", "flat_keys", "describe_type", "expected",
           "reference_rows", "reference_table", "INTERNAL"]
