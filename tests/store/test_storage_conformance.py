"""Every storage backend passes the same conformance suite: the local file system, the in-memory one and object
storage on a loopback S3 server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from s3tools import clients_of

from saezarr.durable.folders import TEMP_SUFFIX
from saezarr.registry import UnknownEntry
from saezarr.store.storage import open_storage
from saezarr.store.storage.base import Storage
from saezarr.store.storage.local import LocalStorage
from saezarr.testing.memory_storage import MemoryStorage
from saezarr.testing.s3_server import MotoServer
from saezarr.testing.storage import StorageTests


class TestLocalStorage(StorageTests):
    @pytest.fixture
    def storage(self, tmp_path: Path) -> LocalStorage:
        (tmp_path / "store.zarr").mkdir()  # as a store's folder is, once created
        return LocalStorage(tmp_path / "store.zarr")


class TestMemoryStorage(StorageTests):
    @pytest.fixture
    def storage(self) -> MemoryStorage:
        return MemoryStorage()


def test_local_put_is_a_durable_rename_that_leaves_no_temporary_file(tmp_path, monkeypatch):
    """The file is fsynced before the rename and its folder after; nothing else is left beside it."""
    storage = LocalStorage(tmp_path)
    synced: list[str] = []
    real_fsync = os.fsync

    def watching(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", watching)
    storage.put("activations/c/0/0/0", b"shard")
    assert synced[0].endswith(TEMP_SUFFIX) and synced[-1] == str(tmp_path / "activations/c/0/0")
    assert os.listdir(tmp_path / "activations/c/0/0") == ["0"]


def test_local_listing_skips_temporary_files_and_walks_only_the_prefix(tmp_path):
    """A write's temporary file (a dot name) is never a key; a folder outside the prefix is not entered."""
    storage = LocalStorage(tmp_path)
    storage.put("_saezarr/done/a/0", b"")
    (tmp_path / "_saezarr/done/a/.0.123.ab.tmp").write_bytes(b"half")
    (tmp_path / "activations").mkdir()
    (tmp_path / "activations").chmod(0)  # entering it would fail
    try:
        assert list(storage.list_prefix("_saezarr/")) == ["_saezarr/done/a/0"]
    finally:
        (tmp_path / "activations").chmod(0o755)


def test_locations_open_their_backend(tmp_path):
    """A path and a file:// URL are the local file system; an unknown scheme is refused naming the known ones."""
    assert open_storage(tmp_path).root == tmp_path
    assert open_storage(f"file://{tmp_path}").root == tmp_path
    with pytest.raises(
        UnknownEntry, match="unknown storage backend 'nosuch' \\(known: abfs, abfss, az, file, gs, http, https, s3\\)"
    ):
        open_storage("nosuch://bucket/store.zarr")


class TestObjectStorage(StorageTests):
    """The object-store backend against a real S3 server on loopback (moto), conditional writes included."""

    @pytest.fixture
    def storage(self, bucket: str) -> Storage:
        return open_storage(f"s3://{bucket}/store.zarr")


def test_the_loopback_s3_server_applies_each_conditional_write_whole():
    """Racing compare-and-swaps lose no update even where the server's threads switch every microsecond: moto alone
    checks a PUT's If-Match and then writes, and so lost updates in 3 of 5 such races (1 to 2 of 160 each)."""
    with MotoServer(switch_interval_s=1e-6) as server, clients_of(server):
        for race in range(3):
            storage = open_storage(f"s3://{server.make_bucket(f'race-{race}')}/store.zarr")
            StorageTests().test_racing_compare_and_swap_loses_no_update(storage)
