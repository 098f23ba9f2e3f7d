"""zarr v3's `Store` over a saezarr `Storage`, so that zarr and xarray open (and write) a store on any backend; a
local store is still opened by its path, with zarr's own LocalStore, as it always was. (Not in `store/storage/`,
whose modules are the backends its registry imports: this one imports zarr.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.storage import StorePath

from saezarr.store.storage.base import Storage


class StorageStore(Store):
    """A zarr store whose keys are the objects of a saezarr Storage (every call runs on a worker thread)."""

    supports_writes = True
    supports_deletes = True
    supports_listing = True

    def __init__(self, storage: Storage, *, read_only: bool = False):
        super().__init__(read_only=read_only)
        self.storage = storage

    def with_read_only(self, read_only: bool = False) -> StorageStore:
        """The same storage, opened read-only or not."""
        return type(self)(self.storage, read_only=read_only)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StorageStore) and other.storage is self.storage and other.read_only == self.read_only

    def __str__(self) -> str:
        return self.storage.location

    def __repr__(self) -> str:
        return f"StorageStore({self.storage.location!r})"

    async def get(
        self, key: str, prototype: BufferPrototype | None = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        """The object's bytes (or a range of them), None if there is none."""
        prototype = prototype or default_buffer_prototype()
        try:
            data = await asyncio.to_thread(self._read, key, byte_range)
        except KeyError:
            return None
        return prototype.buffer.from_bytes(data)

    def _read(self, key: str, byte_range: ByteRequest | None) -> bytes:
        if byte_range is None:
            return self.storage.get(key)
        with self.storage.reader(key) as ranges:
            return ranges[_slice(byte_range, len(ranges))]

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        """Each (key, range)'s bytes, None for an absent key."""
        return list(await asyncio.gather(*(self.get(key, prototype, part) for key, part in key_ranges)))

    async def exists(self, key: str) -> bool:
        """True if there is an object at key."""
        return await asyncio.to_thread(self.storage.exists, key)

    async def set(self, key: str, value: Buffer) -> None:
        """Write the object whole."""
        self._check_writable()
        await asyncio.to_thread(self.storage.put, key, value.to_bytes())

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        """Write the object unless there is one."""
        self._check_writable()
        await asyncio.to_thread(self.storage.put_if_absent, key, value.to_bytes())

    async def delete(self, key: str) -> None:
        """Remove the object, if there is one."""
        self._check_writable()
        await asyncio.to_thread(self.storage.delete, key)

    async def list(self) -> AsyncIterator[str]:
        """Every key."""
        for key in await asyncio.to_thread(lambda: list(self.storage.list_prefix(""))):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        """The keys that start with prefix."""
        for key in await asyncio.to_thread(lambda: list(self.storage.list_prefix(prefix))):
            yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        """The names (objects and folders) directly below prefix."""
        folder = prefix.rstrip("/")
        for name in await asyncio.to_thread(self.storage.list_dir, folder):
            yield name


def _slice(byte_range: ByteRequest, size: int) -> slice:
    """The part of an object of `size` bytes that a zarr byte request asks for."""
    if isinstance(byte_range, RangeByteRequest):
        return slice(byte_range.start, byte_range.end)
    if isinstance(byte_range, OffsetByteRequest):
        return slice(byte_range.offset, size)
    if isinstance(byte_range, SuffixByteRequest):
        return slice(max(0, size - byte_range.suffix), size)
    raise ValueError(f"unexpected byte range {byte_range!r}")


def zarr_location(storage: Storage, name: str = "", read_only: bool = False) -> Path | StorePath | StorageStore:
    """Where zarr and xarray find the node `name` ('': the root) of a store: a local one by its path, as always;
    another through a StorageStore."""
    if storage.folder is not None:
        return storage.folder / name if name else storage.folder
    store = StorageStore(storage, read_only=read_only)
    return StorePath(store, name) if name else store
