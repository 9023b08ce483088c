"""se_inject.schema: the one validator (types, bounds, checks, extras, origins) and its reference tables."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from se_inject.errors import PolicyError, SEInjectError
from se_inject.schema import INTERNAL, Number, expected, from_dict, reference_table, to_dict, validate


class MyError(SEInjectError, ValueError):
    pass


def _no_negative_keys(pairs):
    return next((f"stage {k} must be >= 0" for k, _ in pairs if k < 0), None)


@dataclass(frozen=True)
class Inner:
    size: tuple[int, int] = field(default=(1, 2), metadata={"min": 1})


@dataclass(frozen=True)
class Extras:
    _what = "extra"
    depth: int = field(default=1, metadata={"min": 1})


@dataclass(frozen=True)
class Thing:
    _what = "thing"
    _extra = "rest"
    _extra_schema = staticmethod(lambda: Extras)
    ratio: Number = field(default=16, metadata={"help": "r", "gt": 0, "finite": True})
    lr: float = field(default=0.1, metadata={"min": 0, "lt": 1})
    per_stage: tuple[tuple[int, Number], ...] = field(default=(), metadata={"gt": 0, "check": _no_negative_keys})
    weights: dict[str, float] = field(default_factory=dict, metadata={"min": 0})
    kinds: tuple[Literal["a", "b"], ...] = ("a",)
    inner: Inner | None = None
    name: str = "x"
    source: str = field(default="<here>", metadata=INTERNAL)
    rest: dict[str, Any] = field(default_factory=dict)


def build(data, **kw):
    return from_dict(Thing, data, source="t.yaml", error=MyError, **kw)


def test_values_convert_and_numbers_keep_their_type():
    t = build({"ratio": 8, "lr": 0, "per_stage": {"5": 32, 4: 2.5}, "weights": {"w": 1}, "kinds": "b",
               "inner": {"size": [3, 4]}, "name": 7, "depth": 2})
    assert (t.ratio, t.lr, t.per_stage, t.weights, t.kinds, t.inner, t.name, t.rest) == \
        (8, 0.0, ((5, 32), (4, 2.5)), {"w": 1.0}, ("b",), Inner((3, 4)), "7", {"depth": 2})
    assert build({"per_stage": [[5, 32]]}).per_stage == ((5, 32),)  # a list of pairs is the same mapping
    assert build({"kinds": ["a", "b", "a"]}).kinds == ("a", "b")      # a list of choices drops repeats


@pytest.mark.parametrize("data,message", [
    ({"ratio": 0}, "t.yaml: key 'ratio' must be a finite number > 0, got 0 (int)"),
    ({"ratio": float("inf")}, "key 'ratio' must be a finite number > 0, got inf (float)"),
    ({"ratio": True}, "key 'ratio' must be a finite number > 0, got True (bool)"),
    ({"ratio": "16"}, "key 'ratio' must be a finite number > 0, got '16' (str)"),
    ({"lr": 1}, "key 'lr' must be a number >= 0 and < 1, got 1 (int)"),
    ({"lr": float("nan")}, "key 'lr' must be a number >= 0 and < 1, got nan (float)"),
    ({"per_stage": {5: -1}}, "key 'per_stage[5]' must be a number > 0, got -1 (int)"),
    ({"per_stage": {-1: 4}}, "t.yaml: key 'per_stage': stage -1 must be >= 0"),
    ({"per_stage": {"x": 4}}, "key 'per_stage' must be a mapping integer -> number > 0, got {'x': 4} (dict)"),
    ({"per_stage": [1, 2]}, "key 'per_stage' must be a mapping integer -> number > 0, got [1, 2] (list)"),
    ({"weights": {"a.b": -1}}, "key 'weights['a.b']' must be a number >= 0, got -1 (int)"),
    ({"weights": {"w": -1}}, "key 'weights.w' must be a number >= 0, got -1 (int)"),
    ({"kinds": ["a", "c"]}, "key 'kinds[1]' must be one of a, b, got 'c' (str)"),
    ({"kinds": "c"}, "key 'kinds' must be a list of a, b, got 'c' (str)"),
    ({"inner": 3}, "key 'inner' must be a mapping of keys (size) or null, got 3 (int)"),
    ({"inner": {"size": [1]}}, "key 'inner.size' must be a list of 2 integers >= 1, got [1] (list)"),
    ({"inner": {"size": [1, 0]}}, "key 'inner.size[1]' must be an integer >= 1, got 0 (int)"),
    ({"inner": {"sise": [1, 2]}}, "key 'inner.sise' is not a thing key (did you mean 'inner.size'?)"),
    ({"ratoi": 2}, "key 'ratoi' is not an extra key (keys here: depth)"),   # unknown keys fall to the extras' schema
    ({"depth": 0}, "key 'depth' must be an integer >= 1, got 0 (int)"),
    ({"source": "x"}, "key 'source' is not an extra key"),  # internal fields are not keys
])
def test_errors_are_one_line_and_name_the_key(data, message):
    with pytest.raises(MyError) as e:
        build(data)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_errors_name_the_origin_of_the_key_or_of_a_parent():
    sources = {"ratio": "--set ratio=0", "inner": "--set inner={size: [0, 1]}"}
    with pytest.raises(MyError, match=r"^--set ratio=0: key 'ratio'"):
        build({"ratio": 0}, sources=sources)
    with pytest.raises(MyError, match=r"^--set inner=\{size: \[0, 1\]\}: key 'inner.size\[0\]'"):
        build({"inner": {"size": [0, 1]}}, sources=sources)
    with pytest.raises(MyError, match=r"^t.yaml: key 'lr'"):
        build({"lr": -1}, sources=sources)


def test_a_document_that_is_not_a_mapping():
    with pytest.raises(MyError, match=r"t.yaml: a thing is a YAML mapping of keys \(ratio, lr, per_stage, weights, ...\), got a list"):
        build([1, 2])
    assert build(None) == Thing()


def test_required_keys():
    @dataclass(frozen=True)
    class Needs:
        r: tuple[int, ...] = field(metadata={"min": 1})
    with pytest.raises(MyError, match=r"t.yaml: key 'r' is missing: it must be a list of integers >= 1"):
        from_dict(Needs, {}, source="t.yaml", error=MyError)


def test_validate_converts_only_the_given_keys():
    assert validate(Thing, {"ratio": 2, "kinds": "b"}, source="s", error=MyError) == {"ratio": 2, "kinds": ("b",), "rest": {}}


def test_checks_may_raise_our_errors():
    def check(name):
        raise PolicyError(f"unknown name {name!r}")
    @dataclass(frozen=True)
    class Named:
        name: str = field(default="a", metadata={"check": check})
    with pytest.raises(MyError, match=r"^t.yaml: key 'name': unknown name 'b'$"):
        from_dict(Named, {"name": "b"}, source="t.yaml", error=MyError)


def test_to_dict_writes_frozen_mappings_as_mappings_and_folds_extras_back():
    t = build({"per_stage": {5: 32}, "kinds": ["b"], "depth": 3})
    d = to_dict(t)
    assert d["per_stage"] == {5: 32} and d["kinds"] == ["b"] and d["depth"] == 3 and "source" not in d
    assert build(d) == t


def test_expected_and_reference_table():
    assert expected(tuple[tuple[int, Number], ...]) == "a mapping integer -> number"
    assert expected(int | None, {"min": 1}) == "an integer >= 1 or null"
    table = reference_table(Thing, [("base", "a name", "", "Start from there.")])
    assert "| `ratio` | `16` | a finite number > 0 | r |" in table
    assert "| `per_stage` | `{}` | a mapping integer -> number > 0 | |" in table
    assert "| `inner` | `null` | a section or null | |" in table and "| `inner.size` | `[1, 2]` |" in table
    assert table.endswith("| `base` | | a name | Start from there. |") and "source" not in table
