"""The documentation runs: every ```python block of README.md and docs/ executes, the cheap ``se-inject``
commands of its shell blocks succeed, the site builds with warnings as errors, and the API reference
names everything in the packages' ``__all__`` (docs cannot drift from the code)."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)

# Subcommands cheap enough to run from the shell blocks (in this process): they plan or list, never train.
CHEAP = {"plan", "policy", "backbones", "--version", "--help"}


def _blocks(page: Path, language: str) -> list[str]:
    return [m.group(2) for m in _FENCE.finditer(page.read_text()) if m.group(1) == language]


def _name(page: Path) -> str:
    return page.relative_to(REPO).as_posix()


def test_the_readme_quick_start_is_the_docs_one():
    """The README's Python is the quick start page's, which runs below (so it is not run twice)."""
    readme = _blocks(REPO / "README.md", "python")
    assert readme, "README.md lost its quick start"
    assert readme == _blocks(REPO / "docs" / "quickstart.md", "python"), \
        "README.md's python blocks must be docs/quickstart.md's (put other examples in docs/)"


@pytest.mark.parametrize("page", [p for p in PAGES[1:] if _blocks(p, "python")], ids=_name)
def test_python_blocks_run(page, tmp_path, monkeypatch):
    """A page's blocks run in order in one namespace, in an empty folder (what they write stays there)."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for i, code in enumerate(_blocks(page, "python"), 1):
        exec(compile(code, f"{_name(page)}, python block {i}", "exec"), namespace)


def _commands() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for block in _blocks(page, "bash") + _blocks(page, "console"):
            for line in block.splitlines():
                line = line.split(" #")[0].strip().removeprefix("$ ")
                if line.startswith("se-inject ") and line.split()[1] in CHEAP:
                    found.append((_name(page), line))
    return found


def test_the_docs_show_cheap_commands():
    assert any(line.startswith("se-inject plan ") for _, line in _commands())


@pytest.mark.parametrize("page, line", _commands(), ids=[line for _, line in _commands()])
def test_cheap_commands_run(page, line, capsys, monkeypatch, tmp_path):
    from se_inject_cli import main
    monkeypatch.chdir(tmp_path)
    try:
        status = main(shlex.split(line)[1:])
    except SystemExit as done:                  # argparse's --help and --version exit
        status = done.code
    out, err = capsys.readouterr()
    assert status in (0, None), f"{page}: `{line}` exited {status}: {err}"
    assert out.strip(), f"{page}: `{line}` printed nothing"


def _documented(page: str) -> set[str]:
    return {m.rsplit(".", 1)[-1] for m in re.findall(r"^::: (\S+)$", (REPO / "docs" / "api" / page).read_text(), re.M)}


@pytest.mark.parametrize("module, page", [("se_inject", "se_inject.md"), ("se_inject.search", "search.md"),
                                          ("backbones", "backbones.md"), ("trainers", "trainers.md")])
def test_the_api_reference_names_everything_in_all(module, page):
    import importlib
    missing = set(importlib.import_module(module).__all__) - _documented(page)
    assert not missing, f"docs/api/{page} lacks {sorted(missing)}: add a '::: {module}...' line for each"


def _build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          cwd=config.parent, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})


def test_the_site_builds_with_warnings_as_errors(tmp_path):
    """What `make docs` does (a few seconds): a broken link, page or docstring fails here, not only in CI."""
    out = _build(REPO / "mkdocs.yml", tmp_path / "site")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "site" / "repo" / "benchmarks" / "results" / "zoo" / "index.html").exists()
    assert "se_inject.api.apply" in (tmp_path / "site" / "api" / "se_inject" / "index.html").read_text()


def test_a_link_to_a_missing_repository_file_fails_the_build(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "results.md").write_text("# results\n")
    (tmp_path / "docs" / "index.md").write_text("[ok](../results.md) and [gone](../benchmarks/results/nope.md)\n")
    (tmp_path / "mkdocs.yml").write_text(f"site_name: t\nhooks: [{REPO / 'docs' / '_hooks' / 'repo_files.py'}]\n")
    out = _build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert out.returncode != 0
    assert "docs/index.md: link '../benchmarks/results/nope.md' names benchmarks/results/nope.md, which does not exist" \
        in out.stderr
    assert "'../results.md'" not in out.stderr                                   # the good link is not reported


def _loader(block: str):
    """The loader that reads a YAML block of the docs, recognised by its keys (None: not a file of ours)."""
    import yaml

    keys = set(yaml.safe_load(block) or {})
    if {"space", "objectives"} & keys:
        from trainers.search.spec import load_search
        return load_search
    if {"variants", "backbones"} & keys:
        from trainers.compare.spec import load_spec
        return load_spec
    if {"model", "data", "optim", "run"} & keys:
        from trainers.config import load_config
        return load_config
    if {"base", "r", "r_per_stage", "kinds", "exclude"} & keys:
        from se_inject import load_policy
        return load_policy
    return None


_YAML = [(page, i, block) for page in PAGES for i, block in enumerate(_blocks(page, "yaml"), 1)]


@pytest.mark.parametrize("page,i,block", _YAML, ids=[f"{_name(p)}:{i}" for p, i, _ in _YAML])
def test_yaml_blocks_are_valid_files(page, i, block, tmp_path, monkeypatch):
    """Every YAML example (a policy, a trainer config, a compare spec, a search) loads through the same
    validator its command uses: a renamed key in the code fails here, not in a reader's terminal."""
    load = _loader(block)
    assert load is not None, f"{_name(page)}, yaml block {i}: not a policy, trainer config, compare spec or search"
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "block.yaml"
    path.write_text(block)
    load(str(path))
