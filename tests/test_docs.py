"""The examples in every module's docstrings run and print what they say (docs cannot drift)."""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import backbones
import se_inject
import se_inject_cli
import trainers


def _modules(package) -> list[str]:
    return [package.__name__] + [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]


@pytest.mark.parametrize("name", _modules(se_inject) + _modules(se_inject_cli) + _modules(trainers) + _modules(backbones))
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed"
