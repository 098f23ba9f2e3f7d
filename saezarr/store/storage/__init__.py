"""Where a store's bytes live: a small key-value interface (get, put, put-if-absent, compare-and-swap, list prefix,
delete) that every storage backend implements, and the registry of backends by URL scheme.

Keys are '/'-separated paths relative to the store's root; values are bytes. A plain path, or a `file://` URL, is
the local file system (`LocalStorage`); other schemes come from the `saezarr.storage` entry-point group, each entry a
factory that takes the location (the whole URL) and returns a `Storage`."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from saezarr.registry import Registry
from saezarr.store.storage.base import ObjectStat, Storage

__all__ = ["STORAGES", "ObjectStat", "Storage", "open_storage", "url_scheme"]

STORAGES: Registry[Callable[[str], Storage]] = Registry("storage", "storage backend", "saezarr.store.storage")
LOCAL_SCHEME = "file"

# `s3://b/x` as a Path is `s3:/b/x`; a scheme has two or more letters, so `C:/x` is no URL
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):/+")


def url_scheme(location: str | Path) -> tuple[str, int] | None:
    """The URL scheme of a location (as written) and where the part after `SCHEME:/` begins, or None for a path."""
    match = _URL.match(str(location))
    return (match.group(1), match.end() - 1) if match else None


def open_storage(location: str | Path) -> Storage:
    """The storage at a location: a path (or `file://` URL) is local, another scheme's backend comes from STORAGES."""
    scheme = url_scheme(location)
    if scheme is None:
        return STORAGES[LOCAL_SCHEME](str(location))
    return STORAGES[scheme[0].lower()](str(location))
