"""Readers during a build: xarray, open_store, zarr and `info` reading a store that another process is writing."""

from __future__ import annotations

import errno
import os
import re

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from faultkit import ACTIVATIONS, REPORT, STATE, Run, config_names, leftovers

import saezarr
from saezarr.durable.folders import write_durably as _write_durably
from saezarr.store.reading import store_info

CHUNK = 4  # many small units, so the readers meet many writes


def _marked(store) -> set[tuple[int, int]]:
    """The units marked now, as (config index, chunk)."""
    names = config_names(store)
    marks = set()
    for ci, name in enumerate(names):
        folder = store / STATE / "done" / name
        if folder.is_dir():
            marks.update((ci, int(m.name)) for m in folder.iterdir())
    return marks


def _read(store, turn: int, config: int) -> np.ndarray:
    """One config's activations over every fragment, read the way a notebook would, by turns through each reader."""
    if turn % 3 == 0:
        with xr.open_zarr(store) as dataset:
            return dataset[ACTIVATIONS][config].values
    if turn % 3 == 1:
        return saezarr.open_store(store)[ACTIVATIONS][config].values
    return zarr.open_array(store / ACTIVATIONS, mode="r")[config]


def _new_shards(store, checked: set) -> list[tuple[int, int]]:
    """Units whose shard file has appeared since the last look (a fresh build writes each shard once)."""
    found = []
    base = store / ACTIVATIONS / "c"
    for config in os.scandir(base) if base.is_dir() else []:
        for chunk in os.scandir(config.path):
            unit = (int(config.name), int(chunk.name))
            if unit not in checked and os.path.exists(os.path.join(chunk.path, "0")):
                found.append(unit)
    return found


def test_readers_during_a_build_never_see_a_torn_shard(tiny, tmp_path):
    """Each shard is read the moment it appears, and the whole store by turns through each reader.

    A shard written in place would be seen empty or half-written (a decode error, or NaN where data belongs);
    one renamed into place is whole from the moment its name exists.
    """
    store = tmp_path / "growing.zarr"
    csv = tmp_path / "twice.csv"  # long enough a build for several whole-config reads on a fast machine
    rows = pd.read_csv(tiny.csv)
    pd.concat([rows] * 2).to_csv(csv, index=False)
    run = Run(
        [
            "build",
            "--input",
            str(csv),
            "--output",
            str(store),
            "--config",
            str(tiny.config_file),
            "--chunk-fragments",
            str(CHUNK),
            "--quiet",
        ],
        tmp_path / "logs",
    )
    seen: dict[tuple[int, int], np.ndarray] = {}  # each shard, read as soon as its name appeared
    marked_reads: dict[tuple[int, int], np.ndarray] = {}  # marked units, from the whole-config reads
    reads = 0
    try:
        assert run.wait_for(lambda: (store / STATE / "done").is_dir()), run.stderr
        array = zarr.open_array(store / ACTIVATIONS, mode="r")
        n_configs = array.shape[0]
        while run.alive():
            for ci, chunk in _new_shards(store, seen.keys()):
                seen[(ci, chunk)] = array[ci, chunk * CHUNK : (chunk + 1) * CHUNK]
            if len(seen) // 40 > reads:  # now and then, everything, as a notebook would
                marked = _marked(store)  # before the read: these units must be final in what it returns
                config = reads % n_configs
                values = _read(store, reads, config)  # a torn shard fails to decode here (zstd, CRC32C checksums)
                assert store_info(store)["n_fragments"] == values.shape[0]
                for ci, chunk in marked:
                    if ci == config:
                        marked_reads[(ci, chunk)] = values[chunk * CHUNK : (chunk + 1) * CHUNK]
                reads += 1
        assert run.finish() == 0, run.stderr
    finally:
        run.close()
    REPORT["whole-config reads during a build"] += reads
    REPORT["shards read as they appeared"] += len(seen)
    final = zarr.open_array(store / ACTIVATIONS, mode="r")[...]
    assert reads >= 3 and len(seen) >= 100 and marked_reads, (
        f"the build ended too soon to test: {reads} reads, {len(seen)} units seen"
    )
    wrong = [
        unit
        for read in (seen, marked_reads)
        for unit, values in read.items()
        if values.tobytes() != final[unit[0], unit[1] * CHUNK : (unit[1] + 1) * CHUNK].tobytes()
    ]
    assert not wrong, f"{len(wrong)} units read during the build differ from the finished store: {wrong[:10]}"
    assert not np.isnan(final).any()
    assert leftovers(store) == [] and not list(store.rglob(".*.tmp")), "temporary files left after the build"


def test_a_shard_appears_whole_by_rename(tmp_path, monkeypatch):
    """While the new bytes are written and synced, the shard's name still holds the old file, whole."""
    shard = tmp_path / "c" / "0" / "7" / "0"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"old" * 100)  # e.g. a torn shard an earlier, killed build left unmarked
    new = bytes(range(256)) * 40
    during = []
    real_fsync = os.fsync

    def watching(fd):
        if os.path.isfile(f"/proc/self/fd/{fd}"):  # the file's own fsync, not its folder's
            temps = sorted(shard.parent.glob(".0.*.tmp"))
            during.append((shard.read_bytes(), [t.name for t in temps], [t.read_bytes() for t in temps]))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", watching)
    _write_durably(shard, new)
    assert len(during) == 1
    old_bytes, temp_names, temp_bytes = during[0]
    assert old_bytes == b"old" * 100
    assert temp_bytes == [new] and re.fullmatch(rf"\.0\.{os.getpid()}\.[0-9a-f]+\.tmp", temp_names[0])
    assert shard.read_bytes() == new
    assert sorted(p.name for p in shard.parent.iterdir()) == ["0"]


def test_a_failed_rename_leaves_the_old_shard_and_no_temporary_file(tmp_path, monkeypatch):
    shard = tmp_path / "c" / "0" / "7" / "0"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"old")

    def no_space(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(OSError, match="No space left on device"):
        _write_durably(shard, b"new")
    assert shard.read_bytes() == b"old"
    assert sorted(p.name for p in shard.parent.iterdir()) == ["0"]
