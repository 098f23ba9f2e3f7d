"""The analysis cache: per-sentence activations and metrics, keyed by a fingerprint of the store, pool and configs."""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr
from numcodecs import Zstd
from zarr.codecs import ZstdCodec

from saezarr.analysis.metrics import METRICS, feature_block, metrics_of
from saezarr.store.layout import ACTIVATIONS, Store

CACHE_FORMAT = 2  # bump when what the cache holds or how it is computed changes
POOLED = "pooled.zarr"
METRICS_FILE = "metrics.npy"
SENTENCE_BLOCK = 1024


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
    """One fingerprint's cache folder: `pooled.zarr` [config, sentence, feature] and `metrics.npy` [metric, config, feature]."""

    def __init__(self, key: str, root: Path | None = None):
        self.path = (root or cache_root()) / "analysis" / key

    @property
    def complete(self) -> bool:
        """True if both parts are there (the folder appears only once written whole)."""
        return (self.path / POOLED / "zarr.json").is_file() and (self.path / METRICS_FILE).is_file()

    def fill(self, pooled: xr.DataArray) -> None:
        """Compute and store per-sentence activations, then their metrics; the folder appears by rename."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        try:
            metrics = _write_pooled_and_metrics(pooled, staging / POOLED)
            release_freed_memory()
            np.save(staging / METRICS_FILE, np.stack([metrics[name].values.astype(np.float64) for name in METRICS]))
            try:
                os.rename(staging, self.path)
            except OSError:  # another run filled it first
                pass
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def pooled(self, like: xr.DataArray) -> xr.DataArray:
        """The cached per-sentence activations, lazily, with the coordinates of `like`."""
        return like.copy(data=da.from_zarr(str(self.path / POOLED)))

    def pooled_array(self) -> zarr.Array:
        """The cached per-sentence activations as a zarr array, for reading a few features."""
        return zarr.open_array(self.path / POOLED, mode="r")

    def metrics(self, like: xr.DataArray) -> xr.Dataset:
        """The cached metrics as an in-memory Dataset with the config and feature coordinates of `like`."""
        stacked = np.load(self.path / METRICS_FILE)
        coords = {name: like[name] for name in like.coords if like[name].dims in (("config",), ("feature",))}
        variables = {
            name: (("config", "feature"), stacked[i].astype(bool) if name == "monotonic" else stacked[i])
            for i, name in enumerate(METRICS)
        }
        return xr.Dataset(variables, coords=coords)

    def touch(self) -> None:
        """Mark the cache as used now (its folder's mtime), leaving its files as they are."""
        os.utime(self.path)


def _write_pooled_and_metrics(pooled: xr.DataArray, path: Path) -> xr.Dataset:
    """Write the per-sentence activations to a zarr array at path and return their metrics, computed."""
    _, n_sentences, width = pooled.shape
    chunks = (1, min(n_sentences, SENTENCE_BLOCK), feature_block(n_sentences, width))
    blocks = pooled.data.rechunk(chunks)
    target = ChunkFiles(path, blocks.shape, chunks, blocks.dtype)
    if n_sentences <= SENTENCE_BLOCK:
        # each block holds every sentence of its features: the metrics use the blocks as they are written
        written = da.store(blocks, target, lock=False, compute=False)
        return dask.compute(metrics_of(pooled.copy(data=blocks)), written)[0]
    # a feature block of every sentence gathers several sentence blocks: read back from disk, so that memory stays
    # at one sentence block per config instead of the whole config
    da.store(blocks, target, lock=False)
    cached = da.from_array(target, chunks=(1, n_sentences, chunks[2]), asarray=False, fancy=False)
    return metrics_of(pooled.copy(data=cached)).compute()


def release_freed_memory() -> None:
    """Hand the memory that worker threads freed back to the system (glibc keeps it in per-thread arenas, so the
    peak of what follows would stack on the peak of the fill); a no-op without glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class ChunkFiles:
    """A new zarr array whose chunks are written straight to their files (zstd level 1), one block at a time: a
    dask store target that costs the encoding alone, not a trip through zarr's event loop per chunk."""

    def __init__(self, path: Path, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: np.dtype):
        self.path = Path(path)
        self.chunks = chunks
        codec = ZstdCodec(level=1, checksum=False)
        self.array = zarr.create_array(str(path), shape=shape, chunks=chunks, dtype=dtype, compressors=codec,
                                       fill_value=0)
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.shape, self.ndim = tuple(shape), len(shape)
        self.zstd = Zstd(level=1, checksum=False)

    def __setitem__(self, region: tuple[slice, ...], block: np.ndarray) -> None:
        """Write the block at region, which is one whole chunk (or the part of an edge chunk inside the array)."""
        coords = tuple(s.start // c for s, c in zip(region, self.chunks))
        if block.shape != self.chunks:  # zarr stores edge chunks whole, the part outside the array as fill value
            padded = np.zeros(self.chunks, dtype=block.dtype)
            padded[tuple(slice(0, n) for n in block.shape)] = block
            block = padded
        file = self._file(coords)
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(self.zstd.encode(np.ascontiguousarray(block, dtype=self.dtype)))

    def __getitem__(self, region: tuple[slice, ...]) -> np.ndarray:
        """The values at region, which starts at a chunk edge: read from the chunk files, without zarr's event loop."""
        region = tuple(slice(*s.indices(n)[:2]) for s, n in zip(region, self.shape))
        out = np.empty(tuple(s.stop - s.start for s in region), dtype=self.dtype)
        ranges = [range(s.start // c, -(-s.stop // c)) for s, c in zip(region, self.chunks)]
        for coords in itertools.product(*ranges):
            block = np.frombuffer(self.zstd.decode(self._file(coords).read_bytes()), dtype=self.dtype)
            block = block.reshape(self.chunks)
            place = tuple(slice(i * c - s.start, min((i + 1) * c, s.stop) - s.start)
                          for i, c, s in zip(coords, self.chunks, region))
            out[place] = block[tuple(slice(0, p.stop - p.start) for p in place)]
        return out

    def _file(self, coords: tuple[int, ...]) -> Path:
        return self.path / self.array.metadata.encode_chunk_key(coords)
