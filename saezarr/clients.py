"""Connecting to a dask cluster: a client of a scheduler or of a local cluster, once every worker is checked.

Every worker must run the very saezarr code the client runs and see the client's files at the same paths (a
shared filesystem); `probe_workers` asks each one and refuses in one line naming the first that fails. This
module imports no torch: an analysis on a cluster needs none.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import saezarr
from saezarr.errors import SaezarrError, one_line

if TYPE_CHECKING:
    from distributed import Client

DEFAULT_WORKER_TIMEOUT = 60.0


@dataclass(frozen=True)
class ClusterOptions:
    """Where a command's dask work runs: a local cluster of N worker processes, or an existing scheduler."""

    local_workers: int | None = None
    scheduler: str | None = None
    scheduler_file: Path | None = None
    worker_timeout: float = DEFAULT_WORKER_TIMEOUT

    def __post_init__(self):
        given = [name for name, value in self._options() if value is not None]
        if len(given) > 1:
            raise SaezarrError(f"{' and '.join(given)}: give only one of them")

    def _options(self) -> list[tuple[str, object]]:
        return [
            ("--local-workers", self.local_workers),
            ("--scheduler", self.scheduler),
            ("--scheduler-file", self.scheduler_file),
        ]

    @property
    def wanted(self) -> bool:
        """True when the work runs on dask workers rather than in this process."""
        return any(value is not None for _, value in self._options())

    @property
    def remote(self) -> bool:
        """True when the workers are not this node's own (their devices are checked there, not here)."""
        return self.scheduler is not None or self.scheduler_file is not None

    @property
    def option(self) -> str:
        """The option naming the cluster, for messages."""
        return next(f"{name} {value}" for name, value in self._options() if value is not None)


@contextlib.contextmanager
def cluster_client(options: ClusterOptions, device: str, as_default: bool = False) -> Iterator[Client]:
    """A client of the scheduler (or of a new local cluster) with at least one worker; nothing is written.

    With `as_default`, dask computations run on this cluster while the client is open.
    """
    from distributed import Client

    logging.getLogger("distributed").setLevel(logging.CRITICAL)  # its failures reach the user as one line
    with contextlib.ExitStack() as stack:
        if options.local_workers is not None:
            address = stack.enter_context(_local_cluster(options.local_workers, device))
        else:
            address = _scheduler_address(options)
        try:
            client = stack.enter_context(Client(address, timeout=options.worker_timeout, set_as_default=as_default))
        except (OSError, TimeoutError, ValueError) as exc:
            raise SaezarrError(
                f"{options.option}: cannot reach the dask scheduler at {address} within {options.worker_timeout:g} s "
                f"(--worker-timeout) ({type(exc).__name__}: {one_line(exc)}); nothing was written"
            ) from None
        try:
            client.wait_for_workers(1, timeout=options.worker_timeout)
        except (TimeoutError, OSError):
            raise SaezarrError(
                f"{options.option}: no dask worker joined the scheduler at {address} within "
                f"{options.worker_timeout:g} s (--worker-timeout); start some with `dask worker {address}`"
            ) from None
        yield client


def _scheduler_address(options: ClusterOptions) -> str:
    if options.scheduler is not None:
        return options.scheduler
    try:
        return json.loads(Path(options.scheduler_file).read_text())["address"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SaezarrError(
            f"--scheduler-file {options.scheduler_file}: not a dask scheduler file ({type(exc).__name__}: {one_line(exc)})"
        ) from None


@contextlib.contextmanager
def _local_cluster(n_workers: int, device: str) -> Iterator[str]:
    """A cluster of single-thread worker processes on this node (one per GPU on CUDA), yielding its address."""
    from distributed import LocalCluster

    if device != "cpu":  # only a GPU limits the workers, and only torch counts GPUs
        import torch

        if torch.device(device).type == "cuda" and n_workers > torch.cuda.device_count():
            raise SaezarrError(
                f"--local-workers {n_workers}: one worker per GPU, and this node has {torch.cuda.device_count()}"
            )
    # memory_limit=0: the nanny must not kill a worker for holding a model; saezarr bounds its own memory
    with LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.CRITICAL,
        memory_limit=0,
    ) as cluster:
        yield cluster.scheduler_address


@contextlib.contextmanager
def analysis_client(options: ClusterOptions, store: Path, cache: Path) -> Iterator[Client]:
    """Make this cluster dask's scheduler while open, once every worker can read the store and write the cache."""
    with cluster_client(options, "cpu", as_default=True) as client:
        cache.mkdir(parents=True, exist_ok=True)
        with probe_marker(cache, "analysis") as marker:
            probe_workers(
                client,
                options,
                [
                    (Path(store).resolve() / "zarr.json", False, f"the store {store}"),
                    (marker, True, f"the analysis cache folder {cache}"),
                ],
            )
        yield client


@contextlib.contextmanager
def probe_marker(folder: Path, name: str) -> Iterator[Path]:
    """A probe file that workers must see: a folder with the same path but another filesystem would lack it."""
    marker = Path(folder).resolve() / f".{name}.{uuid.uuid4().hex}.probe"
    marker.touch()
    try:
        yield marker
    finally:
        marker.unlink(missing_ok=True)


def probe_workers(
    client: Client,
    options: ClusterOptions,
    paths: list[tuple[Path, bool, str]],
    needs: tuple[Callable[..., str | None], ...] | None = None,
) -> list[str]:
    """Check every worker's code and paths, then `needs` (a check run there and its arguments); return their addresses.

    `needs` travels pickled, so a worker unpickles it (and imports what it refers to) only once its code is checked.
    """
    import cloudpickle

    from saezarr import probe

    cloudpickle.register_pickle_by_value(probe)  # a worker without saezarr can unpickle it and say so
    expected = {
        "version": saezarr.__version__,
        "code": code_digest(),
        "needs": None if needs is None else pickle.dumps(needs),
        "paths": [(str(path), writable, what) for path, writable, what in paths],
    }
    results = client.run(probe.probe_worker, expected, on_error="return")
    for address, result in sorted(results.items()):
        if isinstance(result, BaseException):
            result = f"failed its check ({type(result).__name__}: {one_line(result)})"
        if result:
            raise SaezarrError(f"{options.option}: worker {address} {result}")
    return sorted(results)


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


@lru_cache(maxsize=1)
def code_digest() -> str:
    """A short digest of this saezarr's source files: workers must run the very code the client runs."""
    package = Path(saezarr.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]
