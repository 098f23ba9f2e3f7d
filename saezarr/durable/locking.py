"""One writer per store: a lock file naming the process that holds it.

The file holds JSON naming its holder (pid, host, start time, and the process's start in clock ticks since
boot, which tells a reused pid apart). Where the file system has advisory locks (flock on Linux and macOS),
the holder also keeps an exclusive flock on the open file. The kernel (or, on a shared file system, its lock
manager) drops that the moment the process dies, however it dies, so two processes that start together, or
that both find a stale lock, can never both take the store: exactly one gets the flock. So where the flock can
be taken, the holder named in the JSON is gone, whatever host it names (a job requeued on another node), and
the lock is taken over. Where the file system has no flock, the JSON alone decides: a holder on another host,
or a live process on this host, is respected; a dead or reused pid on this host is stale and taken over.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from saezarr.errors import LockHeld, WriteFailed, option

try:
    import fcntl
except ImportError:  # Windows: no flock; the JSON alone decides
    fcntl = None  # type: ignore[assignment]  # the module or None: every use checks

_log = logging.getLogger(__name__)
_ATTEMPTS = 20
_READ_PATIENCE_S = 1.0  # a holder writes its JSON right after taking the flock


class StoreLock:
    """An exclusive, stale-aware lock file; a lock whose holder is gone is taken over, saying so in the log."""

    def __init__(self, path: Path, store: Path):
        self.path = Path(path)
        self.store = store
        self.held = False
        self._fd: int | None = None

    def acquire(self, force: bool = False) -> None:
        """Take the lock or explain who holds it; `force` takes it whoever holds it."""
        if self.held:
            return
        try:
            self._acquire(force)
        except OSError as exc:
            self._close()
            raise WriteFailed(
                f"{self.store}: could not take the lock {self.path} ({exc.strerror or exc}); "
                "fix the cause, then rerun the same command",
                exit_code=1,
            ) from None

    def _acquire(self, force: bool) -> None:
        self.path.parent.mkdir(exist_ok=True)  # a store whose state folder was deleted can still be locked
        if force:
            self.path.unlink(missing_ok=True)  # a new file: whoever holds the old one no longer counts
        for _ in range(_ATTEMPTS):
            self._fd = fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # closed by acquire on any error
            locked = _try_flock(fd)
            if locked is False:  # a live process holds it
                self._close()
                raise self._held_error(self._read_patiently())
            if not _is_same_file(fd, self.path):  # its holder released (unlinked) it meanwhile: start over
                self._close()
                continue
            holder = _read_json(fd)
            if locked is None and holder is not None and not force and not holder_is_gone(holder):
                # no flock to ask: a holder on another host, or a live one on this host, is respected
                self._close()
                raise self._held_error(holder)
            if locked is None and holder is None and _size(fd) == 0 and not force and _age(fd) < _READ_PATIENCE_S:
                # no flock on this file system: a fresh empty file is someone writing their JSON right now
                self._close()
                time.sleep(0.05)
                continue
            _write_json(fd, holder_record())
            self.held = True
            if holder is not None and holder.get("pid") is not None and not force:
                say_taken_over(holder)
            return
        raise LockHeld(
            f"{self.store}: could not take the lock {self.path}; use {option('force_unlock', True)}", exit_code=1
        )

    def _held_error(self, holder: dict | None) -> LockHeld:
        holder = holder or {}
        return LockHeld(
            f"{self.store}: another build is writing this store (pid {holder.get('pid')} on "
            f"{holder.get('host')}, started {holder.get('started')}); wait for it, or if it is "
            f"gone use {option('force_unlock', True)}"
        )

    def _read_patiently(self) -> dict | None:
        deadline = time.monotonic() + _READ_PATIENCE_S
        while True:
            holder = self.holder()
            if holder is not None or time.monotonic() > deadline:
                return holder
            time.sleep(0.02)

    def holder(self) -> dict | None:
        """Who holds the lock, as written in the lock file (None if absent or unreadable)."""
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def release(self) -> None:
        """Drop the lock if this process holds it (unlink first, so a waiting opener sees a new file)."""
        if self.held:
            assert self._fd is not None  # held: acquire opened it
            try:
                if _is_same_file(self._fd, self.path):  # after --force-unlock elsewhere it is someone else's
                    self.path.unlink(missing_ok=True)
            except OSError:
                pass
            self._close()
            self.held = False

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StoreLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def say_taken_over(holder: dict) -> None:
    """One log line: whose lock this build took over, so a requeued job's log tells why it could start."""
    _log.info(f"taking over the lock of pid {holder.get('pid')} on {holder.get('host')}, which is gone")


def _try_flock(fd: int) -> bool | None:
    """True if this process now holds the flock, False if another does, None if the file system has none."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        return None  # ENOLCK, EOPNOTSUPP...: some network file systems
    return True


def _is_same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _read_json(fd: int) -> dict | None:
    data = b""
    while chunk := os.pread(fd, 1 << 16, len(data)):
        data += chunk
    try:
        holder = json.loads(data)
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def _write_json(fd: int, holder: dict) -> None:
    data = json.dumps(holder).encode()
    os.ftruncate(fd, 0)
    written = 0
    while written < len(data):
        written += os.pwrite(fd, data[written:], written)


def _size(fd: int) -> int:
    return os.fstat(fd).st_size


def _age(fd: int) -> float:
    return time.time() - os.fstat(fd).st_mtime


def holder_record() -> dict:
    """Who this process is, as a lock record names its holder."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "boot_ticks": _start_ticks(os.getpid()),
    }


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (Linux only)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def _start_ticks(pid: int) -> str | None:
    """The process start time in clock ticks since boot, which tells a reused pid apart (Linux only)."""
    fields = _proc_stat(pid)
    return fields[19] if fields else None


def process_alive(pid: int) -> bool:
    """True if a process with this pid runs on this host (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    except OverflowError:
        return False
    fields = _proc_stat(pid)
    return not (fields and fields[0] in ("Z", "X"))


def holder_is_gone(holder: dict) -> bool:
    """True if the holder a lock record names is a process of this host that is gone (or whose pid was reused)."""
    if holder.get("host") != socket.gethostname():
        return False  # can't tell from here
    try:
        pid = int(holder["pid"])
    except (KeyError, ValueError, TypeError):
        return False
    if not process_alive(pid):
        return True
    recorded, fields = holder.get("boot_ticks"), _proc_stat(pid)
    return recorded is not None and fields is not None and recorded != fields[19]


@contextlib.contextmanager
def exclusive_flock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on lock file `path` meanwhile, waiting for it; where the file system has no flock,
    nothing is held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            with contextlib.suppress(OSError):  # no flock here
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the flock


class SharedLease:
    """A shared flock on a lease file, held while a cache entry is in use; `try_exclusive` tells a cleaner whether
    nobody holds one. Where the file system has no flock, every lease counts as held (nothing is ever evicted)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None

    def __enter__(self) -> SharedLease:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_SH)
            except OSError:  # no flock here: try_exclusive never succeeds either
                pass
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def exclusive_if_free(path: Path) -> int | None:
    """An fd holding an exclusive flock on lease file `path` when no process holds a lease on it, else None (also
    where the file system has no flock); close the fd to release it."""
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return None
    if _try_flock(fd):
        return fd
    os.close(fd)
    return None
