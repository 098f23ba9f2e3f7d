"""The analysis's unit of work, one config's range of features: its per-sentence activations, written to the cache,
and their metrics (where units run is `saezarr.analysis.runner`'s concern)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import numpy as np

from saezarr.analysis.metrics import stacked_metrics
from saezarr.analysis.pooling import SentenceLayout, pool_sentences
from saezarr.store.layout import ACTIVATIONS, Store
from saezarr.store.shards import ChunkFiles


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
    return [
        FeatureUnit(position, ci, start, min(start + step, store.width))
        for position, ci in enumerate(config_indices)
        for start in range(0, store.width, step)
    ]


def compute_unit(
    unit: FeatureUnit,
    store_path: str,
    store_version: tuple[int, ...],
    layout: SentenceLayout,
    pool: str,
    pooled: ChunkFiles,
) -> np.ndarray:
    """Pool the unit's activations per sentence, write them to `pooled`, and return their metrics [metric, feature]."""
    store = _open_store(store_path, store_version)
    features = slice(unit.start, unit.stop)
    bounds = [store.chunk_bounds(chunk) for chunk in range(store.n_chunks)]

    def read(chunk: int, reduce: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        return store.read_chunk(unit.config, chunk, reduce, features)

    values = pool_sentences(read, bounds, layout, pool, unit.stop - unit.start, store.dtype)
    pooled[unit.position : unit.position + 1, :, unit.start : unit.stop] = values[None]
    return stacked_metrics(values, layout.labels)


@lru_cache(maxsize=4)
def _open_store(path: str, version: tuple[int, ...]) -> Store:
    """The store at path, opened once per process and version (workers run many units of the same store; a process
    that outlives an analysis, a notebook's or a cluster worker, must not read a store rebuilt in place as the old)."""
    return Store(path)


def _store_version(path: Path) -> tuple[int, ...]:
    """What changes when a store is created again at the same path: its activations array's metadata file."""
    stat = (Path(path) / ACTIVATIONS / "zarr.json").stat()
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def unit_function(
    store: Store, layout: SentenceLayout, pool: str, pooled: ChunkFiles
) -> Callable[[FeatureUnit], np.ndarray]:
    """compute_unit bound to one analysis (picklable)."""
    path = Path(store.path).resolve()
    return partial(
        compute_unit, store_path=str(path), store_version=_store_version(path), layout=layout, pool=pool, pooled=pooled
    )
