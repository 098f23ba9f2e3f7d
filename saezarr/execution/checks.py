"""Checking dask workers: every worker must run the very saezarr code the client runs and see the client's files at
the same paths (a shared filesystem).

Three checks, for build and analysis alike: `probe_workers` asks each worker present when a command starts (code,
paths, and what the stage needs there) and refuses in one line naming the first that fails; `watch_workers`
registers a `WorkerCheck` plugin, which dask sets up on every worker, also on those that join later (adaptive or
jobqueue clusters); and `checked_call` checks, in every task, that the worker running it passed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import uuid
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import saezarr
from saezarr.errors import ClusterError, one_line

if TYPE_CHECKING:
    from distributed import Client

    from saezarr.execution.connect import ClusterOptions


@contextlib.contextmanager
def probe_marker(folder: Path, name: str) -> Iterator[Path]:
    """A probe file that workers must see: a folder with the same path but another filesystem would lack it."""
    marker = Path(folder).resolve() / f".{name}.{uuid.uuid4().hex}.probe"
    marker.touch()
    try:
        yield marker
    finally:
        marker.unlink(missing_ok=True)


def _expected(paths: list[tuple[Path, bool, str]], needs: tuple | None) -> dict:
    return {
        "version": saezarr.__version__,
        "code": code_digest(),
        "needs": None if needs is None else pickle.dumps(needs),
        "paths": [(str(Path(path).resolve()), writable, what) for path, writable, what in paths],
    }


def _by_value():
    """The probe module, pickled by value: a worker without saezarr can unpickle it and say so."""
    import cloudpickle

    from saezarr.execution import probe

    cloudpickle.register_pickle_by_value(probe)
    return probe


def probe_workers(
    client: Client,
    options: ClusterOptions,
    paths: list[tuple[Path, bool, str]],
    needs: tuple[Callable[..., str | None], *tuple[object, ...]] | None = None,
) -> list[str]:
    """Check every worker's code and paths, then `needs` (a check run there and its arguments); watch the workers
    that join later; return the addresses of those present.

    `needs` travels pickled, so a worker unpickles it (and imports what it refers to) only once its code is checked.
    """
    probe = _by_value()
    results = client.run(probe.probe_worker, _expected(paths, needs), on_error="return")
    for address, result in sorted(results.items()):
        if isinstance(result, BaseException):
            result = f"failed its check ({type(result).__name__}: {one_line(result)})"
        if result:
            raise ClusterError(f"{options.option}: worker {address} {result}")
    watch_workers(client)
    return sorted(results)


def watch_workers(client: Client) -> None:
    """Have dask check the code of every worker of the client's cluster, those that join later included."""
    probe = _by_value()
    client.register_plugin(probe.WorkerCheck(_expected([], None)), name=probe.PLUGIN_NAME)


def check_worker(expected: dict) -> str | None:
    """On a worker: what it lacks (saezarr code, shared folders, then what `needs` checks), or None."""
    if (saezarr.__version__, code_digest()) != (expected["version"], expected["code"]):
        return (
            f"runs saezarr {saezarr.__version__} (code {code_digest()}) but the client runs {expected['version']} "
            f"(code {expected['code']}); install the same saezarr everywhere"
        )
    for path, writable, what in expected["paths"]:
        path = Path(path)
        if not path.exists() or (writable and not os.access(path.parent, os.W_OK)):
            return (
                f"cannot {'see or write' if writable else 'see'} {what} as the client does; it must be on a "
                "filesystem shared by every worker, at the same path"
            )
    if expected["needs"] is None:
        return None
    check, *args = pickle.loads(expected["needs"])
    return check(*args)


def check_this_worker(code: str) -> str:
    """In a task: refuse (one line) unless this worker runs the client's code `code`; return the worker's address."""
    from distributed import get_worker

    from saezarr.execution.probe import PLUGIN_NAME

    worker = get_worker()
    plugin = worker.plugins.get(PLUGIN_NAME)
    problem = getattr(plugin, "problem", None)
    if problem is None and code != code_digest():  # a worker the plugin did not reach
        problem = f"runs saezarr code {code_digest()}, the client {code}"
    if problem:
        raise ClusterError(f"worker {worker.address} {problem}")
    return worker.address


def checked_call(function: Callable, code: str, *args: Any) -> Any:
    """function(*args) on a dask worker, once the worker is checked to run the client's code `code`."""
    check_this_worker(code)
    return function(*args)


@lru_cache(maxsize=1)
def code_digest() -> str:
    """A short digest of this saezarr's source files: workers must run the very code the client runs."""
    package = Path(saezarr.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]
