"""Writing a folder (or a file) beside its final path and renaming it into place, so readers see the old one or the
new one; `write_durably` also makes the rename durable, for what a store marks done."""

from __future__ import annotations

import glob
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from saezarr.durable.locking import process_alive

TEMP_SUFFIX = ".tmp"  # a file being written durably: `.NAME.PID.RANDOM.tmp` beside it


def make_staging(path: Path, suffix: str, older_than: float = 0.0) -> Path:
    """A new empty folder `.NAME.PID.RANDOM{suffix}` beside path, after removing path's stale ones (those last
    modified over `older_than` seconds ago)."""
    remove_stale_staging(path, suffix, older_than)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=suffix, dir=path.parent))


def remove_stale_staging(path: Path, suffix: str, older_than: float = 0.0) -> None:
    """Delete path's staging folders (`.NAME.PID.RANDOM{suffix}`) whose writing process is gone (and that were last
    modified over `older_than` seconds ago)."""
    # exact, so `out` never matches `.out.zarr.PID.RANDOM{suffix}`, the staging folder of out.zarr
    _remove_dead(Path(path).parent, glob.escape(Path(path).name), re.escape(Path(path).name), suffix, older_than)


def remove_stale_staging_in(folder: Path, suffix: str, older_than: float = 0.0) -> None:
    """Delete the staging folders (`.NAME.PID.RANDOM{suffix}`, any NAME) in folder whose writing process is gone (and
    that were last modified over `older_than` seconds ago)."""
    _remove_dead(Path(folder), "*", r".+", suffix, older_than)


def _remove_dead(folder: Path, name_glob: str, name_regex: str, suffix: str, older_than: float) -> None:
    # the PID is looked up on this host: on a file system shared between hosts, another host's live writer can look
    # dead here; `older_than` spares the writers of the last so many seconds
    staging_name = re.compile(rf"\.{name_regex}\.(\d+)\.[a-z0-9_]+{re.escape(suffix)}")
    cutoff = time.time() - older_than
    for staging in folder.glob(f".{name_glob}.*{glob.escape(suffix)}"):
        match = staging_name.fullmatch(staging.name)
        if match and not process_alive(int(match.group(1))) and _modified(staging) <= cutoff:
            shutil.rmtree(staging, ignore_errors=True)


def _modified(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile
        return float("inf")


def swap_into_place(staging: Path, path: Path) -> None:
    """Rename staging to path; an old path is moved aside only now, and comes back if the rename fails."""
    if not path.exists():
        os.rename(staging, path)
        return
    trash = path.with_name(f".{path.name}.replaced")  # `restore_moved_aside` puts it back after a kill
    shutil.rmtree(trash, ignore_errors=True)
    os.rename(path, trash)
    try:
        os.rename(staging, path)
    except OSError:
        os.rename(trash, path)
        raise
    shutil.rmtree(trash, ignore_errors=True)


def restore_moved_aside(folder: Path) -> None:
    """Put back each folder in `folder` that `swap_into_place` moved aside when a kill kept the new one from being
    renamed in (the path is free); delete those whose new folder is in place."""
    suffix = ".replaced"
    for trash in Path(folder).glob(f".*{suffix}"):
        path = trash.with_name(trash.name[1 : -len(suffix)])
        if path.exists():
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(trash, path)


def replace_file(path: Path, write: Callable[[BinaryIO], object], parents: bool = True) -> bool:
    """Write a file by `write` beside path and rename it into place (making path's folder, and with `parents` the
    folders above it); False, leaving path as it was, if that fails: for caches, where a file that cannot be written
    only costs the next run a recomputation."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=parents, exist_ok=True)
        with open(temp, "wb") as file:
            write(file)
        os.replace(temp, path)
        return True
    except OSError:
        temp.unlink(missing_ok=True)
        return False


def write_durably(path: Path, data: bytes) -> None:
    """Put a file's whole content in place at once, durably: readers see the old file or the new, never a part."""
    # the temporary name starts with a dot and is no chunk key, so zarr never reads it as a chunk
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(temp, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        fsync_folder(path.parent)  # the rename itself durable before the unit is marked
    except OSError as exc:
        if exc.filename in (None, str(temp)):  # a failed write() (disk full) names no file by itself
            exc.filename = str(path)
        raise


def fsync_folder(path: Path) -> None:
    """Make what was renamed into or linked in a folder durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
