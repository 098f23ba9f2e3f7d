"""analyze's fast paths give what the general ones give: its units of work reading the shard files against the lazy
xarray path, the metrics of all-zero features, and the cache's chunk files against zarr."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from analyzetools import reference_metrics, reference_pooled

import saezarr
from saezarr.analysis.cache.files import AnalysisCache
from saezarr.analysis.lazy import sentence_activations
from saezarr.analysis.stats.metrics import METRICS, block_metrics
from saezarr.analysis.stats.pooling import SentenceLayout
from saezarr.store.reading import open_existing
from saezarr.store.shards import ChunkFiles

CHUNK = 7  # fragments per chunk: sentences span chunk edges


@pytest.fixture(scope="module")
def store(cli_store_chunk7):
    """`saezarr build` of the tiny model and the demo CSV in chunks of CHUNK fragments (tests/conftest.py): read only."""
    assert CHUNK == 7
    return cli_store_chunk7


@pytest.mark.parametrize("pool", ["final", "max", "mean"])
def test_units_reading_the_shards_equal_the_lazy_xarray_path(store, pool, tmp_path):
    configs = [2, 0]
    ds = saezarr.open_store(store).isel(config=configs)
    shards = open_existing(store)
    layout = SentenceLayout.of(ds.sentence_index.values, ds.is_final_token.values, ds.concept_strength_label.values)
    cache = AnalysisCache(pool, tmp_path)
    cache.fill(shards, configs, layout, pool)
    lazy = sentence_activations(ds, pool)
    np.testing.assert_array_equal(cache.pooled()[:, :, :], lazy.values)
    expected, _, _ = reference_pooled(store, pool)
    np.testing.assert_allclose(lazy.values.astype(np.float64), expected[configs], rtol=1e-12, atol=0)
    metrics, lazy_metrics = cache.metrics(), saezarr.feature_metrics(ds, pool).compute()
    for name in METRICS:
        np.testing.assert_array_equal(metrics[name], lazy_metrics[name].values, err_msg=name)


@pytest.mark.parametrize("density", [0.1, 0.6], ids=["sparse: ranks from the positives", "dense: scipy's ranks"])
@pytest.mark.parametrize("missing", [None, 1, 3], ids=["all labels", "no label 1", "no label 3"])
def test_all_zero_features_get_the_reference_metrics(missing, density):
    rng = np.random.default_rng(3)
    labels = np.arange(40) % 4
    if missing is not None:
        labels[labels == missing] = 2
    x = np.where(rng.random((40, 12)) < density, rng.gamma(2.0, 1.0, (40, 12)), 0.0).astype(np.float32)
    x[rng.random((40, 12)) < 0.1] = 1.0  # ties among the positives
    x[:, [0, 5, 6]] = 0.0  # all zero
    x[:, 7] = 1.5  # constant, not zero
    x[::3, 8] = 2.0  # ties
    computed = block_metrics(x, labels)
    expected = reference_metrics(x[None].astype(np.float64), labels)
    assert list(computed) == list(METRICS)
    for name in METRICS:
        np.testing.assert_allclose(computed[name], expected[name][0], rtol=1e-9, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_chunk_files_read_back_through_zarr_with_edge_chunks(tmp_path, dtype):
    import dask.array as da
    import zarr

    values = np.random.default_rng(8).random((2, 5, 7)).astype(dtype)
    target = ChunkFiles(tmp_path / "a.zarr", values.shape, (1, 3, 4), values.dtype)
    da.store(da.from_array(values, chunks=(1, 3, 4)), target, lock=False)
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "a.zarr", mode="r")[:], values)
    np.testing.assert_array_equal(target[1:2, :, 4:], values[1:2, :, 4:])  # across sentence chunks, to the edges
    np.testing.assert_array_equal(target[:, 3:, :], values[:, 3:, :])
    reopened = pickle.loads(pickle.dumps(ChunkFiles.existing(tmp_path / "a.zarr")))  # as dask workers get it
    np.testing.assert_array_equal(reopened[:, :, :], values)
    at_once = ChunkFiles(tmp_path / "b.zarr", values.shape, (1, 3, 4), values.dtype)
    at_once[1:2, :, :] = values[1:2]  # one write of several chunks, edge chunks included
    at_once[0:1, :, :] = values[0:1]
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "b.zarr", mode="r")[:], values)
