"""Crash anywhere: SIGKILL a real `saezarr build` at many moments, resume each time, end bitwise equal.

Also SIGINT: the build stops with exit code 130 and says how to resume; a second writer is refused meanwhile.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from faultkit import (
    REPORT,
    Run,
    assert_same_store,
    build_args,
    config_names,
    count_marks,
    leftovers,
    marked_units_wrong,
    note,
    one_error_line,
    tree_digest,
    unit_paths,
    unmarked_shards,
)

from saezarr.cli import main
from saezarr.testing.synthetic import DEMO_CSV

MIN_KILL_POINTS = 10


def _lock_pid(store: Path) -> int | None:
    try:
        return int(json.loads((store / "_saezarr" / "lock").read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _pending_units(store: Path, reference: Path) -> list[tuple[int, int]]:
    """Units not yet marked, in the order the build writes them (chunk by chunk, configs in order)."""
    names = config_names(reference)
    n_chunks = len(list((reference / "_saezarr" / "done" / names[0]).iterdir()))
    return [
        (ci, chunk)
        for chunk in range(n_chunks)
        for ci in range(len(names))
        if not (store / "_saezarr" / "done" / names[ci] / str(chunk)).exists()
    ]


@dataclass
class Ctx:
    store: Path
    reference: Path
    total: int
    run: Run
    marks_at_start: int


def _after(seconds: float):
    def arm(c: Ctx) -> bool:
        return c.run.wait_for(lambda: time.monotonic() - c.run.started >= seconds)

    return arm


def _staging_exists(c: Ctx) -> bool:
    # the staging folder lives a fraction of a second; should a poll miss it, the store it became stops the run
    return c.run.wait_for(
        lambda: any(c.store.parent.glob(f".{c.store.name}.*.creating")) or (c.store / "zarr.json").exists()
    )


def _store_created(c: Ctx) -> bool:
    return c.run.wait_for(lambda: (c.store / "zarr.json").exists())


def _lock_taken(c: Ctx) -> bool:
    return c.run.wait_for(lambda: _lock_pid(c.store) == c.run.pid)


def _unit_folder_appears(skip: int):
    """The folder of a pending unit's shard is made just before the shard is written: kill mid-write."""

    def arm(c: Ctx) -> bool:
        ci, chunk = _pending_units(c.store, c.reference)[skip]
        folder = unit_paths(c.store, ci, chunk)[0].parent
        return c.run.wait_for(folder.exists)

    return arm


def _shard_appears(skip: int):
    """A pending unit's shard file is in place; its mark comes next: kill between data and mark."""

    def arm(c: Ctx) -> bool:
        ci, chunk = _pending_units(c.store, c.reference)[skip]
        shard = unit_paths(c.store, ci, chunk)[0]
        return c.run.wait_for(shard.exists)

    return arm


def _marks(delta: int, then_sleep: float = 0.0):
    """Right when the `delta`-th new completion mark appears (optionally a moment later)."""

    def arm(c: Ctx) -> bool:
        target = min(c.marks_at_start + delta, c.total)
        hit = c.run.wait_for(lambda: count_marks(c.store) >= target)
        if hit and then_sleep:
            time.sleep(then_sleep)
        return hit

    return arm


def _marks_left(left: int):
    def arm(c: Ctx) -> bool:
        return c.run.wait_for(lambda: count_marks(c.store) >= c.total - left)

    return arm


KILL_POINTS = [  # the demo build writes 204 units (34 chunks x 6 configs)
    ("1.0 s after start (importing)", _after(1.0)),
    ("while the store is being created (staging folder)", _staging_exists),
    ("lock taken, no unit written yet", _lock_taken),
    ("first unit's shard folder appears (mid-write)", _unit_folder_appears(0)),
    ("a unit's shard file exists, its mark not yet", _shard_appears(14)),
    ("right after the 1st new completion mark", _marks(1)),
    ("right after the 7th new completion mark", _marks(7)),
    ("20 ms after the 25th new completion mark", _marks(25, then_sleep=0.02)),
    ("a shard folder 30 units ahead appears (mid-write)", _unit_folder_appears(30)),
    ("right after the 50th new completion mark", _marks(50)),
    ("one unit left", _marks_left(1)),
    ("every unit marked, before the process exits", _marks_left(0)),
]


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_is_bitwise_equal(demo_config, demo_reference, tmp_path):
    store = tmp_path / "chain.zarr"
    total = count_marks(demo_reference)
    tried, landed_kills, damaged, torn_seen, partial_seen, stale_locks = [], 0, [], 0, set(), 0
    for i, (name, arm) in enumerate(KILL_POINTS):
        args = build_args(DEMO_CSV, store, demo_config, *([] if i == 0 else ["--resume"]))
        run = Run(args, tmp_path / "logs")
        try:
            ctx = Ctx(store, demo_reference, total, run, count_marks(store))
            hit = arm(ctx)
            landed = hit and run.kill()
            if not landed:
                run.finish()
                assert run.proc.returncode == 0, f"{name}: the build failed instead:\n{run.stderr}"
                note(f"kill point not reached (the build ended first): {name}")
                continue
        finally:
            run.close()
        landed_kills += 1
        tried.append(name)
        stale_locks += _lock_pid(store) == run.pid  # left by the dead build: the next run must take it over
        if store.exists() and (store / "zarr.json").exists():
            # a trusted mark must never point at wrong data, at any moment
            wrong = marked_units_wrong(store, demo_reference)
            if wrong:
                damaged.append((name, wrong[:5]))
            torn_seen += len(unmarked_shards(store))
            partial_seen.update(leftovers(store))
        note(f"killed: {name}: {count_marks(store) if store.exists() else 0}/{total} marks")
    assert main(build_args(DEMO_CSV, store, demo_config, "--resume")) == 0  # the last resume, in-process
    REPORT["kill points tried (SIGKILL landed)"] += landed_kills
    REPORT["stores found damaged after a kill"] += len(damaged)
    REPORT["unmarked shards seen after kills (resume rewrote them)"] += torn_seen
    REPORT["zarr .partial files left by kills"] += len(partial_seen)
    REPORT["stale locks left by kills (taken over by the next run)"] += stale_locks
    litter = sorted(p.name for p in store.parent.glob(f".{store.name}.*"))
    if litter:
        note(f"left in the parent folder by kills during store creation: {litter}")
    assert not damaged, f"marks trusted for wrong data after kills: {damaged}"
    assert landed_kills >= MIN_KILL_POINTS, f"only {landed_kills} kill points landed: {tried}"
    assert stale_locks >= 1
    assert not (store / "_saezarr" / "lock").exists()
    assert_same_store(store, demo_reference)


@pytest.mark.slow
def test_sigint_stops_with_130_and_resume_finishes(demo_config, demo_reference, tmp_path):
    store = tmp_path / "interrupted.zarr"
    args = build_args(DEMO_CSV, store, demo_config)
    run = Run(args, tmp_path / "logs")
    try:
        assert run.wait_for(lambda: count_marks(store) >= 30), run.stderr
        run.signal(signal.SIGSTOP)  # hold it mid-build (whatever the machine's speed) while a second writer tries
        lock_before = (store / "_saezarr" / "lock").read_bytes()
        holder = json.loads(lock_before)
        assert holder["pid"] == run.pid

        # one writer at a time: a second build on the same store is refused at once, naming the holder
        before = tree_digest(store)
        second = _second_writer(args)
        assert tree_digest(store) == before, "the refused writer changed the store"
        REPORT["second writers refused"] += 1
        assert second.code == 2, second.err
        line = one_error_line(second.err)
        assert f"pid {run.pid}" in line and socket.gethostname() in line and holder["started"] in line, line
        assert "--force-unlock" in line
        assert run.alive(), "the first build should still be running"
        assert (store / "_saezarr" / "lock").read_bytes() == lock_before

        sent = time.monotonic()
        run.signal(signal.SIGINT)
        run.signal(signal.SIGCONT)
        code = run.finish(timeout=60)
        stopped_after = time.monotonic() - sent
    finally:
        run.close()
    note(f"SIGINT: the build exited {stopped_after:.2f} s after the signal")
    assert code == 130, run.stderr
    line = one_error_line(run.stderr)
    assert "--resume" in line, line
    assert not (store / "_saezarr" / "lock").exists(), "the lock must be released on SIGINT"
    assert not marked_units_wrong(store, demo_reference)
    assert count_marks(store) < count_marks(demo_reference)
    assert main(args + ["--resume"]) == 0
    assert_same_store(store, demo_reference)


@dataclass
class _Result:
    code: int
    err: str


def _second_writer(args: list[str]) -> _Result:
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(args + ["--resume"])
    return _Result(code, err.getvalue())
