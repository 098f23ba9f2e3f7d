"""Test assets made once per test run and shared by the pytest-xdist workers (tests/conftest.py's session fixtures).

What made_once returns travels between the workers pickled: its classes live here, in a module every worker imports
by the same name, not in a conftest.py."""

from __future__ import annotations

import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from saezarr.inputs.configs import SAEConfig

T = TypeVar("T")


def made_once(tmp_path_factory, name: str, make: Callable[[Path], T]) -> T:
    """What make(folder) returns, made once per test run into a new folder.

    On a pytest-xdist worker the folder is in the temporary folder the workers share: the first worker to ask makes it
    under a lock while the others wait, then every worker reads the pickled result. What is made this way is read
    only: a test that changes it copies it first (tests/faults/faultkit.py's copy_store)."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return make(tmp_path_factory.mktemp(name))
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent / "made-once"
    shared.mkdir(exist_ok=True)
    folder, result = shared / name, shared / f"{name}.pickle"
    with FileLock(shared / f"{name}.lock"):
        if not result.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a worker that failed to make it left
            folder.mkdir()
            result.write_bytes(pickle.dumps(make(folder)))
        return pickle.loads(result.read_bytes())


@dataclass(frozen=True)
class TinyAssets:
    """A generated model folder, SAE folder, config file and labeled CSV."""

    model: Path
    saes: Path
    config_file: Path
    csv: Path
    configs: tuple[SAEConfig, ...]
    sentences: tuple[str, ...]


@dataclass(frozen=True)
class BuiltStore:
    """A store and the summary its build returned."""

    path: Path
    summary: object
