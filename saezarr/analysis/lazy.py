"""The analysis as lazy xarray objects on dask: per-sentence activations and feature metrics of any store Dataset."""

from __future__ import annotations

from collections.abc import Hashable
from functools import partial

import dask.array as da
import numpy as np
import xarray as xr

from saezarr.analysis.stats.blocks import LABELS
from saezarr.analysis.stats.metrics import METRICS, stacked_metrics, unstacked
from saezarr.analysis.stats.pooling import SentenceLayout, pool_sentences, pooled_dtype

FRAGMENT_STEP = 512  # fragments read at a time from activations that are not chunked by dask


def feature_metrics(ds: xr.Dataset, pool: str = "final") -> xr.Dataset:
    """Every feature's metrics against the concept labels: a lazy Dataset with dims config x feature."""
    return metrics_of(sentence_activations(ds, pool))


def sentence_activations(ds: xr.Dataset, pool: str = "final") -> xr.DataArray:
    """Lazy per-sentence activations [config, sentence, feature] pooled from a store Dataset's fragments."""
    layout = SentenceLayout.of(ds.sentence_index.values, ds.is_final_token.values, ds.concept_strength_label.values)
    layout.check(pool)
    activations = ds.activations.data if isinstance(ds.activations.data, da.Array) else ds.activations.variable
    if isinstance(activations, da.Array):
        fragment_chunks, feature_chunks = activations.chunks[1], activations.chunks[2]
    else:  # in memory, or lazily indexed (a Variable reads only the part indexed)
        n_fragments, width = activations.shape[1:]
        fragment_chunks = _steps(n_fragments, FRAGMENT_STEP)
        feature_chunks = (width,)
    bounds = np.cumsum((0, *fragment_chunks))
    dtype = pooled_dtype(pool, activations.dtype)
    pooled = da.map_blocks(
        partial(
            _pool_block,
            activations=activations,
            bounds=list(zip(bounds[:-1], bounds[1:])),
            layout=layout,
            pool=pool,
            feature_bounds=np.cumsum((0, *feature_chunks)),
        ),
        chunks=((1,) * activations.shape[0], (layout.n_sentences,), feature_chunks),
        dtype=dtype,
        meta=np.empty((0, 0, 0), dtype=dtype),
    )
    starts = layout.starts
    coords: dict[Hashable, object] = {
        "sentence": np.arange(layout.n_sentences),
        "sentence_index": ("sentence", np.asarray(ds.sentence_index.values)[starts]),
        "concept_strength_label": ("sentence", layout.labels),
        "original_sentence": (
            "sentence",
            np.array(np.asarray(ds.original_sentence.values)[starts].tolist(), dtype=object),
        ),
    }
    coords.update({name: ds[name] for name in ds.coords if ds[name].dims == ("config",)})
    coords["feature"] = ds.feature
    return xr.DataArray(
        pooled, dims=("config", "sentence", "feature"), coords=coords, name="activation", attrs={"pool": pool}
    )


def metrics_of(pooled: xr.DataArray) -> xr.Dataset:
    """The metrics of per-sentence activations [config, sentence, feature] (lazy if they are dask-backed)."""
    labels = np.asarray(pooled.concept_strength_label.values, dtype=np.int64)
    data = pooled.data if isinstance(pooled.data, da.Array) else da.from_array(pooled.data)
    data = data.rechunk({0: 1, 1: -1})
    stacked = da.map_blocks(
        partial(_block_metrics, labels=labels),
        data,
        chunks=((len(METRICS),), data.chunks[0], data.chunks[2]),
        new_axis=[0],
        drop_axis=[1],
        dtype=np.float64,
        meta=np.empty((0, 0, 0), dtype=np.float64),
    )
    coords = {name: pooled[name] for name in pooled.coords if pooled[name].dims in (("config",), ("feature",))}
    variables = {name: (("config", "feature"), values) for name, values in unstacked(stacked).items()}
    attrs = {
        "pool": pooled.attrs.get("pool"),
        "n_sentences": int(data.shape[1]),
        **{f"n_label_{k}": int((labels == k).sum()) for k in LABELS},
    }
    return xr.Dataset(variables, coords=coords, attrs=attrs)


def _pool_block(
    activations, bounds, layout: SentenceLayout, pool: str, feature_bounds: np.ndarray, block_info=None
) -> np.ndarray:
    """The pooled block at the output block's location, reading its config's features one fragment chunk at a time."""
    config, _, part = block_info[None]["chunk-location"]
    features = slice(int(feature_bounds[part]), int(feature_bounds[part + 1]))

    def read(chunk, reduce):
        start, stop = bounds[chunk]
        rows = activations[config, start:stop, features]
        if isinstance(rows, da.Array):
            rows = rows.compute(scheduler="sync")  # a graph of its own inside this task: run it here
        return reduce(np.asarray(rows))

    return pool_sentences(read, bounds, layout, pool, features.stop - features.start, activations.dtype)[None]


def _block_metrics(block: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Metrics of one config's [1, sentences, features] block, stacked as [metric, 1, features]."""
    return stacked_metrics(block[0], labels)[:, None, :]


def _steps(total: int, step: int) -> tuple[int, ...]:
    return tuple(min(step, total - start) for start in range(0, total, step)) or (0,)
