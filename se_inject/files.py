"""Files that appear whole or not at all, with the permissions a plain ``open`` would give them.

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "weights.txt"
    >>> write_atomically(out, lambda tmp: pathlib.Path(tmp).write_text("ok"))
    >>> out.read_text(), oct(out.stat().st_mode & 0o777) == oct(0o666 & ~current_umask())
    ('ok', True)
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["write_atomically", "write_folder_atomically", "current_umask", "publish"]


def current_umask() -> int:
    """The process's umask (read without changing it for long: os.umask sets and returns it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Rename a finished temporary file over ``path``, with the mode a new file gets under the umask
    (temporary files are created 0600; a model file others can read should not be)."""
    os.chmod(tmp, 0o666 & ~current_umask())
    os.replace(tmp, path)


def write_atomically(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """``write(tmp)`` into a temporary file next to ``path``, then rename it into place: a failure
    or a kill leaves ``path`` as it was (absent, or the previous file), never half-written."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_folder_atomically(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` fills a new folder beside ``path``, which is then renamed to ``path``: the folder
    appears whole or not at all, with the modes the umask gives. An existing ``path`` (the caller has
    decided it may go) is replaced only once the new folder is complete: moved aside, the new one
    renamed in (the old one put back if that fails), then removed.

        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "model"
        >>> write_folder_atomically(out, lambda tmp: (tmp / "a.txt").write_text("ok"))
        >>> [p.name for p in out.iterdir()], [p.name for p in out.parent.iterdir()]
        (['a.txt'], ['model'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        write(tmp)
        mask = current_umask()
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~mask)
        os.chmod(tmp, 0o777 & ~mask)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.old")
            os.rename(path, old)
        try:
            os.rename(tmp, path)
        except BaseException:
            if old is not None:
                os.rename(old, path)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
