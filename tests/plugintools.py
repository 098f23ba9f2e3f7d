"""Helpers for tests of plugins from outside the package: a module and its dist-info in a folder, found by
importlib.metadata when the folder is on PYTHONPATH."""

from __future__ import annotations

import os
from pathlib import Path


def write_plugin(folder: Path, module: str, source: str, entry_points: dict[str, dict[str, str]]) -> Path:
    """Write `module`.py and a `module`-0.1.dist-info whose entry points are {group: {name: object}}; return the
    folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(source)
    info = folder / f"{module}-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    groups = (
        f"[saezarr.{group}]\n" + "".join(f"{name} = {target}\n" for name, target in entries.items())
        for group, entries in entry_points.items()
    )
    (info / "entry_points.txt").write_text("\n".join(groups))
    return folder


def with_plugins(folder: Path) -> dict[str, str]:
    """The environment of a CLI subprocess that finds the plugins in `folder` before anything else."""
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}
