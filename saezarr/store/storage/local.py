"""The local file system as a storage: each key a file below the root, written as `durable.folders.write_durably`
writes (temporary file, fsync, rename, fsync of the folder), put-if-absent by a hard link of the finished temporary
file, compare-and-swap under an flock, and the writer lock `durable.locking.StoreLock`."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from saezarr.durable.folders import TEMP_SUFFIX, fsync_folder, write_durably
from saezarr.durable.locking import StoreLock, exclusive_flock
from saezarr.store.storage import LOCAL_SCHEME, STORAGES, url_scheme
from saezarr.store.storage.base import ObjectStat, Ranges, Storage

CAS_SUFFIX = ".cas"  # `.NAME.cas` beside a key: the flock that serializes compare-and-swap on it


class LocalStorage(Storage):
    """Files below a root folder; keys are their paths relative to it."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @classmethod
    def from_location(cls, location: str) -> LocalStorage:
        """The storage at a path or a `file://` URL."""
        scheme = url_scheme(location)
        return cls(location[scheme[1] :] if scheme else location)

    @property
    def location(self) -> str:
        """The root folder's path."""
        return str(self.root)

    @property
    def folder(self) -> Path:
        """The root folder: zarr opens the store by its path."""
        return self.root

    def list_dir(self, folder: str) -> list[str]:
        """The names of the files and subfolders in the key's folder, sorted (backend's own '.' names left out)."""
        try:
            return sorted(entry.name for entry in os.scandir(self.root / folder) if not entry.name.startswith("."))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def path(self, key: str) -> Path:
        """The file of a key."""
        return self.root / key

    def get(self, key: str) -> bytes:
        """The file's bytes (KeyError if there is no file)."""
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise KeyError(key) from None

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """The file's bytes and their sha256."""
        data = self.get(key)
        return data, _version(data)

    def put(self, key: str, value: bytes) -> None:
        """Write the file durably, by rename."""
        write_durably(self.path(key), value)

    def put_if_absent(self, key: str, value: bytes) -> bool:
        """Write a durable temporary file and hard-link it to the key's path, which fails if a file is there."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
        try:
            with open(temp, "wb") as file:
                file.write(value)
                file.flush()
                os.fsync(file.fileno())
            try:
                os.link(temp, path)
            except FileExistsError:
                return False
            fsync_folder(path.parent)
            return True
        finally:
            temp.unlink(missing_ok=True)

    def compare_and_swap(self, key: str, version: str | None, value: bytes) -> bool:
        """Compare the file's sha256 with version and write it, holding the key's flock meanwhile."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with exclusive_flock(path.with_name(f".{path.name}{CAS_SUFFIX}")):
            if version is None:
                return self.put_if_absent(key, value)
            try:
                current = _version(self.get(key))
            except KeyError:
                return False
            if current != version:
                return False
            self.put(key, value)
            return True

    def list_prefix(self, prefix: str) -> Iterator[str]:
        """The files whose keys start with prefix, sorted, walking only the folders that can hold them."""
        folder = prefix.rpartition("/")[0]
        keys: list[str] = []
        for parent, folders, files in os.walk(self.root / folder if folder else self.root):
            here = Path(parent).relative_to(self.root).as_posix()
            here = "" if here == "." else f"{here}/"
            folders[:] = [name for name in folders if not name.startswith(".") and _may_hold(f"{here}{name}/", prefix)]
            keys.extend(here + name for name in files if not name.startswith(".") and (here + name).startswith(prefix))
        return iter(sorted(keys))

    def delete(self, key: str) -> None:
        """Remove the file (none there: nothing to do)."""
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            self.path(key).unlink()

    def stat(self, key: str) -> ObjectStat:
        """The file's size and modification time (KeyError if there is no file)."""
        try:
            info = os.stat(self.path(key))
        except (FileNotFoundError, NotADirectoryError):
            raise KeyError(key) from None
        if not stat.S_ISREG(info.st_mode):
            raise KeyError(key)
        return ObjectStat(info.st_size, info.st_mtime_ns)

    def touch(self, key: str) -> None:
        """Create the empty file (or renew its time); not fsynced: a lost mark only costs its unit again."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()

    @contextlib.contextmanager
    def reader(self, key: str) -> Iterator[Ranges]:
        """The open file, read in parts."""
        try:
            file = FileRanges(self.path(key))
        except (FileNotFoundError, NotADirectoryError):
            raise KeyError(key) from None
        with file:
            yield file

    def lock(self, key: str) -> StoreLock:
        """The flock-and-JSON lock file at key."""
        return StoreLock(self.path(key), self.root)


class FileRanges:
    """A file read in parts instead of whole: its len() and byte slices."""

    def __init__(self, path: Path):
        self.file = open(path, "rb", buffering=0)
        self.size = os.fstat(self.file.fileno()).st_size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, part: slice) -> bytes:
        start, stop, _ = part.indices(self.size)
        self.file.seek(start)
        return self.file.read(max(0, stop - start))

    def __enter__(self) -> FileRanges:
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


def _version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _may_hold(folder: str, prefix: str) -> bool:
    """True if keys in folder (ending in '/') can start with prefix."""
    return folder.startswith(prefix) or prefix.startswith(folder)


STORAGES.register(LOCAL_SCHEME, LocalStorage.from_location)
