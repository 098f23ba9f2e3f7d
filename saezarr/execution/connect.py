"""Connecting to a dask cluster: a client of a scheduler (over TCP or TLS) or of a local cluster, with a worker.

Whoever can reach a scheduler can run code on its workers, as the user who started them, writing into the store:
`ClusterOptions`' TLS files (or dask's `distributed.comm.tls.*` config) make the client speak TLS and prove who it is.
This module imports no torch: an analysis on a cluster needs none.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from saezarr import errors
from saezarr.errors import ClusterError, InputError, one_line
from saezarr.option_fields import option, positive_float, positive_int

if TYPE_CHECKING:
    from distributed import Client
    from distributed.security import Security


@dataclass(frozen=True)
class ClusterOptions:
    """Where a command's dask work runs: a local cluster of N worker processes, or an existing scheduler (over TLS
    with the `tls_*` files, else as dask's config says)."""

    local_workers: int | None = option(
        help="run on a local dask cluster of N single-thread worker processes (on CUDA: one per GPU)",
        type=positive_int,
        group="where",
    )
    scheduler: str | None = option(
        help="run on the dask cluster of this scheduler, e.g. tcp://host:8786", group="where"
    )
    scheduler_file: Path | None = option(
        help="run on the dask cluster of this scheduler file", type=Path, group="where"
    )
    worker_timeout: float = option(
        60.0,
        help="seconds to wait for the scheduler and a first worker (default %(default)g)",
        type=positive_float,
    )
    tls_ca_file: Path | None = option(help="TLS: the CA certificate the scheduler's is signed by", type=Path)
    tls_cert: Path | None = option(help="TLS: this client's certificate", type=Path)
    tls_key: Path | None = option(help="TLS: this client's private key", type=Path)

    def __post_init__(self):
        given = [errors.option(name) for name, value in self._options() if value is not None]
        if len(given) > 1:
            raise InputError(f"{' and '.join(given)}: give only one of them")
        tls = [errors.option(name) for name, value in self._tls_options() if value is not None]
        if tls and not self.remote:
            raise InputError(
                f"{tls[0]}: TLS options secure the connection to a running scheduler; give {errors.option('scheduler')} or "
                f"{errors.option('scheduler_file')} too (a {errors.option('local_workers')} cluster is this process's own)"
            )
        if tls and len(tls) < 3:
            missing = [errors.option(name) for name, value in self._tls_options() if value is None]
            raise InputError(f"{tls[0]}: TLS needs {', '.join(missing)} too (the CA, and this client's certificate)")
        for name, value in self._tls_options():
            if value is not None and not Path(value).is_file():
                raise InputError(f"{errors.option(name, value)}: no such file")

    def _options(self) -> list[tuple[str, object]]:
        return [
            ("local_workers", self.local_workers),
            ("scheduler", self.scheduler),
            ("scheduler_file", self.scheduler_file),
        ]

    def _tls_options(self) -> list[tuple[str, Path | None]]:
        return [("tls_ca_file", self.tls_ca_file), ("tls_cert", self.tls_cert), ("tls_key", self.tls_key)]

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
        return next(errors.option(name, value) for name, value in self._options() if value is not None)

    def security(self) -> Security | None:
        """TLS from the `tls_*` files, encryption required; None: dask's config decides (`distributed.comm.tls.*`)."""
        if self.tls_ca_file is None:
            return None
        from distributed.security import Security

        assert self.tls_cert is not None and self.tls_key is not None  # checked: TLS needs all three files
        return Security(
            tls_ca_file=str(Path(self.tls_ca_file).resolve()),
            tls_client_cert=str(Path(self.tls_cert).resolve()),
            tls_client_key=str(Path(self.tls_key).resolve()),
            require_encryption=True,
        )


@contextlib.contextmanager
def cluster_client(options: ClusterOptions, device: str) -> Iterator[Client]:
    """A client of the scheduler (or of a new local cluster) with at least one worker; nothing is written."""
    from distributed import Client

    logging.getLogger("distributed").setLevel(logging.CRITICAL)  # its failures reach the user as one line
    with contextlib.ExitStack() as stack:
        if options.local_workers is not None:
            address = stack.enter_context(_local_cluster(options.local_workers, device))
        else:
            address = _scheduler_address(options)
        security = options.security()
        try:
            client = stack.enter_context(
                Client(address, timeout=options.worker_timeout, set_as_default=False, security=security)
            )
        except (OSError, TimeoutError, ValueError, TypeError) as exc:
            raise ClusterError(
                f"{options.option}: cannot reach the dask scheduler at {address} within {options.worker_timeout:g} s "
                f"({errors.option('worker_timeout')}) ({type(exc).__name__}: {one_line(exc)}){_tls_hint(address, security)}; "
                "nothing was written"
            ) from None
        try:
            client.wait_for_workers(1, timeout=options.worker_timeout)
        except (TimeoutError, OSError):
            raise ClusterError(
                f"{options.option}: no dask worker joined the scheduler at {address} within "
                f"{options.worker_timeout:g} s ({errors.option('worker_timeout')}); start some with `dask worker {address}`"
            ) from None
        yield client


def _tls_hint(address: str, security: Security | None) -> str:
    """What to add when a tls:// scheduler was reached without TLS files (dask's config may lack them too)."""
    if address.startswith("tls://") and security is None:
        return (
            f"; a tls:// scheduler needs {errors.option('tls_ca_file')}, {errors.option('tls_cert')} and {errors.option('tls_key')} (or "
            "dask's distributed.comm.tls config)"
        )
    return ""


def _scheduler_address(options: ClusterOptions) -> str:
    if options.scheduler is not None:
        return options.scheduler
    assert options.scheduler_file is not None  # a cluster not local is named by one of the two
    try:
        return json.loads(Path(options.scheduler_file).read_text())["address"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ClusterError(
            f"{errors.option('scheduler_file', options.scheduler_file)}: not a dask scheduler file ({type(exc).__name__}: {one_line(exc)})"
        ) from None


@contextlib.contextmanager
def _local_cluster(n_workers: int, device: str) -> Iterator[str]:
    """A cluster of single-thread worker processes on this node (one per GPU on CUDA), yielding its address."""
    from distributed import LocalCluster

    if device != "cpu":  # only a GPU limits the workers, and only torch counts GPUs
        import torch

        if torch.device(device).type == "cuda" and n_workers > torch.cuda.device_count():
            raise InputError(
                f"{errors.option('local_workers', n_workers)}: one worker per GPU, and this node has {torch.cuda.device_count()}"
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
