"""What the analysis's unit of work computes, one config's range of features: its per-sentence activations, written
to the cache, and their metrics (where units run is `saezarr.execution`'s concern)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from saezarr.analysis.stats.metrics import stacked_metrics
from saezarr.analysis.stats.pooling import SentenceLayout, pool_sentences
from saezarr.execution.caches import current_store
from saezarr.execution.connect import ClusterOptions
from saezarr.store.format import Store
from saezarr.store.shards import ChunkFiles
from saezarr.store.storage import absolute_location, unreachable


@dataclass(frozen=True)
class FeatureUnit:
    """One config's features [start, stop): `position` among the analysed configs, `config` the store's index."""

    position: int
    config: int
    start: int
    stop: int


def feature_units(store: Store, config_indices: Sequence[int]) -> list[FeatureUnit]:
    """One unit per (config, inner feature chunk) of the config's SAE: the shards' smallest decodable part."""
    step = store.feature_chunk
    return [
        FeatureUnit(position, ci, start, min(start + step, int(store.widths[ci])))
        for position, ci in enumerate(config_indices)
        for start in range(0, int(store.widths[ci]), step)
    ]


def compute_unit(
    unit: FeatureUnit,
    store_path: str,
    store_identity: str,
    layout: SentenceLayout,
    pool: str,
    pooled: ChunkFiles,
) -> np.ndarray:
    """Pool the unit's activations per sentence, write them to `pooled`, and return their metrics [metric, feature]."""
    store = current_store(store_path, store_identity)
    features = slice(unit.start, unit.stop)
    bounds = [store.chunk_bounds(chunk) for chunk in range(store.n_chunks)]

    def read(chunk: int, reduce: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        return store.read_chunk(unit.config, chunk, reduce, features)

    values = pool_sentences(read, bounds, layout, pool, unit.stop - unit.start, store.dtype)
    pooled[unit.position : unit.position + 1, :, unit.start : unit.stop] = values[None]
    return stacked_metrics(values, layout.labels)


def unit_function(
    store: Store, layout: SentenceLayout, pool: str, pooled: ChunkFiles
) -> Callable[[FeatureUnit], np.ndarray]:
    """compute_unit bound to one analysis (picklable)."""
    path = absolute_location(store.path)
    return partial(
        compute_unit, store_path=str(path), store_identity=store.identity, layout=layout, pool=pool, pooled=pooled
    )


@contextlib.contextmanager
def units_on(cluster: ClusterOptions, store: Store, cache_root: Path) -> Iterator[None]:
    """While open, the analysis's units run on the cluster (if one is wanted), once every worker present can read the
    store and write the analysis cache, and runs this saezarr."""
    if not cluster.wanted:  # nor import distributed (0.3-1 s)
        yield
        return
    from saezarr.execution.checks import probe_marker, probe_workers
    from saezarr.execution.connect import cluster_client
    from saezarr.execution.running import units_run_on

    with cluster_client(cluster, "cpu") as client:
        cache_root.mkdir(parents=True, exist_ok=True)
        with probe_marker(cache_root, "analysis") as marker:
            cache = (marker, True, f"the analysis cache folder {cache_root}")
            if isinstance(store.path, str):  # a store at a URL: each worker must reach it, no shared folder needed
                probe_workers(client, cluster, [cache], (unreachable, store.path))
            else:
                store_file = (store.path.resolve() / "zarr.json", False, f"the store {store.path}")
                probe_workers(client, cluster, [store_file, cache])
        with units_run_on(client):
            yield
