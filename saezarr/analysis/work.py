"""The analysis's unit of work, one config's range of features: its per-sentence activations, written to the cache,
and their metrics; and where units run: a thread pool here, or the workers of the default dask client."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import numpy as np

from saezarr.analysis.metrics import stacked_metrics
from saezarr.analysis.pooling import SentenceLayout, pool_sentences
from saezarr.store.shards import ChunkFiles
from saezarr.store.layout import Store
from saezarr.units import usable_cores


@dataclass(frozen=True)
class FeatureUnit:
    """One config's features [start, stop): `position` among the analysed configs, `config` the store's index."""

    position: int
    config: int
    start: int
    stop: int


def feature_units(store: Store, config_indices: Sequence[int]) -> list[FeatureUnit]:
    """One unit per (config, inner feature chunk) of the store: the shards' smallest decodable part."""
    step = store.feature_chunk
    return [FeatureUnit(position, ci, start, min(start + step, store.width))
            for position, ci in enumerate(config_indices) for start in range(0, store.width, step)]


def compute_unit(unit: FeatureUnit, store_path: str, layout: SentenceLayout, pool: str,
                 pooled: ChunkFiles) -> np.ndarray:
    """Pool the unit's activations per sentence, write them to `pooled`, and return their metrics [metric, feature]."""
    store = _open_store(store_path)
    features = slice(unit.start, unit.stop)
    bounds = [store.chunk_bounds(chunk) for chunk in range(store.n_chunks)]

    def read(chunk: int, reduce: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        return store.read_chunk(unit.config, chunk, reduce, features)

    values = pool_sentences(read, bounds, layout, pool, unit.stop - unit.start, store.array.dtype)
    pooled[unit.position : unit.position + 1, :, unit.start : unit.stop] = values[None]
    return stacked_metrics(values, layout.labels)


@lru_cache(maxsize=4)
def _open_store(path: str) -> Store:
    """The store at path, opened once per process (workers run many units of the same store)."""
    return Store(path)


def map_units(function: Callable, units: Sequence, progress: Callable[[int], None] | None = None) -> list:
    """function(unit) for every unit, in order: on the default dask client's workers if one is set (the CLI's
    --scheduler), else on a thread pool here; progress(1) after each."""
    client = _default_client()
    if client is None:
        with ThreadPoolExecutor(max_workers=usable_cores()) as threads:
            return list(_reporting(threads.map(function, units), progress))
    futures = client.map(function, units, pure=False)
    from distributed import as_completed

    for _ in _reporting(as_completed(futures), progress):
        pass
    return client.gather(futures)


def _reporting(results: Iterable, progress: Callable[[int], None] | None) -> Iterable:
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


def unit_function(store: Store, layout: SentenceLayout, pool: str, pooled: ChunkFiles) -> Callable[[FeatureUnit], np.ndarray]:
    """compute_unit bound to one analysis (picklable)."""
    return partial(compute_unit, store_path=str(Path(store.path).resolve()), layout=layout, pool=pool, pooled=pooled)
