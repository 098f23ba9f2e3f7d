"""Per-sentence activations from a store's fragments: the final token's, or the max or mean over a sentence."""

from __future__ import annotations

from functools import partial

import dask.array as da
import numpy as np
import xarray as xr

from saezarr.errors import SaezarrError
from saezarr.store.layout import Store

POOLS = ("final", "max", "mean")


class StoreChunks:
    """The activations of some configs of a store, as units read straight from its shard files."""

    def __init__(self, store: Store, config_indices: list[int]):
        self.store = store
        self.config_indices = config_indices
        self.dtype = store.array.dtype
        # one block per feature chunk: a task decodes one inner chunk, and what it returns is small enough to regroup
        # by sentences without holding whole shards in memory
        width, step = store.width, store.feature_chunk
        self.chunks = ((1,) * len(config_indices), tuple(map(store.chunk_size, range(store.n_chunks))),
                       tuple(min(step, width - start) for start in range(0, width, step)))

    def read(self, reduce, block_info=None) -> np.ndarray:
        """`reduce` of the unit's feature chunk at the output block's location, with a leading config axis."""
        ci, chunk, part = block_info[None]["chunk-location"]
        step = self.store.feature_chunk
        return self.store.read_chunk(self.config_indices[ci], chunk, reduce, slice(part * step, (part + 1) * step))[None]


def sentence_activations(ds: xr.Dataset, pool: str = "final", store: Store | None = None) -> xr.DataArray:
    """Lazy per-sentence activations [config, sentence, feature] pooled from the store's fragments (read straight
    from the shard files of `store`, the store `ds` was opened from, if given)."""
    if pool not in POOLS:
        raise SaezarrError(f"--pool: expected one of {', '.join(POOLS)}, got {pool!r}")
    if store is not None:
        activations = StoreChunks(store, [store.config_names.index(str(c)) for c in ds.config.values])
    else:
        activations = ds.activations.data
    if not isinstance(activations, (da.Array, StoreChunks)):
        activations = da.from_array(activations, chunks=(1, -1, -1))
    sentence = np.asarray(ds.sentence_index.values)
    if np.any(np.diff(sentence) < 0):
        raise SaezarrError("the store's fragments are not ordered by sentence")
    starts = np.flatnonzero(np.r_[True, sentence[1:] != sentence[:-1]])
    if pool == "final":
        pooled = _final_rows(activations, np.asarray(ds.is_final_token.values, dtype=bool), sentence, starts)
    else:
        pooled = _segment_pool(activations, starts, pool)
    coords = {
        "sentence": np.arange(len(starts)),
        "sentence_index": ("sentence", sentence[starts]),
        "concept_strength_label": ("sentence", np.asarray(ds.concept_strength_label.values)[starts].astype(np.int64)),
        "original_sentence": ("sentence", np.array(np.asarray(ds.original_sentence.values)[starts].tolist(), dtype=object)),
    }
    coords.update({name: ds[name] for name in ds.coords if ds[name].dims == ("config",)})
    coords["feature"] = ds.feature
    return xr.DataArray(pooled, dims=("config", "sentence", "feature"), coords=coords, name="activation",
                        attrs={"pool": pool})


def _final_rows(activations: da.Array | StoreChunks, is_final: np.ndarray, sentence: np.ndarray, starts: np.ndarray) -> da.Array:
    finals = np.flatnonzero(is_final)
    if len(finals) != len(starts) or np.any(sentence[finals] != sentence[starts]):
        raise SaezarrError("--pool final: not every sentence has exactly one final-token fragment in the store")
    return _per_fragment_chunk(activations, finals, _take_rows, activations.dtype)


def _segment_pool(activations: da.Array | StoreChunks, starts: np.ndarray, pool: str) -> da.Array:
    """Reduce each sentence's fragments: first within each fragment chunk, then across the chunks it spans."""
    bounds = np.cumsum((0, *activations.chunks[1]))
    # a segment is the part of one sentence inside one fragment chunk
    seg_starts = np.union1d(starts, bounds[:-1])
    how = "max" if pool == "max" else "sum"
    dtype = activations.dtype if pool == "max" else np.float64
    segments = _per_fragment_chunk(activations, seg_starts, partial(_reduce_rows, how=how), dtype)
    seg_sentence = np.searchsorted(starts, seg_starts, side="right") - 1
    first_of_sentence = np.r_[True, seg_sentence[1:] != seg_sentence[:-1]]
    if not first_of_sentence.all():
        segments = _merge_split_sentences(segments, first_of_sentence, how)
    if pool == "mean":
        lengths = np.diff(np.r_[starts, bounds[-1]]).astype(np.float64)
        segments = segments / lengths[None, :, None]
    return segments


def _per_fragment_chunk(activations: da.Array | StoreChunks, rows: np.ndarray, func, dtype) -> da.Array:
    """Apply func(block, local_rows) to every fragment chunk; output chunk i has one row per rows-entry in chunk i."""
    bounds = np.cumsum((0, *activations.chunks[1]))
    local = [rows[(rows >= a) & (rows < b)] - a for a, b in zip(bounds[:-1], bounds[1:])]
    out_chunks = (activations.chunks[0], tuple(len(r) for r in local), activations.chunks[2])
    meta = np.empty((0, 0, 0), dtype=dtype)
    if isinstance(activations, StoreChunks):
        read = partial(_read_per_chunk, source=activations, reduce=func, local=local)
        return da.map_blocks(read, chunks=out_chunks, dtype=dtype, meta=meta)
    return da.map_blocks(partial(_apply_per_chunk, reduce=func, local=local), activations, chunks=out_chunks, dtype=dtype,
                         meta=meta)


def _apply_per_chunk(block: np.ndarray, reduce, local: list[np.ndarray], block_info=None) -> np.ndarray:
    return reduce(block, local[block_info[0]["chunk-location"][1]])


def _read_per_chunk(source: StoreChunks, reduce, local: list[np.ndarray], block_info=None) -> np.ndarray:
    rows = local[block_info[None]["chunk-location"][1]]
    return source.read(lambda block: reduce(block[None], rows)[0], block_info)


def _take_rows(block: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return block[:, rows, :]


def _reduce_rows(block: np.ndarray, rows: np.ndarray, how: str) -> np.ndarray:
    if how == "max":
        return np.maximum.reduceat(block, rows, axis=1)
    return np.add.reduceat(block, rows, axis=1, dtype=np.float64)


def _merge_split_sentences(segments: da.Array, first_of_sentence: np.ndarray, how: str) -> da.Array:
    """Combine the segments of sentences that span fragment chunks, after moving chunk edges to sentence starts."""
    seg_bounds = np.cumsum((0, *segments.chunks[1]))
    sentence_starts = np.flatnonzero(first_of_sentence)
    # each chunk edge moves forward to the next segment that starts a sentence
    edges = sentence_starts[np.minimum(np.searchsorted(sentence_starts, seg_bounds[1:-1]), len(sentence_starts) - 1)]
    edges = np.unique(np.r_[0, edges[edges > 0], len(first_of_sentence)])
    segments = segments.rechunk({1: tuple(np.diff(edges))})
    return _per_fragment_chunk(segments, sentence_starts, partial(_reduce_rows, how=how), segments.dtype)
