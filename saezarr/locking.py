"""One writer per store: a lock file naming the process that holds it."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from saezarr.errors import SaezarrError


class StoreLock:
    """An exclusive, stale-aware lock file; a lock left by a dead process on this host is taken over."""

    def __init__(self, path: Path, store: Path):
        self.path = path
        self.store = store
        self.held = False

    def acquire(self, force: bool = False) -> None:
        """Take the lock or explain who holds it."""
        if force:
            self.path.unlink(missing_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder is not None and not _is_stale(holder):
                    raise SaezarrError(
                        f"{self.store}: another build is writing this store (pid {holder.get('pid')} on "
                        f"{holder.get('host')}, started {holder.get('started')}); wait for it, or if it is "
                        "gone use --force-unlock"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its process is dead
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(_me(), f)
            self.held = True
            return
        raise SaezarrError(f"{self.store}: could not take the lock {self.path}; use --force-unlock")

    def holder(self) -> dict | None:
        """Who holds the lock, as written in the lock file (None if unreadable)."""
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        """Drop the lock if this process holds it."""
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> StoreLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _me() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "boot_ticks": _start_ticks(os.getpid()),
    }


def _start_ticks(pid: int) -> str | None:
    """The process start time in clock ticks since boot, which tells a reused pid apart (Linux only)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _is_stale(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return False  # can't tell from here
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, ValueError, TypeError):
        return False
    recorded = holder.get("boot_ticks")
    return recorded is not None and recorded != _start_ticks(int(holder["pid"]))
