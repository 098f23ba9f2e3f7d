"""Where the analysis's units of work run: on the default dask.distributed client's workers if one is set (the CLI's
--scheduler), else on one thread per core here."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from saezarr.units import usable_cores


def map_units(function: Callable, units: Sequence, progress: Callable[[int], None] | None = None) -> Iterator[tuple]:
    """(unit, function(unit)) for every unit, as each is done, so that a caller keeps only what it has not used
    yet: on the default dask client's workers if one is set (the CLI's --scheduler), else on a thread pool here;
    progress(1) after each."""
    client = _default_client()
    if client is None:
        with ThreadPoolExecutor(max_workers=usable_cores()) as threads:
            yield from _reporting(zip(units, threads.map(function, units)), progress)
        return
    from distributed import as_completed

    unit_of = dict(zip(client.map(function, units, pure=False), units))  # the only reference kept to each future
    for future, result in _reporting(as_completed(list(unit_of), with_results=True), progress):
        yield unit_of.pop(future), result


def _reporting(results: Iterable, progress: Callable[[int], None] | None) -> Iterator:
    for result in results:
        if progress is not None:
            progress(1)
        yield result


def _default_client():
    """The default dask.distributed client, if distributed is imported and one is set."""
    if "distributed" not in sys.modules:  # nothing can have set a client; importing distributed costs 0.3-1 s
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        return None
