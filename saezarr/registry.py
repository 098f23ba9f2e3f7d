"""Registries of what grows with the field (SAE formats, activation functions, storage, metrics, model sites).

A registry holds named entries of one kind. The built-in entries are the modules of one package, each registering
itself when imported, so a new built-in case is one new file. Entries from other packages come through the
`saezarr.<kind>` entry-point group, as xarray finds its backends: an entry point names either an object, registered
under the entry point's name, or a module that registers its own entries on import.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from types import ModuleType
from typing import Generic, TypeVar, overload

from saezarr.errors import SaezarrError

T = TypeVar("T")


class UnknownEntry(SaezarrError, KeyError):
    """A name that no registered entry has."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """Named entries of one kind, filled from a package of built-in modules and from entry points."""

    def __init__(self, group: str, kind: str, builtin_package: str | None = None) -> None:
        self.group = group  # entry points of plugins: the group `saezarr.{group}`
        self.kind = kind  # what messages call an entry, e.g. "SAE format"
        self.builtin_package = builtin_package
        self._entries: dict[str, T] = {}
        self._loaded = False
        self._loading = False
        self._lock = threading.RLock()

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...
    @overload
    def register(self, name: str, entry: T) -> T: ...
    def register(self, name: str, entry: T | None = None) -> T | Callable[[T], T]:
        """Register `entry` under `name` (or, without `entry`, return a decorator that does)."""
        if entry is None:
            return lambda found: self.register(name, found)
        with self._lock:
            if name in self._entries and self._entries[name] is not entry:
                raise SaezarrError(f"{self.kind}: {name!r} is registered twice")
            self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove an entry (tests and plugins that replace one)."""
        with self._lock:
            self._entries.pop(name, None)

    def __getitem__(self, name: str) -> T:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise UnknownEntry(f"unknown {self.kind} {name!r} (known: {known})") from None

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(list(self._entries))

    def items(self) -> list[tuple[str, T]]:
        """Every (name, entry), in registration order: built-ins first, then plugins."""
        self._load()
        return list(self._entries.items())

    def _load(self) -> None:
        if self._loaded:
            return
        with self._lock:  # other threads wait for the loading thread
            if self._loaded or self._loading:  # _loading: a lookup from a module this thread is importing
                return
            self._loading = True
            try:
                self._load_builtins()
                self._load_plugins()
            finally:
                self._loading = False
            self._loaded = True

    def _load_builtins(self) -> None:
        if self.builtin_package is None:
            return
        package = importlib.import_module(self.builtin_package)
        for module in pkgutil.iter_modules(package.__path__, f"{self.builtin_package}."):
            importlib.import_module(module.name)

    def _load_plugins(self) -> None:
        for point in entry_points(group=f"saezarr.{self.group}"):
            loaded = point.load()
            if not isinstance(loaded, ModuleType):
                self.register(point.name, loaded)
