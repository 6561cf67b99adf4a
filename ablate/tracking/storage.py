"""Storage that is full or read-only, as one error naming it: ``StorageError``.

A write fails the same way wherever it goes (the MLflow store, the sweep's results and
checkpoints, the report's directory): SQLite's "database or disk is full" / "attempt to write a
readonly database", or an OSError ENOSPC / EROFS / EDQUOT, often as text (a trial's error
reaches the driver as its traceback). ``storage_error`` recognises it in an exception's chain and
names the storage; the entrypoints exit with ``StorageError.exit_status``. Importing this module
also quiets MLflow's own log record of such a failed write (``_QuietStorageErrors``).
"""

from __future__ import annotations

import errno
import logging
import os
import re
from collections.abc import Iterator

#: What an errno of a full or read-only storage means, in the message.
_STORAGE_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EROFS: "read-only file system",
    errno.EDQUOT: "disk quota exceeded",
}
#: The same, as it reads in an error's text: SQLite's SQLITE_FULL and SQLITE_READONLY, and the
#: OSError texts of the errnos (a trial's error arrives as its traceback's text).
_STORAGE_TEXTS = (
    ("database or disk is full", "the database or its disk is full"),
    ("attempt to write a readonly database", "the database is read-only"),
    ("No space left on device", _STORAGE_ERRNOS[errno.ENOSPC]),
    ("Read-only file system", _STORAGE_ERRNOS[errno.EROFS]),
    ("Disk quota exceeded", _STORAGE_ERRNOS[errno.EDQUOT]),
)
_ERRNO_CODES = "|".join(str(code) for code in _STORAGE_ERRNOS)
_ERRNO_PATH = re.compile(rf"\[Errno (?:{_ERRNO_CODES})\] [^'\n]*?: '([^'\n]+)'")
#: Resuming is the way out of a storage error that stopped a sweep.
RESUME_HINT = (
    "Free space on that file system (or make it writable), then rerun the same command with "
    "--resume: finished trials are kept, the others continue from their last checkpoints, and "
    "epochs missing from MLflow are logged from the trials' own results."
)


class StorageError(RuntimeError):
    """A write failed because its storage is full or read-only (SQLite "database or disk is
    full", OSError ENOSPC / EROFS / EDQUOT).

    ``what`` names the storage (``MLflow store``, ``results``, ``report``), ``path`` the file or
    store, ``reason`` the cause in words and ``todo`` the way out; ``notes`` are appended (e.g.
    whether the sweep's MLflow runs could be marked). ``exit_status`` is the entrypoints' exit
    status for it (74, sysexits' EX_IOERR).
    """

    exit_status = 74

    def __init__(self, what: str, path: str, reason: str, todo: str = RESUME_HINT) -> None:
        super().__init__(what, path, reason, todo)
        self.what, self.path, self.reason, self.todo = what, path, reason, todo
        self.notes: list[str] = []

    def __str__(self) -> str:
        return " ".join([f"{self.what} {self.path}: {self.reason}.", *self.notes, self.todo])


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling, outermost first."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def storage_reason(text: str) -> tuple[str, str | None] | None:
    """``(reason, path or None)`` when an error's text says its storage is full or read-only
    (a trial's error reaches the driver as text); else None."""
    for needle, reason in _STORAGE_TEXTS:
        if needle in text:
            found = _ERRNO_PATH.search(text)
            return reason, found.group(1) if found else None
    return None


def storage_error(
    exc: BaseException,
    path: str | os.PathLike[str] | None = None,
    what: str = "storage",
    todo: str = RESUME_HINT,
) -> StorageError | None:
    """The ``StorageError`` that ``exc`` (or an exception in its chain) amounts to, else None.

    An OSError names its own file; otherwise ``path`` (the store or directory being written)
    is named, or the path an OSError's text holds. A ``StorageError`` in the chain is
    returned as it is.
    """
    for link in _chain(exc):
        if isinstance(link, StorageError):
            return link
        if isinstance(link, OSError) and link.errno in _STORAGE_ERRNOS:
            named = link.filename if link.filename else path
            return StorageError(what, str(named or "?"), _STORAGE_ERRNOS[link.errno], todo)
    for link in _chain(exc):
        found = storage_reason(str(link))
        if found is not None:
            reason, named = found
            return StorageError(what, str(named or path or "?"), reason, todo)
    return None


class _QuietStorageErrors(logging.Filter):
    """Drops MLflow's own ERROR record (with its SQLAlchemy traceback) of a write that failed
    because the store is full or read-only: MLflow raises the same error to the tracker,
    which raises it as one ``StorageError`` naming the store."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return error is None or storage_error(error) is None


#: The logger of MLflow's SQL stores' sessions (``mlflow.store.db.utils.make_managed_session``).
logging.getLogger("mlflow.store.db.utils").addFilter(_QuietStorageErrors())
