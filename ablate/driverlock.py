"""One driver per sweep: ``<storage>/<sweep>/driver.lock``, held while a driver runs the sweep.

``acquire(directory)`` creates the lock file with ``O_CREAT | O_EXCL`` (only one process can
create it; a new sweep directory is created with the lock already in it) and writes its owner
into it as JSON: ``pid``, ``host``, ``started_at`` (Unix time, s), ``started`` (the same, ISO
8601) and a random ``token``. A second driver finds the file and is refused with
``DriverLockError`` naming the owner. A lock whose owner is gone (same host, and its pid no
longer runs, or now belongs to a process started after the lock was taken) is stale: it is
taken over with a warning on stderr. A lock of another host cannot be checked from
here, so it is never taken over; the message says how to remove it.

Taking a stale lock over is itself guarded by a second ``O_EXCL`` file
(``driver.lock.takeover``), so that two drivers that both find the same stale lock cannot
both remove it and each create their own: the one that holds the guard checks that the lock
still holds the stale owner's token before removing it, then both race on ``O_EXCL`` again.

``DriverLock.release()`` (also run at interpreter exit, so an exception or Ctrl-C releases
it) removes the file only while it still holds this lock's token, then removes the sweep
directory if this lock created it and it is empty (a start refused by a later check leaves
nothing behind). A driver killed by a signal leaves its lock behind: stale, taken over by the
next driver on the same host.

Local paths only: object stores (``s3://``, ...) have no exclusive create.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import json
import os
import secrets
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

#: The lock's file name in the sweep's directory.
LOCK_NAME = "driver.lock"
_TAKEOVER_SUFFIX = ".takeover"
#: How long a lock file may stay empty or unreadable while its creator writes it (s).
_WRITE_GRACE_S = 2.0
#: A takeover guard older than this (s) was left by a driver that died while taking over.
_TAKEOVER_STALE_S = 30.0


class DriverLockError(RuntimeError):
    """The sweep's lock is held by another driver, or cannot be read or created. The message
    names the lock file, its owner when known, and what to do."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(message)


@dataclass(frozen=True)
class Owner:
    """Who holds a lock: process id, host name, when it was taken and its random token."""

    pid: int
    host: str
    started_at: float
    started: str
    token: str

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host}, started {self.started}"


class DriverLock:
    """A held lock (``acquire`` returns one). ``created_directory``: the sweep's directory did
    not exist and this lock created it (a fresh sweep, not one with results)."""

    def __init__(self, path: str, owner: Owner, created_directory: bool) -> None:
        self.path = path
        self.owner = owner
        self.created_directory = created_directory
        self._held = True
        atexit.register(self.release)

    @property
    def held(self) -> bool:
        return self._held

    def release(self) -> None:
        """Remove the lock file if it still holds this lock's token; then the sweep directory
        if this lock created it and nothing else is in it. Idempotent."""
        if not self._held:
            return
        self._held = False
        atexit.unregister(self.release)
        with contextlib.suppress(DriverLockError, FileNotFoundError):
            if _read_owner(self.path, wait_s=0.0).token == self.owner.token:
                os.unlink(self.path)
        if self.created_directory:
            with contextlib.suppress(OSError):  # not empty: the sweep wrote results
                os.rmdir(os.path.dirname(self.path))

    def __enter__(self) -> DriverLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire(directory: str) -> DriverLock:
    """Take ``<directory>/driver.lock`` for this process, creating ``directory`` (and its
    parents) if needed.

    Raises ``DriverLockError`` when another live driver holds it (the message names its pid,
    host and start time and the lock file), when its owner cannot be read, or when the file
    cannot be created (e.g. a read-only directory). A stale lock is taken over with a warning.
    """
    path = os.path.join(directory, LOCK_NAME)
    owner = _new_owner()
    if _create_directory_with_lock(directory, owner):
        return DriverLock(path, owner, created_directory=True)
    for _ in range(20):  # each round either wins, raises or removed a stale lock
        if _create(path, owner):
            return DriverLock(path, owner, created_directory=False)
        try:
            holder = _read_owner(path, wait_s=_WRITE_GRACE_S)
        except FileNotFoundError:
            continue  # released meanwhile
        reason = _stale_reason(holder)
        if reason is None:
            raise DriverLockError(
                path,
                f"another driver is running this sweep: {holder.describe()} (lock {path}). "
                "Wait for it to finish or stop it; if that process is gone (e.g. its machine "
                f"was restarted), delete {path} and start again",
            )
        _take_over(path, holder, reason)
    raise DriverLockError(path, f"could not take {path}: other drivers keep taking it")


def _new_owner() -> Owner:
    now = time.time()
    return Owner(
        pid=os.getpid(),
        host=socket.gethostname(),
        started_at=now,
        started=datetime.datetime.fromtimestamp(now).astimezone().isoformat(timespec="seconds"),
        token=secrets.token_hex(8),
    )


def _create_directory_with_lock(directory: str, owner: Owner) -> bool:
    """Create ``directory`` with the lock of ``owner`` in it, in one step: a temporary
    directory beside it, holding the lock, renamed into place. False when ``directory``
    exists (then the lock is taken inside it): a racing driver's rename finds it not empty.

    In one step, so that a driver that finds the directory holding only a lock knows that it
    did not create it: the directory existed before (refused without ``--resume``).
    """
    parent = os.path.dirname(os.path.abspath(directory))
    if os.path.lexists(directory):
        return False
    try:
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.", dir=parent)
    except OSError as error:
        raise DriverLockError(directory, f"cannot create {directory}: {error.strerror}") from None
    try:
        _create(os.path.join(staging, LOCK_NAME), owner)
    except DriverLockError:
        os.rmdir(staging)
        raise
    try:
        os.rename(staging, directory)
        return True
    except OSError:  # a racing driver's directory (not empty), or a file, is there now
        os.unlink(os.path.join(staging, LOCK_NAME))
        os.rmdir(staging)
        return False


def _create(path: str, owner: Owner) -> bool:
    """Create the lock file holding ``owner``; False when it exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    except OSError as error:
        raise DriverLockError(path, f"cannot create {path}: {error.strerror}") from None
    try:
        os.write(fd, json.dumps(asdict(owner)).encode())
        os.fsync(fd)
    except OSError as error:
        os.close(fd)
        os.unlink(path)  # an empty lock would refuse every later driver
        raise DriverLockError(path, f"cannot write {path}: {error.strerror}") from None
    os.close(fd)
    return True


def _read_owner(path: str, wait_s: float) -> Owner:
    """The owner in the lock file. A driver writes it right after creating the file, so an
    empty or unreadable file is read again for up to ``wait_s`` seconds.

    Raises ``FileNotFoundError`` when the file is gone, ``DriverLockError`` when it stays
    unreadable.
    """
    deadline = time.monotonic() + wait_s
    while True:
        with open(path, encoding="utf-8", errors="replace") as file:
            text = file.read()
        try:
            return Owner(**json.loads(text))
        except (ValueError, TypeError):
            if time.monotonic() >= deadline:
                raise DriverLockError(
                    path,
                    f"{path} does not say which driver holds it ({text[:80]!r}); if no other "
                    f"driver runs this sweep, delete {path} and start again",
                ) from None
        time.sleep(0.1)


def _stale_reason(owner: Owner) -> str | None:
    """Why ``owner`` no longer holds its lock, or None when it may (a live process, or another
    host's, which cannot be checked from here)."""
    if owner.host != socket.gethostname():
        return None
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return f"process {owner.pid} is no longer running"
    except PermissionError:
        pass  # alive, another user's
    started = _process_start_time(owner.pid)
    if started is not None and started > owner.started_at + 1.0:
        return f"pid {owner.pid} now belongs to a process started after the lock was taken"
    return None


def _process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (Unix time, s) from /proc; None where /proc is missing."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            ticks = int(file.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as file:
            boot = next(float(line.split()[1]) for line in file if line.startswith("btime"))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _take_over(path: str, stale: Owner, reason: str) -> None:
    """Remove the lock of ``stale`` (a warning on stderr), under the takeover guard; returns
    without removing anything when another driver is taking over or took it already."""
    guard = path + _TAKEOVER_SUFFIX
    try:
        fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        with contextlib.suppress(FileNotFoundError):
            if time.time() - os.stat(guard).st_mtime > _TAKEOVER_STALE_S:
                raise DriverLockError(
                    guard,
                    f"{guard} was left by a driver that died while taking over a stale lock; "
                    "if no other driver runs this sweep, delete it and start again",
                ) from None
        time.sleep(0.2)
        return
    try:
        os.close(fd)
        try:
            current = _read_owner(path, wait_s=0.0)
        except FileNotFoundError:
            return
        if current.token != stale.token:
            return  # someone else took it over first
        os.unlink(path)
        print(
            f"warning: took over the stale lock {path} of {stale.describe()}: {reason}",
            file=sys.stderr,
        )
    finally:
        os.unlink(guard)
