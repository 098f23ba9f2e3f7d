"""Torn writes: a crash mid-write leaves a damaged shard without its mark; a mark without its shard is not trusted."""

from __future__ import annotations

import os
import subprocess
import tempfile

import numpy as np
import pytest
from faultkit import (
    ACTIVATIONS,
    REPORT,
    assert_same_store,
    build_args,
    copy_store,
    leftovers,
    unit_paths,
)

from saezarr.cli import main
from saezarr.testing.synthetic import DEMO_CSV


def _resume(store, demo_config) -> None:
    assert main(build_args(DEMO_CSV, store, demo_config, "--resume")) == 0


def _untouched_probe(store):
    """A unit no test here damages, to tell a resume that redid only the damaged units from one that redid all."""
    shard, _ = unit_paths(store, 0, 30)
    return shard, shard.stat().st_mtime_ns, shard.stat().st_ino


_DAMAGE = {
    "empty file": lambda b, rng: b"",
    "garbage head, index intact": lambda b, rng: rng.integers(0, 256, 100, dtype=np.uint8).tobytes() + b[100:],
    "truncated to half": lambda b, rng: b[: len(b) // 2],
    "one byte short": lambda b, rng: b[:-1],
    "garbage of the same size": lambda b, rng: rng.integers(0, 256, len(b), dtype=np.uint8).tobytes(),
    "zero-filled": lambda b, rng: bytes(len(b)),
    "longer than written": lambda b, rng: b + bytes(4096),
}


@pytest.mark.parametrize("damage", list(_DAMAGE))
def test_torn_unmarked_shard_is_rewritten(demo_config, demo_reference, tmp_path, damage):
    store = copy_store(demo_reference, tmp_path / "torn.zarr")
    rng = np.random.default_rng(7)
    for ci, chunk in ((2, 10), (5, 33)):  # a full chunk, and the last, partial one
        shard, mark = unit_paths(store, ci, chunk)
        mark.unlink()  # the crash came before the mark
        shard.write_bytes(_DAMAGE[damage](shard.read_bytes(), rng))
    probe, mtime, inode = _untouched_probe(store)
    REPORT["torn shards injected"] += 2
    _resume(store, demo_config)
    assert_same_store(store, demo_reference)
    assert (probe.stat().st_mtime_ns, probe.stat().st_ino) == (mtime, inode), "resume rewrote an intact unit"


def test_mark_without_its_shard_is_not_trusted(demo_config, demo_reference, tmp_path):
    store = copy_store(demo_reference, tmp_path / "unbacked.zarr")
    shard, mark = unit_paths(store, 1, 5)
    shard.unlink()  # the mark stays
    shard, mark = unit_paths(store, 3, 7)
    shard.write_bytes(b"")  # a mark over an empty shard file (data lost, mark kept)
    import shutil

    shutil.rmtree(store / ACTIVATIONS / "c" / "4")  # every shard of one config gone, all its marks kept
    assert mark.exists()
    _resume(store, demo_config)
    REPORT["marked units with missing or empty shards (recomputed)"] += 2 + 34
    assert_same_store(store, demo_reference)


def _kill_leftover(store, ci: int, chunk: int) -> str:
    """What zarr leaves when a process dies mid-write: `<shard>.<uuid>.partial` and no shard, no mark."""
    shard, mark = unit_paths(store, ci, chunk)
    half = shard.read_bytes()[: shard.stat().st_size // 2]
    mark.unlink()
    shard.unlink()
    partial = shard.with_suffix(".3f2a9c0e5b7d4e1f8a6b2c9d0e1f2a3b.partial")
    partial.write_bytes(half)
    return partial.relative_to(store).as_posix()


def test_resume_after_a_write_killed_midway_equals_reference(demo_config, demo_reference, tmp_path):
    store = copy_store(demo_reference, tmp_path / "partial.zarr")
    _kill_leftover(store, 2, 5)
    _resume(store, demo_config)
    assert_same_store(store, demo_reference)  # .partial files aside


def test_resume_removes_partial_files_left_by_a_killed_write(demo_config, demo_reference, tmp_path):
    store = copy_store(demo_reference, tmp_path / "litter.zarr")
    _kill_leftover(store, 2, 5)
    _resume(store, demo_config)
    assert leftovers(store) == []


def test_resume_removes_temporary_shards_left_by_a_killed_write(demo_config, demo_reference, tmp_path):
    """A kill between writing a shard's temporary file and renaming it leaves `.KEY.PID.RANDOM.tmp`, unmarked."""
    store = copy_store(demo_reference, tmp_path / "tmp-litter.zarr")
    shard, mark = unit_paths(store, 2, 5)
    half = shard.read_bytes()[: shard.stat().st_size // 2]
    mark.unlink()
    shard.unlink()
    (shard.parent / f".{shard.name}.4242.0a1b2c3d.tmp").write_bytes(half)
    (shard.parent / f".{shard.name}.4243.9f8e7d6c.tmp").write_bytes(b"")
    _resume(store, demo_config)
    assert sorted(p.name for p in store.rglob(".*.tmp")) == []
    assert_same_store(store, demo_reference)


def test_build_removes_staging_left_by_a_killed_creation(demo_config, tmp_path):
    store = tmp_path / "fresh.zarr"
    # what a SIGKILL during create_store leaves beside the output (the crash test meets this for real)
    dead = subprocess.Popen(["true"])
    dead.wait()  # reaped: its pid names no process now
    staging = tempfile.mkdtemp(prefix=f".{store.name}.{dead.pid}.", suffix=".creating", dir=tmp_path)
    os.makedirs(os.path.join(staging, "activations"))
    assert main(build_args(DEMO_CSV, store, demo_config, "--resume", "--max-chunks", "1")) == 0
    assert sorted(p.name for p in tmp_path.glob(f".{store.name}.*")) == []
