"""Running units of work: on one thread per core in this process, or as tasks on a dask cluster's checked workers.

A stage says what a unit computes (a picklable function of the unit); this module runs the units and yields each
result as it comes, reporting progress. On a cluster, every task first checks that its worker runs the client's
code (`checks.checked_call`).
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from saezarr.execution.checks import checked_call, code_digest
from saezarr.machine import usable_cores

if TYPE_CHECKING:
    from distributed import Client, Future

T = TypeVar("T")
_client: ContextVar[Client | None] = ContextVar("saezarr_units_client", default=None)


@contextlib.contextmanager
def units_run_on(client: Client | None) -> Iterator[None]:
    """While open, `map_units` runs its units on this client's cluster (None: as if none were open)."""
    token = _client.set(client)
    try:
        yield
    finally:
        _client.reset(token)


def map_units(function: Callable, units: Sequence, progress: Callable[[int], None] | None = None) -> Iterator[tuple]:
    """(unit, function(unit)) for every unit, as each is done, so that a caller keeps only what it has not used yet;
    on the cluster of `units_run_on` (else the default dask client, if one is set), else on a thread pool here;
    progress(1) after each."""
    client = _client.get() or _default_client()
    if client is None:
        yield from _reporting(zip(units, map_in_threads(function, units)), progress)
        return
    from dask.utils import funcname
    from distributed import as_completed

    # tasks keep the stage's function name (its task prefix on the dashboard), not the check's
    keys = [f"{funcname(function)}-{uuid.uuid4().hex}" for _ in units]
    futures = client.map(partial(checked_call, function, code_digest()), units, key=keys, pure=False)
    unit_of = dict(zip(futures, units))  # the only reference kept to each future
    del futures
    for future, result in _reporting(as_completed(list(unit_of), with_results=True, loop=client.loop), progress):
        yield unit_of.pop(future), result


def map_in_threads(function: Callable[[Any], T], items: Iterable) -> Iterator[T]:
    """function(item) for every item, in order, on one thread per core in this process."""
    from threadpoolctl import threadpool_limits

    cores = usable_cores()
    # a BLAS that runs its own threads under each of ours oversubscribes the cores: numpy's linear algebra then
    # takes longer on several threads than on one
    limits = threadpool_limits(limits=1, user_api="blas") if cores > 1 else contextlib.nullcontext()
    with limits, ThreadPoolExecutor(max_workers=cores) as threads:
        yield from threads.map(function, items)


def submit_checked(client: Client, function: Callable, *args: Any, **options: Any) -> Future:
    """A task running function(*args) on a worker checked to run this client's code; `options` go to client.submit."""
    return client.submit(checked_call, function, code_digest(), *args, **options)


def completed(client: Client, futures: dict[Future, T]) -> Generator[tuple[T, Future], None, None]:
    """Each (item, future) of `futures` as its task finishes; the tasks left are cancelled once the caller stops."""
    from distributed import as_completed

    try:
        for future in as_completed(futures, loop=client.loop):
            yield futures[future], future
    finally:
        client.cancel(list(futures))


def _reporting(results: Iterable, progress: Callable[[int], None] | None) -> Iterator:
    for result in results:
        if progress is not None:
            progress(1)
        yield result


def _default_client() -> Client | None:
    """The default dask.distributed client, if distributed is imported and one is set."""
    if "distributed" not in sys.modules:  # nothing can have set a client; importing distributed costs 0.3-1 s
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        return None
