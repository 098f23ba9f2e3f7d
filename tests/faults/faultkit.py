"""Helpers of the fault-injection suite: running builds that can be killed, hashing and comparing stores."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

ACTIVATIONS = "activations"
STATE = "_saezarr"
CHUNK = 16  # fragments per chunk in this suite: many small units, many moments to crash at

# what the suite did, printed at the end of the run (tests/conftest.py, pytest_terminal_summary)
REPORT: Counter = Counter()
NOTES: list[str] = []


def note(text: str) -> None:
    """Keep a line for the end-of-run report."""
    NOTES.append(text)


def build_args(csv: Path, store: Path, config: Path, *extra: str) -> list[str]:
    """Arguments of `saezarr build` as the suite runs it."""
    return [
        "build",
        "--input",
        str(csv),
        "--output",
        str(store),
        "--config",
        str(config),
        "--chunk-fragments",
        str(CHUNK),
        "--quiet",
        *extra,
    ]


# ----------------------------------------------------------------------------- hashing and comparing


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file below root, by relative path (folders with no files are listed too)."""
    root = Path(root)
    digest = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file():
            data = path.read_bytes()
            if rel == "zarr.json":  # every store has its own random store_id
                meta = json.loads(data)
                meta.get("attributes", {}).pop("store_id", None)
                data = json.dumps(meta, sort_keys=True).encode()
            digest[rel] = hashlib.sha256(data).hexdigest()
        elif path.is_dir() and not any(path.iterdir()):
            digest[rel + "/"] = "empty folder"
    return digest


def leftovers(root: Path) -> list[str]:
    """Temporary files that zarr leaves when a write is killed (`<key>.<uuid>.partial`)."""
    return sorted(p.relative_to(root).as_posix() for p in Path(root).rglob("*.partial"))


def compare_stores(store: Path, reference: Path) -> list[str]:
    """Differences between a store and the reference: files (raw bytes), decoded activations and coordinates.

    Zarr's `.partial` temporary files are not part of the comparison; see `leftovers`.
    """
    problems = []
    ours = {k: v for k, v in tree_digest(store).items() if not k.endswith(".partial")}
    theirs = tree_digest(reference)
    # every store has its own random store_id: the root metadata is compared without it
    ours["zarr.json"], theirs["zarr.json"] = _root_metadata(store), _root_metadata(reference)
    for key in sorted(set(ours) | set(theirs)):
        if key not in ours:
            problems.append(f"missing {key}")
        elif key not in theirs:
            problems.append(f"extra {key}")
        elif ours[key] != theirs[key]:
            problems.append(f"bytes differ: {key}")
    group, ref_group = zarr.open_group(store, mode="r"), zarr.open_group(reference, mode="r")
    names = sorted(k for k in ref_group.array_keys())
    if sorted(group.array_keys()) != names:
        problems.append(f"arrays differ: {sorted(group.array_keys())} vs {names}")
        return problems
    for name in names:
        a, b = group[name][...], ref_group[name][...]
        if a.shape != b.shape or a.dtype != b.dtype:
            problems.append(f"{name}: {a.shape} {a.dtype} vs {b.shape} {b.dtype}")
        elif a.dtype.kind in "fc":
            if a.tobytes() != b.tobytes():  # bitwise, NaN and -0.0 included
                problems.append(
                    f"{name}: decoded values differ at {int(np.sum(a.view(np.uint8) != b.view(np.uint8)))} bytes"
                )
        elif not np.array_equal(a, b):
            problems.append(f"{name}: decoded values differ")
    return problems


def _root_metadata(store: Path) -> str | None:
    try:
        meta = json.loads((Path(store) / "zarr.json").read_text())
    except FileNotFoundError:
        return None
    meta.get("attributes", {}).pop("store_id", None)
    return json.dumps(meta, sort_keys=True)


def assert_same_store(store: Path, reference: Path) -> None:
    problems = compare_stores(store, reference)
    assert not problems, f"{store} differs from the uninterrupted build {reference}:\n" + "\n".join(problems[:30])


def mark_paths(store: Path) -> list[Path]:
    """Every completion mark present."""
    done = Path(store) / STATE / "done"
    return [m for d in done.iterdir() if d.is_dir() for m in d.iterdir()] if done.is_dir() else []


def count_marks(store: Path) -> int:
    done = Path(store) / STATE / "done"
    try:
        return sum(len(os.listdir(d.path)) for d in os.scandir(done) if d.is_dir())
    except FileNotFoundError:
        return 0


def config_names(store: Path) -> list[str]:
    return json.loads((Path(store) / "zarr.json").read_text())["attributes"]["configs"]


def shard_key(config_index: int, chunk: int) -> str:
    return f"{ACTIVATIONS}/c/{config_index}/{chunk}/0"


def unit_paths(store: Path, config_index: int, chunk: int) -> tuple[Path, Path]:
    """(shard file, completion mark) of one unit."""
    store = Path(store)
    return store / shard_key(config_index, chunk), store / STATE / "done" / config_names(store)[config_index] / str(
        chunk
    )


def marked_units_wrong(store: Path, reference: Path) -> list[str]:
    """Units whose mark is trusted (mark and non-empty shard present) but whose shard is not the reference's."""
    wrong = []
    for ci, name in enumerate(config_names(store)):
        folder = Path(store) / STATE / "done" / name
        if not folder.is_dir():
            continue
        for mark in folder.iterdir():
            shard = Path(store) / shard_key(ci, int(mark.name))
            if shard.is_file() and shard.stat().st_size > 0:
                if shard.read_bytes() != (Path(reference) / shard_key(ci, int(mark.name))).read_bytes():
                    wrong.append(shard_key(ci, int(mark.name)))
    return wrong


def unmarked_shards(store: Path) -> list[str]:
    """Shard files present without a completion mark: units written but not (yet) marked."""
    names = config_names(store)
    found = []
    base = Path(store) / ACTIVATIONS / "c"
    for shard in base.glob("*/*/0") if base.is_dir() else []:
        ci, chunk = int(shard.parent.parent.name), int(shard.parent.name)
        if not (Path(store) / STATE / "done" / names[ci] / str(chunk)).exists():
            found.append(shard.relative_to(store).as_posix())
    return found


def copy_store(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


# ----------------------------------------------------------------------------- processes


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "saezarr", *map(str, args)]


def _default_sigint() -> None:
    # a job started in the background by a shell inherits SIGINT ignored, and Python then keeps it ignored
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class Run:
    """One `python -m saezarr` subprocess (or `python -c PROGRAM ARGS`), with its output going to files (no pipe can
    fill up)."""

    args: list[str]
    logdir: Path
    program: str | None = None
    proc: subprocess.Popen = field(init=False)
    started: float = field(init=False)

    def __post_init__(self):
        self.logdir.mkdir(parents=True, exist_ok=True)
        n = len(list(self.logdir.glob("*.out")))
        self._out = open(self.logdir / f"{n:02d}.out", "w+")
        self._err = open(self.logdir / f"{n:02d}.err", "w+")
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            cli_command(*self.args) if self.program is None else [sys.executable, "-c", self.program, *self.args],
            stdout=self._out,
            stderr=self._err,
            env=env,
            stdin=subprocess.DEVNULL,
            preexec_fn=_default_sigint,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for(self, condition: Callable[[], bool], timeout: float = 180.0, interval: float = 0.0005) -> bool:
        """Poll until condition() holds (True) or the process exits first (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            if self.proc.poll() is not None:
                return condition()  # it may have become true as the process ended; then it is too late anyway
            time.sleep(interval)
        self.kill()
        raise AssertionError(f"gave up after {timeout} s waiting on {self.args}")

    def signal(self, sig: int) -> bool:
        """Send a signal; False if the process had already exited."""
        if self.proc.poll() is not None:
            return False
        self.proc.send_signal(sig)
        return True

    def kill(self) -> bool:
        """SIGKILL and reap (a zombie would still look alive to the stale-lock check); True if it was running."""
        landed = self.signal(signal.SIGKILL)
        self.proc.wait()
        return landed and self.proc.returncode == -signal.SIGKILL

    def finish(self, timeout: float = 300.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    @property
    def stdout(self) -> str:
        return self._read(self._out)

    @property
    def stderr(self) -> str:
        return self._read(self._err)

    @staticmethod
    def _read(file) -> str:
        return Path(file.name).read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        self._out.close()
        self._err.close()


def one_error_line(stderr: str) -> str:
    """The single `saezarr: error: ...` line a failing command must print, and nothing else."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    assert lines[0].startswith("saezarr: error: "), lines[0]
    return lines[0]


# ----------------------------------------------------------------------------- killed at a chosen call

# run as `python -c KILLER POINT WHEN N ARGS...`: `saezarr ARGS`, SIGKILLed right `before` or `after` the n-th call of
# POINT (`package.module.function`, or `package.module.Class.method`, under saezarr), or within `folders.swap_into_place` once the n-th coordinate
# folder was moved aside and before its new one is renamed in (POINT `mid-swap`)
KILLER = r"""
import importlib, importlib.util, os, signal, sys, threading
point, when, n, argv = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
calls = [0]
one_at_a_time = threading.Lock()  # units are written (and marked) by a pool of threads: the n-th call is exact

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def counted(original):
    def wrapper(*args, **kwargs):
        with one_at_a_time:
            calls[0] += 1
            if when == "before" and calls[0] == n:
                die()
            result = original(*args, **kwargs)
            if when == "after" and calls[0] == n:
                die()
            return result
    return wrapper

if point == "mid-swap":
    from saezarr.durable import folders

    class Renames:
        def __getattr__(self, name):
            return getattr(os, name)

        def rename(self, source, target):
            os.rename(source, target)
            if str(target).endswith(".replaced"):
                calls[0] += 1
                if calls[0] == n:
                    die()

    folders.os = Renames()
else:
    parts = point.split(".")
    depth = 2  # `package.module.attr...`; a deeper module (`store.storage.local.write_durably`) is imported too
    def is_module(name):
        try:
            return importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # a name below a module that is no package
            return False

    while depth < len(parts) - 1 and is_module(f"saezarr.{'.'.join(parts[: depth + 1])}"):
        depth += 1
    owner = importlib.import_module(f"saezarr.{'.'.join(parts[:depth])}")
    attributes = parts[depth:]
    for attribute in attributes[:-1]:
        owner = getattr(owner, attribute)
    setattr(owner, attributes[-1], counted(getattr(owner, attributes[-1])))

from saezarr.cli import main
sys.exit(main(argv))
"""


@dataclass(frozen=True)
class KillPoint:
    """A moment to kill at: `function` wrapped to die `when` its n-th call is made (`before`) or returns (`after`)."""

    name: str
    function: str
    when: str
    n: int


def killed_at(point: KillPoint, args: list[str], logs: Path) -> bool:
    """Run `saezarr ARGS` to die at the point; True if it died there, False if it finished first (exit 0)."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-c", KILLER, point.function, point.when, str(point.n), *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    logs.write_text(done.stderr)
    if done.returncode == 0:
        return False
    assert done.returncode == -signal.SIGKILL, f"{point.name}: exit {done.returncode}\n{done.stderr}"
    return True
