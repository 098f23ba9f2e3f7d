"""The interface of a storage backend, after zarr's `zarr.abc.store.Store`, kept to what a saezarr store needs."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class ObjectStat:
    """What a storage knows of one object without reading it: its size and when it was last written."""

    size: int
    modified_ns: int


class Ranges(Protocol):
    """An object's bytes read in parts: its length and slices of it (bytes qualify)."""

    def __len__(self) -> int: ...
    def __getitem__(self, part: slice) -> bytes: ...


class WriterLock(Protocol):
    """A store's one-writer lock, as `saezarr.durable.locking.StoreLock` is one."""

    held: bool

    def acquire(self, force: bool = False) -> None: ...
    def release(self) -> None: ...
    def holder(self) -> dict | None: ...
    def __enter__(self) -> WriterLock: ...
    def __exit__(self, *exc) -> None: ...


class Storage(ABC):
    """Bytes by key ('/'-separated, relative to the store's root). Names starting with '.' belong to the backend (its
    temporary files) and are never listed. Every method may be called from several threads at once."""

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the storage is, as messages name it (a path or a URL)."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The object's bytes (KeyError if there is none)."""

    @abstractmethod
    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and an opaque version of them for `compare_and_swap` (KeyError if there is none)."""

    @abstractmethod
    def put(self, key: str, value: bytes) -> None:
        """Write the object whole: readers see the old value or the new, never a part; durable once it returns."""

    @abstractmethod
    def put_if_absent(self, key: str, value: bytes) -> bool:
        """Write the object as `put` does unless there is one already; whether it wrote (one of racing writers wins)."""

    @abstractmethod
    def compare_and_swap(self, key: str, version: str | None, value: bytes) -> bool:
        """Write the object as `put` does if its version is still `version` (None: if there is none); whether it
        wrote. Atomic against other compare_and_swap and put_if_absent calls, not against a plain `put`."""

    @abstractmethod
    def list_prefix(self, prefix: str) -> Iterator[str]:
        """The keys that start with prefix, sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object (none there: nothing to do)."""

    @abstractmethod
    def stat(self, key: str) -> ObjectStat:
        """The object's size and time of writing (KeyError if there is none)."""

    @abstractmethod
    def lock(self, key: str) -> WriterLock:
        """The one-writer lock whose record is at key (not yet acquired)."""

    @property
    def can_list(self) -> bool:
        """False for a storage whose keys cannot be listed (a store published over plain HTTP)."""
        return True

    @property
    def read_only(self) -> bool:
        """True for a storage that can only be read (a store published over HTTP)."""
        return False

    @property
    def folder(self) -> Path | None:
        """The local folder whose files are the objects (zarr opens such a store by path), None for other backends."""
        return None

    def list_dir(self, folder: str) -> list[str]:
        """The names directly below folder ('': the root): its objects' and its subfolders', sorted."""
        prefix = f"{folder.rstrip('/')}/" if folder.strip("/") else ""
        return sorted({key.removeprefix(prefix).partition("/")[0] for key in self.list_prefix(prefix)})

    def stats(self, prefix: str) -> dict[str, ObjectStat]:
        """Each object's size and time of writing, by key, for the keys that start with prefix, sorted (a backend
        whose listing tells both needs no request per object)."""
        found = {}
        for key in self.list_prefix(prefix):
            try:
                found[key] = self.stat(key)
            except KeyError:  # deleted meanwhile
                continue
        return found

    def exists(self, key: str) -> bool:
        """True if there is an object at key."""
        try:
            self.stat(key)
        except KeyError:
            return False
        return True

    def touch(self, key: str) -> None:
        """An empty object at key, made (or its time renewed) now: a mark whose presence is what counts."""
        self.put(key, b"")

    @contextlib.contextmanager
    def reader(self, key: str) -> Iterator[Ranges]:
        """The object's bytes to read in parts (KeyError if there is none); a backend may fetch only those parts."""
        yield self.get(key)
