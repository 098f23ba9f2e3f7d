"""What a process keeps across units of work (a model, a pass's encoders, open stores), for build and analysis alike.

A dask worker, a notebook or a test outlives the command that sent it units; what it keeps must never serve a unit
of another store. So every kept value is filed under a key, and a store's key holds its identity (`Store.identity`,
new on each create or overwrite): a unit for a store rebuilt at the same path opens it anew. `current_store` also
checks the store on disk before each unit, and refuses a unit sent for a store that has been replaced since.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from saezarr.store.format import Store, refuse_if_replaced


class ProcessCache:
    """Values kept by this process, a few per slot (least recently used dropped first), each under its key."""

    def __init__(self) -> None:
        self._slots: dict[str, OrderedDict] = {}
        self._lock = threading.RLock()

    def get(self, slot: str, key: Hashable, make: Callable[[], Any], keep: int = 1) -> tuple[Any, bool]:
        """The value kept in slot under key, else make() (after dropping the slot's oldest beyond `keep - 1`, so an
        old model goes before a new one loads); also whether it was made now."""
        with self._lock:
            values = self._slots.setdefault(slot, OrderedDict())
            if key in values:
                values.move_to_end(key)
                return values[key], False
            while len(values) >= keep:
                values.popitem(last=False)
            values[key] = value = make()
            return value, True

    def count(self, slot: str) -> int:
        """How many values the slot keeps."""
        with self._lock:
            return len(self._slots.get(slot, ()))

    def drop(self, slot: str) -> None:
        """Forget what the slot keeps."""
        with self._lock:
            self._slots.pop(slot, None)

    def clear(self) -> None:
        """Forget everything kept."""
        with self._lock:
            self._slots.clear()


process_cache = ProcessCache()  # one per process: a dask worker's tasks and this process's threads share it


def current_store(path: str | Path, identity: str, mode: str = "r") -> Store:
    """The store at path, opened once per process and identity; refused (one line) if the store there now is another."""
    refuse_if_replaced(path, identity)
    store, _ = process_cache.get("stores", (str(path), identity, mode), lambda: Store(path, mode=mode), keep=4)
    return store
