"""One writer at a time: live holders are refused, stale locks are taken over, other hosts are respected.

A real running build being refused is in test_fault_crash.py (the SIGINT test holds one mid-build).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from faultkit import REPORT, STATE, assert_same_store, build_args, copy_store, one_error_line, tree_digest, unit_paths

import saezarr.durable.locking
from saezarr.cli import main
from saezarr.durable.locking import StoreLock, _start_ticks
from saezarr.errors import SaezarrError
from saezarr.testing.synthetic import DEMO_CSV


def _lock_file(store):
    return store / STATE / "lock"


def _write_lock(store, pid, host=None, started="2025-01-02T03:04:05+0000", boot_ticks=None):
    holder = {"pid": pid, "host": host or socket.gethostname(), "started": started, "boot_ticks": boot_ticks}
    _lock_file(store).write_text(json.dumps(holder))
    return holder


def _unfinished_copy(reference, path):
    """A copy of a finished store with three units undone, so a resume has a little work."""
    store = copy_store(reference, path)
    for ci, chunk in ((0, 1), (3, 12), (5, 33)):
        unit_paths(store, ci, chunk)[1].unlink()
    return store


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()  # reaped: the pid names no process now
    return proc.pid


def test_lock_of_a_dead_process_on_this_host_is_taken_over(demo_config, demo_reference, tmp_path):
    store = _unfinished_copy(demo_reference, tmp_path / "stale.zarr")
    _write_lock(store, _dead_pid())
    assert main(build_args(DEMO_CSV, store, demo_config, "--resume")) == 0
    assert not _lock_file(store).exists()
    assert_same_store(store, demo_reference)


def _refused(capsys, store, args, holder):
    before = tree_digest(store)
    code = main(args)
    out = capsys.readouterr()
    assert code == 2, out.err
    line = one_error_line(out.err)
    for text in (f"pid {holder['pid']}", holder["host"], holder["started"], "--force-unlock"):
        assert text in line, f"{text!r} not in {line!r}"
    assert tree_digest(store) == before, "a refused build must not touch the store"
    REPORT["second writers refused"] += 1


def test_live_holder_on_this_host_is_refused(demo_config, demo_reference, tmp_path, capsys):
    store = _unfinished_copy(demo_reference, tmp_path / "held.zarr")
    holder = {"pid": 4243, "host": socket.gethostname(), "started": "2025-01-02T03:04:05+0000"}
    with _flock_holder(_lock_file(store), holder):
        _refused(capsys, store, build_args(DEMO_CSV, store, demo_config, "--resume"), holder)


def test_requeued_on_another_host_takes_over_a_lock_whose_flock_is_free(demo_config, demo_reference, tmp_path, capsys):
    """A job requeued on another node finds the lock its first run left: nobody holds its flock, so it is taken."""
    store = _unfinished_copy(demo_reference, tmp_path / "requeued.zarr")
    holder = _write_lock(store, 4242, host="build-node-7.example.org", boot_ticks="123456")
    assert main(build_args(DEMO_CSV, store, demo_config, "--resume")) == 0
    err = capsys.readouterr().err
    assert err.strip() == f"saezarr: taking over the lock of pid 4242 on {holder['host']}, which is gone", err
    assert not _lock_file(store).exists()
    assert_same_store(store, demo_reference)


def test_live_flock_holder_naming_another_host_is_refused(demo_config, demo_reference, tmp_path, capsys):
    store = _unfinished_copy(demo_reference, tmp_path / "held-elsewhere.zarr")
    holder = {"pid": 4242, "host": "build-node-7.example.org", "started": "2025-01-02T03:04:05+0000"}
    with _flock_holder(_lock_file(store), holder):
        _refused(capsys, store, build_args(DEMO_CSV, store, demo_config, "--resume"), holder)


def test_lock_from_another_host_without_flock_is_respected_and_force_unlock_takes_it(
    demo_config, demo_reference, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(saezarr.durable.locking, "fcntl", None)  # as on a file system without flock
    store = _unfinished_copy(demo_reference, tmp_path / "elsewhere.zarr")
    holder = _write_lock(store, 4242, host="build-node-7.example.org", boot_ticks="123456")
    args = build_args(DEMO_CSV, store, demo_config, "--resume")
    _refused(capsys, store, args, holder)
    assert main(args + ["--force-unlock"]) == 0
    assert not _lock_file(store).exists()
    assert_same_store(store, demo_reference)


# ------------------------------------------------------------------ the lock itself, without a build


def _zombie():
    proc = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # exited but not reaped
        stat = Path(f"/proc/{proc.pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return proc
        time.sleep(0.01)
    pytest.fail("no zombie")


def _holder(pid, host=None, started="2025-01-02T03:04:05+0000", boot_ticks=None) -> str:
    return json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": started, "boot_ticks": boot_ticks})


@pytest.mark.parametrize("flock", [True, False], ids=["flock", "no-flock"])
@pytest.mark.parametrize("left", ["dead pid", "reused pid", "zombie", "empty file", "garbage", "pid 0"])
def test_stale_locks_are_taken(tmp_path, monkeypatch, left, flock):
    if not flock:  # as on a file system without flock: the JSON alone decides
        monkeypatch.setattr(saezarr.durable.locking, "fcntl", None)
    path = tmp_path / "lock"
    zombie = None
    if left == "dead pid":
        path.write_text(_holder(_dead_pid()))
    elif left == "reused pid":  # a live process, but not the one that wrote the lock
        path.write_text(_holder(os.getpid(), boot_ticks="1"))
    elif left == "zombie":  # died, not yet reaped by its parent
        zombie = _zombie()
        path.write_text(_holder(zombie.pid, boot_ticks=_start_ticks(zombie.pid)))
    elif left == "empty file":  # killed between creating the file and writing into it
        path.write_bytes(b"")
        os.utime(path, (time.time() - 60, time.time() - 60))
    elif left == "garbage":
        path.write_bytes(b"\x00\xff{not json")
    elif left == "pid 0":
        path.write_text(_holder(0))
    lock = StoreLock(path, tmp_path)
    try:
        lock.acquire()
        assert json.loads(path.read_text())["pid"] == os.getpid()
    finally:
        lock.release()
        if zombie:
            zombie.wait()
    assert not path.exists()


_HOLD = textwrap.dedent(
    """
    import fcntl, json, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, sys.argv[2].encode())
    print("held", flush=True)
    time.sleep(120)
    """
)


@contextlib.contextmanager
def _flock_holder(path: Path, holder: dict):
    """A live process holding the lock file's flock, its JSON naming `holder` (any host)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(path), json.dumps(holder)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("host", ["this host", "other host"])
def test_a_live_flock_holder_is_refused_on_any_host(tmp_path, host):
    path = tmp_path / "lock"
    holder = {"pid": 1234, "host": socket.gethostname() if host == "this host" else "other-host", "started": "s1"}
    with _flock_holder(path, holder):
        with pytest.raises(SaezarrError, match=f"pid 1234 on {holder['host']}, started s1"):
            StoreLock(path, tmp_path).acquire()
        assert json.loads(path.read_text()) == holder
        forced = StoreLock(path, tmp_path)
        forced.acquire(force=True)
        forced.release()


def test_a_lock_naming_a_live_process_that_holds_no_flock_is_taken_over(tmp_path, caplog):
    """With flock, the flock decides: a JSON whose writer holds no flock is left by a holder that is gone (the library
    says so in the log; the command line prints it as one `saezarr:` line)."""
    caplog.set_level(logging.INFO, logger="saezarr")
    path = tmp_path / "lock"
    sleeper = subprocess.Popen(["sleep", "120"])
    try:
        for holder in (
            {"pid": 1, "host": "other-host", "started": "s1", "boot_ticks": "9"},
            {
                "pid": sleeper.pid,
                "host": socket.gethostname(),
                "started": "s2",
                "boot_ticks": _start_ticks(sleeper.pid),
            },
        ):
            path.write_text(json.dumps(holder))
            lock = StoreLock(path, tmp_path)
            lock.acquire()
            assert json.loads(path.read_text())["pid"] == os.getpid()
            lock.release()
            assert caplog.messages == [
                f"taking over the lock of pid {holder['pid']} on {holder['host']}, which is gone"
            ]
            caplog.clear()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_live_and_foreign_locks_are_refused_without_flock(tmp_path, monkeypatch):
    monkeypatch.setattr(saezarr.durable.locking, "fcntl", None)  # the JSON alone decides
    path = tmp_path / "lock"
    sleeper = subprocess.Popen(["sleep", "120"])
    try:
        for holder in (
            {
                "pid": sleeper.pid,
                "host": socket.gethostname(),
                "started": "s1",
                "boot_ticks": _start_ticks(sleeper.pid),
            },
            {"pid": sleeper.pid, "host": socket.gethostname(), "started": "s2"},  # no ticks recorded: trust the pid
            {"pid": 1, "host": "other-host", "started": "s3", "boot_ticks": "9"},
        ):
            path.write_text(json.dumps(holder))
            with pytest.raises(
                SaezarrError, match=f"pid {holder['pid']} on {holder['host']}, started {holder['started']}"
            ):
                StoreLock(path, tmp_path).acquire()
            assert json.loads(path.read_text()) == holder
            forced = StoreLock(path, tmp_path)
            forced.acquire(force=True)
            forced.release()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_disk_full_while_writing_the_lock(tmp_path, monkeypatch):
    """One clear error (exit code 1), and no flock left behind that would refuse the next try."""

    def full(fd, holder):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(saezarr.durable.locking, "_write_json", full)
    with pytest.raises(SaezarrError, match="No space left on device") as failed:
        StoreLock(tmp_path / "lock", tmp_path).acquire()
    assert failed.value.exit_code == 1
    monkeypatch.undo()
    lock = StoreLock(tmp_path / "lock", tmp_path)
    lock.acquire()
    lock.release()


def test_a_held_lock_refuses_a_second_holder_in_the_same_process(tmp_path):
    first, second = StoreLock(tmp_path / "lock", tmp_path), StoreLock(tmp_path / "lock", tmp_path)
    first.acquire()
    try:
        with pytest.raises(SaezarrError, match="another build is writing"):
            second.acquire()
    finally:
        first.release()
    second.acquire()
    second.release()


_RACE = textwrap.dedent(
    """
    import json, multiprocessing as mp, os, socket, sys, time
    from pathlib import Path
    from saezarr.errors import SaezarrError
    from saezarr.durable.locking import StoreLock

    def contender(path, barrier, results):
        lock = StoreLock(Path(path), Path(path).parent)
        barrier.wait()
        try:
            lock.acquire()
        except SaezarrError:
            results.put("refused")
            return
        results.put("won")
        time.sleep(0.3)  # hold it while the others try; then die without releasing, as a crash would

    def one_round(path, n, stale):
        Path(path).unlink(missing_ok=True)
        if stale:
            Path(path).write_text(json.dumps({"pid": 2**22 + 1, "host": socket.gethostname(), "started": "x"}))
        ctx = mp.get_context("fork")
        barrier, results = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=contender, args=(path, barrier, results)) for _ in range(n)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        return sum(results.get() == "won" for _ in range(n))

    path, rounds, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps([one_round(path, n, stale=r % 2 == 0) for r in range(rounds)]))
    """
)


def test_only_one_of_many_simultaneous_writers_gets_the_lock(tmp_path):
    """Six processes race for a fresh or a stale lock, ten times: each time exactly one may win."""
    rounds, contenders = 10, 6
    out = subprocess.run(
        [sys.executable, "-c", _RACE, str(tmp_path / "lock"), str(rounds), str(contenders)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    winners = json.loads(out.stdout)
    REPORT["lock races run (6 contenders each)"] += rounds
    assert winners == [1] * rounds, f"winners per round: {winners}"
