"""MkDocs hook: the repository files that the docs link to are published with the site.

A page links to a file outside ``docs/`` the way GitHub reads it, relative to the page
(``[zoo.md](../benchmarks/results/zoo.md)``), so the link works in the repository as well. MkDocs only
knows the files under ``docs/``; this hook adds each linked repository file to the site as
``repo/<path>`` (a Markdown file becomes a page, anything else is copied as it is), follows the links of
the Markdown files it adds in turn, and points the page's link at the copy. A link to a repository file
that does not exist, or to a folder, is a warning, so ``mkdocs build --strict`` (``make docs``) fails on it.
"""
from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path
from urllib.parse import urlsplit

from mkdocs.structure.files import File, Files, InclusionLevel

log = logging.getLogger("mkdocs.hooks.repo_files")   # under "mkdocs": counted by --strict

PREFIX = "repo"                                       # where the copies go in the site
_LINK = re.compile(r"(\]\()([^)\s]+)(\))")
_FENCE = re.compile(r"^(```|~~~)", re.MULTILINE)


def _prose(markdown: str) -> list[tuple[bool, str]]:
    """(is prose, text) pieces: fenced code blocks are left alone."""
    pieces, inside, last = [], False, 0
    for m in _FENCE.finditer(markdown):
        pieces.append((not inside, markdown[last:m.start()]))
        inside, last = not inside, m.start()
    pieces.append((not inside, markdown[last:]))
    return pieces


def _relative(link: str) -> str | None:
    """The path part of a relative link, or None for URLs, anchors and absolute paths."""
    parts = urlsplit(link)
    if parts.scheme or parts.netloc or not parts.path or parts.path.startswith("/"):
        return None
    return parts.path


def _root(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def _target(config, source: Path, link: str) -> Path | None:
    """The repository file a link of ``source`` names when it is outside docs/, else None."""
    path = _relative(link)
    if path is None:
        return None
    target = (source.parent / path).resolve()
    docs = Path(config.docs_dir).resolve()
    if target == docs or docs in target.parents:
        return None                                   # MkDocs checks links inside docs/ itself
    return target


def on_files(files: Files, config) -> Files:
    root = _root(config)
    queue = [Path(f.abs_src_path) for f in files.documentation_pages() if f.abs_src_path]
    seen: set[Path] = set()
    while queue:
        source = queue.pop()
        text = source.read_text(encoding="utf-8")
        for prose, piece in _prose(text):
            if not prose:
                continue
            for m in _LINK.finditer(piece):
                target = _target(config, source, m.group(2))
                if target is None or target in seen:
                    continue
                seen.add(target)
                where = source.relative_to(root) if root in source.parents else source
                if root not in target.parents:
                    log.warning(f"{where}: link '{m.group(2)}' leaves the repository")
                elif target.is_dir():
                    log.warning(f"{where}: link '{m.group(2)}' names a folder; link a file in it")
                elif not target.is_file():
                    log.warning(f"{where}: link '{m.group(2)}' names {target.relative_to(root)}, which does not exist")
                else:
                    uri = f"{PREFIX}/{target.relative_to(root).as_posix()}"
                    files.append(File.generated(config, uri, abs_src_path=str(target),
                                                inclusion=InclusionLevel.NOT_IN_NAV))
                    if target.suffix == ".md":
                        queue.append(target)
    return files


def on_page_markdown(markdown: str, page, config, files: Files) -> str:
    """Point a docs page's links to repository files at their copies under repo/."""
    if page.file.src_uri.startswith(PREFIX + "/") or not page.file.abs_src_path:
        return markdown                               # a copy: its relative links already agree with repo/
    root, source = _root(config), Path(page.file.abs_src_path)
    here = posixpath.dirname(page.file.src_uri)

    def swap(m: re.Match) -> str:
        target = _target(config, source, m.group(2))
        if target is None or not target.is_file() or root not in target.parents:
            return m.group(0)
        parts = urlsplit(m.group(2))
        uri = f"{PREFIX}/{target.relative_to(root).as_posix()}"
        link = posixpath.relpath(uri, here or ".") + (f"#{parts.fragment}" if parts.fragment else "")
        return m.group(1) + link + m.group(3)

    return "".join(_LINK.sub(swap, piece) if prose else piece for prose, piece in _prose(markdown))
