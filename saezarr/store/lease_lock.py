"""One writer per store where there is no file system to flock: a lock object with a lease, held by conditional
writes of the storage itself.

The record is JSON naming its holder (pid, host, start) and when its lease ends. It is created with put-if-absent
(S3 `If-None-Match: *`), so of two writers that start together exactly one gets it. While it is held a thread
renews the lease with compare-and-swap on the record's version (S3 `If-Match` on its ETag), every quarter lease. A
writer that finds the record takes it over, again by compare-and-swap, only when its lease has ended (its holder
was killed, or lost its node) or its holder is a dead process on this host, or when asked to (`force_unlock`);
otherwise it is refused with who holds it. Lease ends are wall-clock times: hosts' clocks must agree to well
within a lease (NTP does).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time

from saezarr.durable.locking import holder_is_gone, holder_record, say_taken_over
from saezarr.errors import LockHeld, option
from saezarr.store.storage.base import Storage

LEASE_ENV = "SAEZARR_LOCK_LEASE_S"
DEFAULT_LEASE_S = 60.0
_ATTEMPTS = 10
_log = logging.getLogger(__name__)


def lease_seconds() -> float:
    """How long a lease lasts unless renewed: `$SAEZARR_LOCK_LEASE_S`, else DEFAULT_LEASE_S."""
    return float(os.environ.get(LEASE_ENV) or DEFAULT_LEASE_S)


class LeaseLock:
    """A storage's writer lock: an object holding its holder's record, renewed while held."""

    def __init__(self, storage: Storage, key: str, lease_s: float | None = None):
        self.storage = storage
        self.key = key
        self.lease_s = lease_seconds() if lease_s is None else lease_s
        self.held = False
        self.lost = False  # another writer took the lock while this one held it (force_unlock elsewhere)
        self._token = secrets.token_hex(8)
        self._version: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def acquire(self, force: bool = False) -> None:
        """Take the lock, or say who holds it and until when; `force` takes it whoever holds it."""
        if self.held:
            return
        for _ in range(_ATTEMPTS):
            if self.storage.put_if_absent(self.key, self._record()):
                return self._now_held()
            try:
                data, version = self.storage.get_versioned(self.key)
            except KeyError:
                continue  # released meanwhile
            holder = _parse(data)
            if not (force or holder is None or _lease_over(holder) or holder_is_gone(holder)):
                raise self._held_error(holder)
            if self.storage.compare_and_swap(self.key, version, self._record()):
                if holder is not None and not force:
                    say_taken_over(holder)
                return self._now_held()
        raise LockHeld(
            f"{self.storage.location}: could not take the lock {self.key}; use {option('force_unlock', True)}",
            exit_code=1,
        )

    def holder(self) -> dict | None:
        """Who holds the lock, as its record says (None if there is none)."""
        try:
            return _parse(self.storage.get(self.key))
        except KeyError:
            return None

    def release(self) -> None:
        """Stop renewing and delete the record, unless another writer has taken the lock meanwhile."""
        if not self.held:
            return
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        holder = self.holder()
        if holder is not None and holder.get("token") == self._token:
            self.storage.delete(self.key)
        self.held = False

    def _now_held(self) -> None:
        self.held = True
        self._learn_version()
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_until_released, name="saezarr-lock-lease", daemon=True)
        self._renewer.start()

    def _learn_version(self) -> None:
        """The version of the record just written, for the next renewal (a record not ours: the lock is lost)."""
        try:
            data, version = self.storage.get_versioned(self.key)
        except KeyError:
            data, version = b"", None
        holder = _parse(data)
        if holder is None or holder.get("token") != self._token:
            self._lose(holder)
        self._version = version

    def _renew_until_released(self) -> None:
        while not self._stop.wait(self.lease_s / 4) and not self.lost:
            try:
                renewed = self.storage.compare_and_swap(self.key, self._version, self._record())
            except Exception as exc:  # a server that is down now may answer before the lease ends
                _log.warning(f"{self.storage.location}: could not renew the lock's lease ({exc}); retrying")
                continue
            if renewed:
                self._learn_version()
            else:
                self._lose(self.holder())

    def _lose(self, holder: dict | None) -> None:
        if not self.lost:
            self.lost = True
            who = "nobody" if holder is None else f"pid {holder.get('pid')} on {holder.get('host')}"
            _log.warning(
                f"{self.storage.location}: this build's lock was taken over by {who}; it is no longer the writer"
            )

    def _record(self) -> bytes:
        now = time.time()
        return json.dumps(
            {
                **holder_record(),
                "token": self._token,
                "lease_s": self.lease_s,
                "expires": now + self.lease_s,
                "expires_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + self.lease_s)),
            }
        ).encode()

    def _held_error(self, holder: dict) -> LockHeld:
        return LockHeld(
            f"{self.storage.location}: another build is writing this store (pid {holder.get('pid')} on "
            f"{holder.get('host')}, started {holder.get('started')}; its lease runs to {holder.get('expires_utc')} "
            f"unless renewed); wait for it, or if it is gone resume after its lease ends or use "
            f"{option('force_unlock', True)}"
        )

    def __enter__(self) -> LeaseLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _parse(data: bytes) -> dict | None:
    try:
        holder = json.loads(data)
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def _lease_over(holder: dict) -> bool:
    try:
        return float(holder["expires"]) < time.time()
    except (KeyError, TypeError, ValueError):
        return True  # a record with no lease end cannot be renewed by anyone: treat it as lapsed
