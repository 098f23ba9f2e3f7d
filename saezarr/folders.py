"""Putting a fully written folder in place of another in one rename, so readers see the old one or the new one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def swap_into_place(staging: Path, path: Path) -> None:
    """Rename staging to path; an old path is moved aside only now, and comes back if the rename fails."""
    if not path.exists():
        os.rename(staging, path)
        return
    trash = path.with_name(f".{path.name}.replaced")
    shutil.rmtree(trash, ignore_errors=True)
    os.rename(path, trash)
    try:
        os.rename(staging, path)
    except OSError:
        os.rename(trash, path)
        raise
    shutil.rmtree(trash, ignore_errors=True)
