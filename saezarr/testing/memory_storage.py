"""A storage held in this process's memory, for tests: `memory://NAME` names one shared by everything in the process
that opens that URL. Its writer lock is a record written by put_if_absent, as an object store's would be."""

from __future__ import annotations

import bisect
import itertools
import json
import os
import threading
import time
from collections.abc import Iterator

from saezarr.errors import SaezarrError
from saezarr.store.storage import url_scheme
from saezarr.store.storage.base import ObjectStat, Storage

_NAMED: dict[str, MemoryStorage] = {}
_NAMED_LOCK = threading.Lock()


class MemoryStorage(Storage):
    """Objects in a dict, each with a version from a counter; one lock makes every method atomic."""

    def __init__(self, name: str = "memory"):
        self.name = name
        self._objects: dict[str, tuple[bytes, str, int]] = {}  # key: (value, version, time written)
        self._keys: list[str] = []  # sorted, for list_prefix
        self._versions = itertools.count()
        self._lock = threading.Lock()

    @classmethod
    def named(cls, location: str) -> MemoryStorage:
        """The process's storage of a `memory://NAME` URL, made empty on first use."""
        scheme = url_scheme(location)
        name = location[scheme[1] :].strip("/") if scheme else location
        with _NAMED_LOCK:
            return _NAMED.setdefault(name, cls(name))

    @property
    def location(self) -> str:
        """The storage's URL."""
        return f"memory://{self.name}"

    def get(self, key: str) -> bytes:
        """The object's bytes (KeyError if there is none)."""
        return self.get_versioned(key)[0]

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and version (KeyError if there is none)."""
        with self._lock:
            value, version, _ = self._objects[key]
        return value, version

    def put(self, key: str, value: bytes) -> None:
        """Replace the object."""
        with self._lock:
            self._set(key, value)

    def put_if_absent(self, key: str, value: bytes) -> bool:
        """Write the object unless there is one."""
        with self._lock:
            if key in self._objects:
                return False
            self._set(key, value)
            return True

    def compare_and_swap(self, key: str, version: str | None, value: bytes) -> bool:
        """Write the object if its version is `version` (None: absent)."""
        with self._lock:
            current = self._objects.get(key)
            if (current[1] if current else None) != version:
                return False
            self._set(key, value)
            return True

    def list_prefix(self, prefix: str) -> Iterator[str]:
        """The keys that start with prefix, sorted (as they were when called)."""
        with self._lock:
            start = bisect.bisect_left(self._keys, prefix)
            keys = list(itertools.takewhile(lambda key: key.startswith(prefix), self._keys[start:]))
        return iter(keys)

    def delete(self, key: str) -> None:
        """Remove the object, if there is one."""
        with self._lock:
            if self._objects.pop(key, None) is not None:
                self._keys.pop(bisect.bisect_left(self._keys, key))

    def stat(self, key: str) -> ObjectStat:
        """The object's size and time of writing (KeyError if there is none)."""
        with self._lock:
            value, _, written = self._objects[key]
        return ObjectStat(len(value), written)

    def lock(self, key: str) -> RecordLock:
        """A lock whose record is the object at key."""
        return RecordLock(self, key)

    def _set(self, key: str, value: bytes) -> None:
        if key not in self._objects:
            bisect.insort(self._keys, key)
        self._objects[key] = (bytes(value), f"v{next(self._versions)}", time.time_ns())


class RecordLock:
    """A writer lock that is an object naming its holder, taken by put_if_absent and dropped by delete."""

    def __init__(self, storage: Storage, key: str):
        self.storage = storage
        self.key = key
        self.held = False
        self._record = json.dumps({"pid": os.getpid(), "host": "memory", "token": id(self)}).encode()

    def acquire(self, force: bool = False) -> None:
        """Take the lock, or say who holds it; `force` takes it whoever holds it."""
        if self.held:
            return
        if force:
            self.storage.put(self.key, self._record)
        elif not self.storage.put_if_absent(self.key, self._record):
            holder = self.holder() or {}
            raise SaezarrError(
                f"{self.storage.location}: another build is writing this store (pid {holder.get('pid')}); wait for "
                "it, or if it is gone use --force-unlock"
            )
        self.held = True

    def release(self) -> None:
        """Drop the lock if this lock holds it (and nobody forced it away meanwhile)."""
        if self.held:
            try:
                record = self.storage.get(self.key)
            except KeyError:
                record = None
            if record == self._record:
                self.storage.delete(self.key)
            self.held = False

    def holder(self) -> dict | None:
        """Who holds the lock, as its record says (None if there is none)."""
        try:
            return json.loads(self.storage.get(self.key))
        except (KeyError, ValueError):
            return None

    def __enter__(self) -> RecordLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
