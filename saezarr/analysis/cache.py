"""The analysis cache: per-sentence activations and metrics, keyed by a fingerprint of the store, pool and configs."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from saezarr.analysis.metrics import METRICS
from saezarr.analysis.pooling import SentenceLayout, pooled_dtype
from saezarr.analysis.work import feature_units, map_units, unit_function
from saezarr.store.layout import ACTIVATIONS, Store
from saezarr.store.shards import ChunkFiles

CACHE_FORMAT = 3  # bump when what the cache holds or how it is computed changes
POOLED = "pooled.zarr"
METRICS_FILE = "metrics.npy"


def cache_root() -> Path:
    """Where saezarr keeps caches: $SAEZARR_CACHE, else ~/.cache/saezarr."""
    return Path(os.environ.get("SAEZARR_CACHE") or Path.home() / ".cache" / "saezarr")


def fingerprint(store: Store, pool: str, config_indices: Sequence[int]) -> str:
    """A hex digest of the store's identity and every selected unit's shard file, the pool and the configs."""
    units = []
    for ci in config_indices:
        for chunk in range(store.n_chunks):
            key = store.array.metadata.encode_chunk_key((ci, chunk, 0))
            stat = (store.path / ACTIVATIONS / key).stat()
            units.append([key, stat.st_size, stat.st_mtime_ns])
    identity = {
        "format": CACHE_FORMAT,
        "store": str(store.path.resolve()),
        "attrs": store.attrs,
        "shape": list(store.array.shape),
        "pool": pool,
        "configs": [store.config_names[ci] for ci in config_indices],
        "units": units,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:32]


class AnalysisCache:
    """One fingerprint's cache folder: `pooled.zarr` [config, sentence, feature] and `metrics.npy` [metric, config,
    feature]."""

    def __init__(self, key: str, root: Path | None = None):
        self.path = (root or cache_root()) / "analysis" / key

    @property
    def complete(self) -> bool:
        """True if both parts are there (the folder appears only once written whole)."""
        return (self.path / POOLED / "zarr.json").is_file() and (self.path / METRICS_FILE).is_file()

    def fill(self, store: Store, config_indices: Sequence[int], layout: SentenceLayout, pool: str,
             progress: Callable[[int], None] | None = None) -> None:
        """Compute and store the per-sentence activations of the configs, and their metrics, one unit of work per
        (config, feature chunk); the folder appears by rename once whole."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        try:
            shape = (len(config_indices), layout.n_sentences, store.width)
            pooled = ChunkFiles(staging / POOLED, shape, (1, layout.n_sentences, store.feature_chunk),
                                pooled_dtype(pool, store.array.dtype))
            units = feature_units(store, config_indices)
            results = map_units(unit_function(store, layout, pool, pooled), units, progress)
            metrics = np.empty((len(METRICS), *shape[::2]), dtype=np.float64)
            for unit, values in zip(units, results):
                metrics[:, unit.position, unit.start : unit.stop] = values
            release_freed_memory()
            np.save(staging / METRICS_FILE, metrics)
            try:
                os.rename(staging, self.path)
            except OSError:  # another run filled it first
                pass
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def pooled(self) -> ChunkFiles:
        """The cached per-sentence activations, read chunk by chunk."""
        return ChunkFiles.existing(self.path / POOLED)

    def metrics(self) -> dict[str, np.ndarray]:
        """The cached metrics, each a [config, feature] array (`monotonic` as bool), by name in METRICS order."""
        stacked = np.load(self.path / METRICS_FILE)
        return {name: stacked[i].astype(bool) if name == "monotonic" else stacked[i] for i, name in enumerate(METRICS)}

    def touch(self) -> None:
        """Mark the cache as used now (its folder's mtime), leaving its files as they are."""
        os.utime(self.path)


def release_freed_memory() -> None:
    """Hand the memory that worker threads freed back to the system (glibc keeps it in per-thread arenas, so the
    peak of what follows would stack on the peak of the fill); a no-op without glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
