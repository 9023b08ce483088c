"""Files that appear whole or not at all, with the permissions a plain ``open`` would give them.

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "weights.txt"
    >>> write_atomically(out, lambda tmp: pathlib.Path(tmp).write_text("ok"))
    >>> out.read_text(), oct(out.stat().st_mode & 0o777) == oct(0o666 & ~current_umask())
    ('ok', True)
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["write_atomically", "current_umask", "publish"]


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
