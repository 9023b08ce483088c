"""Where a study lives, and the one lock that keeps its trial budget exact.

No ``--storage``: Optuna's journal file under the output folder (``study.journal``: appends under a
file lock, safe for workers on one machine; ``optuna-dashboard DIR/study.journal`` reads it). A URL
(``postgresql://``, ``mysql://``, ``sqlite:///``): Optuna's RDB storage, which workers on several
machines share, with a heartbeat so a machine that dies has its trials failed and retried.

The budget lock: a worker counts the trials and asks for a new one while holding it, so N workers never
start more trials than the budget (Optuna's ``MaxTrialsCallback`` counts after a trial ends and can
overshoot by a trial a worker). A file lock for a journal or SQLite file, an advisory lock on
PostgreSQL and MySQL.

    >>> redact("postgresql://search:secret@db.example:5432/studies")
    'postgresql://search:***@db.example:5432/studies'
"""
from __future__ import annotations

import fcntl
import os
import warnings
import re
import zlib
from pathlib import Path
from typing import Any

from se_inject.errors import SearchError, first_line

__all__ = ["open_storage", "BudgetLock", "redact", "retry_callback", "JOURNAL", "dashboard_hint"]

JOURNAL = "study.journal"
#: seconds between heartbeats of a running trial (RDB storages), and after which a silent trial is failed
HEARTBEAT_S, GRACE_S = 10, 60


def redact(url: str) -> str:
    """``url`` without its password (what errors and reports print)."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def retry_callback(max_retry: int) -> Any:
    """Optuna's callback that queues a failed trial again (its params, with ``failed_trial``/``retry_history``)."""
    import optuna.storages as storages
    cls = getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback  # Optuna 4.9
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # experimental since 2.8, by its name
        return cls(max_retry=max_retry)


def open_storage(url: str | None, out_dir: Path, retries: int) -> Any:
    """The Optuna storage of a search: a journal file under ``out_dir``, or the RDB storage at ``url``; a storage
    that cannot be opened is a one-line :class:`SearchError`."""
    import optuna
    if url is None:
        from optuna.storages.journal import JournalFileBackend, JournalStorage
        path = out_dir / JOURNAL
        try:
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as e:
            raise SearchError(f"{path}: cannot open the study journal: {e.strerror or e}") from None
    if "://" not in url:
        raise SearchError(f"--storage {url!r} is not a database URL such as postgresql://user@host/db or "
                          "sqlite:///search.db (leave it out for a journal file under the output folder)")
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        kwargs["connect_args"] = {"connect_timeout": 10}
    stale = "heartbeat_stale_trial_callback" if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback") \
        else "failed_trial_callback"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # heartbeat_interval is "experimental" (since 2.9)
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S,
                                              grace_period=GRACE_S, **{stale: retry_callback(retries)})
    except ImportError as e:  # Optuna's words hide which driver: the cause names it
        cause = e.__cause__ or e.__context__ or e
        hint = "; PostgreSQL takes pip install 'psycopg[binary]'" if url.startswith("postgresql") else ""
        raise SearchError(f"--storage {redact(url)}: cannot open it: the database driver is missing "
                          f"({first_line(cause)}){hint}") from None
    except Exception as e:  # a host that does not answer, a refused login, a bad URL: all one line
        raise SearchError(f"--storage {redact(url)}: cannot open it: {first_line(e)}") from None


def dashboard_hint(url: str | None, out_dir: Path) -> str:
    return f"optuna-dashboard {out_dir / JOURNAL if url is None else redact(url)}"


class BudgetLock:
    """Held while a worker counts trials and asks for the next one (re-entrant per process: not needed)."""

    def __init__(self, storage: Any, url: str | None, out_dir: Path, study: str) -> None:
        self.kind, self._fd, self._conn = "none", None, None
        self.key = zlib.crc32(study.encode()) - (1 << 31)   # a signed 32-bit advisory-lock key
        self.name = f"se_inject:{study}"[:64]
        if url is None or url.startswith("sqlite"):
            path = out_dir / "study.lock" if url is None else Path(url.split("///", 1)[-1] + ".lock")
            self.kind, self.path = "file", path
        elif url.startswith(("postgresql", "mysql")):
            self.kind, self.engine = url.split(":", 1)[0].split("+", 1)[0], storage.engine

    def acquire(self) -> None:
        if self.kind == "file":
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        elif self.kind in ("postgresql", "mysql"):
            from sqlalchemy import text
            self._conn = self.engine.connect()
            if self.kind == "postgresql":
                self._conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
            else:
                self._conn.execute(text("SELECT GET_LOCK(:n, -1)"), {"n": self.name})
            self._conn.commit()

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._conn is not None:
            from sqlalchemy import text
            try:
                if self.kind == "postgresql":
                    self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
                else:
                    self._conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": self.name})
                self._conn.commit()
            finally:
                self._conn.close()   # a session's advisory locks end with it in any case
                self._conn = None

    def __enter__(self) -> "BudgetLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


