"""zarr and xarray read (and write) a store on any storage through `StorageStore`; a local one still by path."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.storage import StorePath

from saezarr.build.pipeline import BuildOptions, build
from saezarr.store.format import ACTIVATIONS, Store
from saezarr.store.reading import open_existing, open_store
from saezarr.store.storage import STORAGES
from saezarr.store.storage.local import LocalStorage
from saezarr.store.zarr_adapter import StorageStore, zarr_location
from saezarr.testing.memory_storage import MemoryStorage

_names = itertools.count()


@pytest.fixture
def memory_scheme():
    """`memory://NAME` opens the process's in-memory storage NAME while the test runs."""
    STORAGES.register("memory", MemoryStorage.named)
    yield
    STORAGES.unregister("memory")


@pytest.fixture(scope="module")
def local_store(tiny_store_chunk64) -> Path:
    """`build()` of the tiny model and the demo CSV in chunks of 64 fragments (tests/conftest.py): read only."""
    return tiny_store_chunk64.path


def copy_to_memory(path: Path) -> str:
    """A new memory:// storage holding every object of the local store at path; its URL."""
    url = f"memory://copy-{next(_names)}"
    local, memory = LocalStorage(path), MemoryStorage.named(url)
    for key in local.list_prefix(""):
        memory.put(key, local.get(key))
    return url


def test_a_local_store_is_still_opened_by_path(local_store):
    """zarr opens a local store by its folder, with its own LocalStore, as before the storage seam."""
    assert zarr_location(LocalStorage(local_store), ACTIVATIONS) == local_store / ACTIVATIONS
    assert zarr_location(LocalStorage(local_store)) == local_store


def test_a_store_in_memory_reads_as_the_same_store_on_disk(local_store, memory_scheme):
    """Array, coordinates, units and the xarray view of a copy in memory equal those of the local store."""
    url = copy_to_memory(local_store)
    local, memory = Store(local_store), open_existing(url)
    assert isinstance(memory.zarr_location(ACTIVATIONS), StorePath)
    np.testing.assert_array_equal(memory.array[...], local.array[...])
    assert (memory.array[...] > 0).any()
    for name in ("layer", "sae_path", "fragment_text"):
        np.testing.assert_array_equal(memory.coordinate(name), local.coordinate(name))
    np.testing.assert_array_equal(memory.done_matrix(), local.done_matrix())
    np.testing.assert_array_equal(memory.read_chunk(1, 0, lambda x: x), local.read_chunk(1, 0, lambda x: x))
    assert memory.bytes_on_disk() == local.bytes_on_disk() > 0
    on_disk, in_memory = open_store(local_store), open_store(url)
    assert in_memory.identical(on_disk.load())
    assert (in_memory["activations"].values == on_disk["activations"].values).all()


def test_zarr_writes_and_lists_through_the_adapter():
    """zarr creates, writes, reads back (in byte ranges, through sharding) and lists an array in a Storage."""
    storage = MemoryStorage()
    root = zarr.open_group(StorageStore(storage), mode="w")
    array = root.create_array("x", shape=(8, 6), chunks=(2, 3), shards=(4, 6), dtype="float32")
    values = np.arange(48, dtype=np.float32).reshape(8, 6)
    array[...] = values
    np.testing.assert_array_equal(
        zarr.open_array(StorageStore(storage, read_only=True), path="x")[2:5, 1:4], values[2:5, 1:4]
    )
    assert list(storage.list_prefix("x/c/")) == ["x/c/0/0", "x/c/1/0"]
    assert [name for name, _ in zarr.open_group(StorageStore(storage), mode="r").members()] == ["x"]
    with pytest.raises(ValueError):
        zarr.open_array(StorageStore(storage, read_only=True), path="x", mode="r")[0, 0] = 1


def test_a_build_in_memory_equals_the_build_on_disk(tiny, local_store, memory_scheme):
    """A build into a memory:// storage (created in place, root last) holds the local build's data; a second build
    over it with overwrite replaces it whole."""
    url = f"memory://build-{next(_names)}"
    options = BuildOptions(
        input=tiny.csv, output=Path(url), config_file=tiny.config_file, quiet=True, chunk_fragments=64
    )
    summary = build(options)
    assert summary.complete and summary.bytes_on_disk > 0
    local, memory = Store(local_store), open_existing(url)
    np.testing.assert_array_equal(memory.array[...], local.array[...])
    assert memory.storage.get("activations/zarr.json") == local.storage.get("activations/zarr.json")
    first = memory.identity
    build(BuildOptions(**{**options.__dict__, "overwrite": True}))
    again = open_existing(url)
    assert again.identity != first
    np.testing.assert_array_equal(again.array[...], local.array[...])
    assert open_store(url).equals(open_store(local_store).load())  # all but the attributes (store_id differs)
