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

__all__ = [
    "STORAGES",
    "Location",
    "absolute_location",
    "ObjectStat",
    "Storage",
    "as_location",
    "is_url",
    "open_storage",
    "url_scheme",
]

STORAGES: Registry[Callable[[str], Storage]] = Registry("storage", "storage backend", "saezarr.store.storage")
LOCAL_SCHEME = "file"

# `s3://b/x` as a Path is `s3:/b/x`; a scheme has two or more letters, so `C:/x` is no URL
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):/+")


def url_scheme(location: str | Path) -> tuple[str, int] | None:
    """The URL scheme of a location (as written) and where the part after `SCHEME:/` begins, or None for a path."""
    match = _URL.match(str(location))
    return (match.group(1), match.end() - 1) if match else None


Location = Path | str  # a store on the local file system by its path, or one elsewhere by its URL (as written)


def as_location(value: str | Path) -> Location:
    """A store's location as given: a path (or `file://` URL) as a Path, another URL as a string (`Path` would fold
    its `//`; a URL already folded into a Path is mended)."""
    text = str(value)
    scheme = url_scheme(text)
    if scheme is None:
        return Path(value)
    name, rest = scheme[0].lower(), text[scheme[1] :]
    if name == LOCAL_SCHEME:
        return Path("/" + rest.lstrip("/"))
    if text[len(name) :].startswith("://"):
        return name + text[len(name) :]
    return f"{name}://{rest.lstrip('/')}"


def absolute_location(location: Location) -> Location:
    """A location that means the same from any working folder: a path resolved, a URL as it is."""
    return location if isinstance(location, str) else location.resolve()


def is_url(location: str | Path) -> bool:
    """True for a store that is not on the local file system (a URL other than `file://`)."""
    return isinstance(as_location(location), str)


def open_storage(location: str | Path) -> Storage:
    """The storage at a location: a path (or `file://` URL) is local, another scheme's backend comes from STORAGES."""
    scheme = url_scheme(location)
    if scheme is None:
        return STORAGES[LOCAL_SCHEME](str(location))
    return STORAGES[scheme[0].lower()](str(location))


def unreachable(location: Location) -> str | None:
    """Why this process cannot reach the store at location (checked on each dask worker), or None if it can."""
    from saezarr.errors import SaezarrError

    try:
        open_storage(location).exists("zarr.json")
    except SaezarrError as exc:
        return f"cannot reach the store ({exc.message}); give every worker the same credentials and endpoint"
    return None
