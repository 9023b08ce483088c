"""One version, written once (``se_inject.__version__``), and the public API the CHANGELOG promises
kept in step with the code: ``se_inject.__all__``, the CLI's commands, the presets, the extras."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

import se_inject
from se_inject._extras import EXTRAS
from se_inject_cli.app import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
CHANGELOG = (ROOT / "CHANGELOG.md").read_text()
PROMISE = CHANGELOG.split("## What the version number promises", 1)[1].split("\n## ", 1)[0]


def test_the_version_is_written_once():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "se_inject.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?(\.dev\d+)?", se_inject.__version__)


def test_se_inject_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"se-inject {se_inject.__version__}\n"


def test_the_changelog_has_the_version_and_an_unreleased_section():
    headings = re.findall(r"^## (\S+)", CHANGELOG, re.M)
    assert "Unreleased" in headings and se_inject.__version__ in headings


def _backticked(text: str) -> set[str]:
    return set(re.findall(r"`([^`\s]+)`", text))


def test_the_promised_api_is_the_code():
    listed = _backticked(PROMISE)
    assert set(se_inject.__all__) <= listed, set(se_inject.__all__) - listed
    assert set(COMMANDS) <= listed, set(COMMANDS) - listed
    assert set(se_inject.list_presets()) <= listed
    assert set(EXTRAS) | {"all"} <= listed
