"""Full disk and unwritable output: one clear line, exit code 1, nothing trusted that was not written; resume finishes."""

from __future__ import annotations

import errno
import os
import shutil
import threading

import pytest
import zarr.storage._local as zarr_local
from faultkit import (
    ACTIVATIONS,
    REPORT,
    STATE,
    assert_same_store,
    build_args,
    config_names,
    copy_store,
    count_marks,
    marked_units_wrong,
    one_error_line,
    unit_paths,
)

import saezarr.build.planning
import saezarr.durable.folders
import saezarr.store.format
from saezarr.cli import main
from saezarr.testing.synthetic import DEMO_CSV


class _Budget:
    """Lets `ok` calls through, then raises the given OSError on every later one (thread-safe)."""

    def __init__(self, ok: int, code: int):
        self.left, self.code, self.failed = ok, code, 0
        self._lock = threading.Lock()

    def spend(self, filename: str) -> None:
        with self._lock:
            if self.left > 0:
                self.left -= 1
                return
            self.failed += 1
        raise OSError(self.code, os.strerror(self.code), filename)


def _check_failed_run(capsys, code: int, store, reference, *expect: str) -> str:
    out = capsys.readouterr()
    assert code == 1, out.err
    line = one_error_line(out.err)
    for text in (str(store), "--resume", *expect):
        assert text in line, f"{text!r} not in {line!r}"
    assert not (store / STATE / "lock").exists(), "the lock must be released after a write error"
    assert not marked_units_wrong(store, reference)
    return line


@pytest.mark.parametrize("overlap", [False, True], ids=["CPU writes", "GPU-mode writes"])
@pytest.mark.parametrize("after", [0, 7])
def test_enospc_in_store_write_shard(demo_config, demo_reference, tmp_path, monkeypatch, capsys, after, overlap):
    store = tmp_path / "full.zarr"
    monkeypatch.setattr(saezarr.build.planning, "overlaps_writes", lambda device: overlap)
    budget = _Budget(after, errno.ENOSPC)
    original = saezarr.store.format.Store.write_shard

    def write_shard(self, config_index, chunk, latents):
        budget.spend(str(self.path / ACTIVATIONS / f"c/{config_index}/{chunk}/0"))
        return original(self, config_index, chunk, latents)

    monkeypatch.setattr(saezarr.store.format.Store, "write_shard", write_shard)
    code = main(build_args(DEMO_CSV, store, demo_config))
    _check_failed_run(capsys, code, store, demo_reference, "No space left on device")
    assert count_marks(store) <= after
    monkeypatch.undo()
    assert main(build_args(DEMO_CSV, store, demo_config, "--resume")) == 0
    REPORT["disk faults injected (each resumed to an equal store)"] += 1
    assert_same_store(store, demo_reference)


class _FailingFile:
    """A file whose write() fails like a real one: an OSError naming no file."""

    def __init__(self, file, budget: _Budget):
        self._file, self._budget = file, budget

    def write(self, data):
        try:
            self._budget.spend(None)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror) from None
        return self._file.write(data)

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS], ids=["ENOSPC", "EACCES", "EROFS"])
def test_oserror_writing_a_shard_file(demo_config, demo_reference, tmp_path, monkeypatch, capsys, code):
    """The fault at the lowest level: the write() of a shard file's bytes."""
    store = copy_store(demo_reference, tmp_path / "faulty.zarr")
    for chunk in range(5, 10):  # five chunks still to build, as after a crash
        for ci in range(len(config_names(store))):
            for path in unit_paths(store, ci, chunk):
                path.unlink()
    budget = _Budget(11, code)

    def failing_open(path, mode="r", *args, **kwargs):
        file = open(path, mode, *args, **kwargs)
        return _FailingFile(file, budget) if f"{ACTIVATIONS}/c/" in str(path) and "w" in mode else file

    monkeypatch.setattr(saezarr.durable.folders, "open", failing_open, raising=False)  # write_durably opens the file
    result = main(build_args(DEMO_CSV, store, demo_config, "--resume"))
    line = _check_failed_run(capsys, result, store, demo_reference, os.strerror(code))
    assert f"{ACTIVATIONS}/c/" in line, "the message should name the file that could not be written"
    assert budget.failed >= 1
    monkeypatch.undo()
    assert main(build_args(DEMO_CSV, store, demo_config, "--resume")) == 0
    REPORT["disk faults injected (each resumed to an equal store)"] += 1
    assert_same_store(store, demo_reference)


def _reopened(store, remove_config: int, in_the_way: str):
    """Forget one config's units and put a regular file where its folder must be made: a real OSError, even for root."""
    name = config_names(store)[remove_config]
    shutil.rmtree(store / STATE / "done" / name)
    if in_the_way == "marks":
        blocker = store / STATE / "done" / name
    else:
        shutil.rmtree(store / ACTIVATIONS / "c" / str(remove_config))
        blocker = store / ACTIVATIONS / "c" / str(remove_config)
    blocker.write_text("not a folder")
    return blocker


@pytest.mark.parametrize("in_the_way", ["marks", "shards"])
def test_real_unwritable_folder_then_resume(demo_config, demo_reference, tmp_path, capsys, in_the_way):
    store = copy_store(demo_reference, tmp_path / "blocked.zarr")
    blocker = _reopened(store, 3, in_the_way)
    args = build_args(DEMO_CSV, store, demo_config, "--resume")
    code = main(args)
    _check_failed_run(capsys, code, store, demo_reference)
    blocker.unlink()  # the cause fixed
    assert main(args) == 0
    REPORT["disk faults injected (each resumed to an equal store)"] += 1
    assert_same_store(store, demo_reference)


def test_enospc_while_creating_the_store_leaves_nothing(demo_config, demo_reference, tmp_path, monkeypatch, capsys):
    store = tmp_path / "never.zarr"
    budget = _Budget(4, errno.ENOSPC)
    original = zarr_local._put

    def put(path, value, exclusive=False):
        budget.spend(str(path))
        return original(path, value, exclusive)

    monkeypatch.setattr(zarr_local, "_put", put)
    code = main(build_args(DEMO_CSV, store, demo_config))
    out = capsys.readouterr()
    assert code == 1, out.err
    line = one_error_line(out.err)
    assert str(store) in line and "No space left on device" in line
    assert not store.exists(), "a store that could not be created must not be left half made"
    assert list(tmp_path.iterdir()) == [], f"left behind: {list(tmp_path.iterdir())}"
    monkeypatch.undo()
    assert main(build_args(DEMO_CSV, store, demo_config, "--resume")) == 0
    REPORT["disk faults injected (each resumed to an equal store)"] += 1
    assert_same_store(store, demo_reference)


def test_lock_path_taken_by_a_folder(demo_config, demo_reference, tmp_path, capsys):
    store = copy_store(demo_reference, tmp_path / "lockdir.zarr")
    (store / STATE / "lock").mkdir()
    code = main(build_args(DEMO_CSV, store, demo_config, "--resume"))
    out = capsys.readouterr()
    assert code in (1, 2), out.err
    line = one_error_line(out.err)
    assert "lock" in line
    assert (store / STATE / "lock").is_dir()
