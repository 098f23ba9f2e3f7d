"""The conformance suite of storage backends, after zarr's `zarr.testing.store.StoreTests`: a test module subclasses
`StorageTests` with a `storage` fixture that gives a fresh, empty storage, and pytest runs every test on it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial

import pytest

from saezarr.store.storage.base import Storage

RACERS = 8
ROUNDS = 20


def _write_as(storage: Storage, key: str, writer: int) -> bool:
    """Writer `writer`'s put_if_absent of its own value."""
    return storage.put_if_absent(key, f"writer {writer}".encode())


def _race(racers: int, attempt: Callable[[int], object]) -> list[object]:
    """Run attempt(i) in `racers` threads released together; their results by i."""
    start = threading.Barrier(racers)
    results: list[object] = [None] * racers

    def run(i: int) -> None:
        start.wait()
        results[i] = attempt(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


class StorageTests:
    """Tests that every storage backend passes; subclasses give the `storage` fixture."""

    def test_get_of_a_missing_key_raises_key_error(self, storage: Storage) -> None:
        """A key never written has no value, version or size."""
        for read in (storage.get, storage.get_versioned, storage.stat):
            with pytest.raises(KeyError):
                read("absent/zarr.json")
        assert not storage.exists("absent/zarr.json")

    def test_put_then_get(self, storage: Storage) -> None:
        """A value comes back as written, nested keys and empty values included, and a put replaces it."""
        storage.put("zarr.json", b'{"a": 1}')
        storage.put("activations/c/0/1/0", bytes(range(256)) * 3)
        storage.put("_saezarr/done/x/0", b"")
        assert storage.get("zarr.json") == b'{"a": 1}'
        assert storage.get("activations/c/0/1/0") == bytes(range(256)) * 3
        assert storage.get("_saezarr/done/x/0") == b""
        storage.put("zarr.json", b"{}")
        assert storage.get("zarr.json") == b"{}"

    def test_stat_and_exists(self, storage: Storage) -> None:
        """stat gives the size; a later write has a time no earlier than an earlier one."""
        storage.put("a/b", b"12345")
        first = storage.stat("a/b")
        storage.put("a/c", b"")
        assert first.size == 5 and storage.stat("a/c").size == 0
        assert storage.stat("a/c").modified_ns >= first.modified_ns > 0
        assert storage.exists("a/b") and not storage.exists("a")  # a prefix of keys is no object

    def test_touch_makes_an_empty_object(self, storage: Storage) -> None:
        """A mark is an empty object; touching it again keeps it empty."""
        storage.touch("_saezarr/done/cfg/3")
        storage.touch("_saezarr/done/cfg/3")
        assert storage.get("_saezarr/done/cfg/3") == b""

    def test_reader_reads_parts(self, storage: Storage) -> None:
        """A reader has the object's length and any slice of its bytes."""
        data = bytes(range(200))
        storage.put("shard", data)
        with storage.reader("shard") as ranges:
            assert len(ranges) == 200
            assert ranges[10:20] == data[10:20] and ranges[-4:] == data[-4:] and ranges[190:400] == data[190:]
        with pytest.raises(KeyError), storage.reader("missing"):
            pass

    def test_put_if_absent(self, storage: Storage) -> None:
        """Only the first put_if_absent writes; a later one leaves the value."""
        assert storage.put_if_absent("lock", b"first")
        assert not storage.put_if_absent("lock", b"second")
        assert storage.get("lock") == b"first"

    def test_compare_and_swap(self, storage: Storage) -> None:
        """A swap with the current version writes; with a stale version, or None for a present key, it does not."""
        assert storage.compare_and_swap("record", None, b"one")
        assert not storage.compare_and_swap("record", None, b"again")
        value, version = storage.get_versioned("record")
        assert value == b"one"
        assert storage.compare_and_swap("record", version, b"two")
        assert not storage.compare_and_swap("record", version, b"three"), "a stale version must fail"
        assert storage.get("record") == b"two"
        assert storage.get_versioned("record")[1] != version
        assert not storage.compare_and_swap("missing", version, b"x")
        assert not storage.exists("missing")

    def test_list_prefix(self, storage: Storage) -> None:
        """Listing gives exactly the keys that start with the prefix, sorted."""
        keys = ["zarr.json", "_saezarr/done/a/0", "_saezarr/done/a/10", "_saezarr/done/ab/2", "activations/zarr.json"]
        for key in keys:
            storage.put(key, b"x")
        assert list(storage.list_prefix("")) == sorted(keys)
        assert list(storage.list_prefix("_saezarr/done/")) == sorted(keys[1:4])
        assert list(storage.list_prefix("_saezarr/done/a/")) == ["_saezarr/done/a/0", "_saezarr/done/a/10"]
        assert list(storage.list_prefix("_saezarr/done/a")) == sorted(keys[1:4])
        assert list(storage.list_prefix("nothing/")) == []

    def test_list_dir(self, storage: Storage) -> None:
        """A folder lists the names directly below it, objects and subfolders alike, sorted."""
        for key in ["zarr.json", "activations/zarr.json", "activations/c/0/0/0", "_saezarr/done/a/0"]:
            storage.put(key, b"x")
        assert storage.list_dir("") == ["_saezarr", "activations", "zarr.json"]
        assert storage.list_dir("activations") == ["c", "zarr.json"]
        assert storage.list_dir("activations/") == ["c", "zarr.json"]
        assert storage.list_dir("nothing") == []

    def test_delete(self, storage: Storage) -> None:
        """A deleted key is gone from reads and listings; deleting a missing key is no error."""
        storage.put("a/1", b"1")
        storage.put("a/2", b"2")
        storage.delete("a/1")
        storage.delete("a/1")
        storage.delete("never/written")
        assert not storage.exists("a/1")
        assert list(storage.list_prefix("a/")) == ["a/2"]

    def test_racing_put_if_absent_has_one_winner(self, storage: Storage) -> None:
        """Of writers released together, exactly one writes, and its value is the one kept."""
        for round_ in range(ROUNDS):
            key = f"race/{round_}"
            wins = _race(RACERS, partial(_write_as, storage, key))
            assert wins.count(True) == 1, wins
            assert storage.get(key) == f"writer {wins.index(True)}".encode()

    def test_racing_compare_and_swap_loses_no_update(self, storage: Storage) -> None:
        """Writers that each add to a counter by read-compare-swap, retrying when beaten, lose no addition."""
        storage.put("counter", b"0")

        def add(_: int) -> int:
            retries = 0
            for _ in range(ROUNDS):
                while True:
                    value, version = storage.get_versioned("counter")
                    if storage.compare_and_swap("counter", version, str(int(value) + 1).encode()):
                        break
                    retries += 1
            return retries

        _race(RACERS, add)
        assert int(storage.get("counter")) == RACERS * ROUNDS

    def test_readers_never_see_a_partial_put(self, storage: Storage) -> None:
        """While one thread replaces a large value, a reader sees only whole old or new values."""
        values = [bytes([i]) * (1 << 20) for i in range(2)]
        storage.put("big", values[0])
        seen: set[bytes] = set()

        def work(i: int) -> None:
            for n in range(ROUNDS):
                if i == 0:
                    storage.put("big", values[n % 2])
                else:
                    value = storage.get("big")  # one read: its first and last byte must come from one put
                    seen.add(value[:1] + value[-1:])

        _race(2, work)
        assert seen <= {b"\0\0", b"\1\1"}

    def test_writer_lock_is_exclusive(self, storage: Storage) -> None:
        """One lock holds the store: a second is refused until the first is released; force takes it anyway."""
        from saezarr.errors import SaezarrError

        first, second = storage.lock("_saezarr/lock"), storage.lock("_saezarr/lock")
        first.acquire()
        assert first.held and first.holder() is not None
        with pytest.raises(SaezarrError, match="another build"):
            second.acquire()
        first.release()
        second.acquire()
        assert second.held
        third = storage.lock("_saezarr/lock")
        third.acquire(force=True)
        assert third.held
        third.release()
        second.release()
