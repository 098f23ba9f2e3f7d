"""analyze's fast paths give what the general ones give: pooling from the shard files, the metrics of all-zero
features, and the cache filled in one pass or two."""

from __future__ import annotations

import numpy as np
import pytest
from analyzetools import build_store, reference_metrics, reference_pooled

import saezarr
from saezarr.analysis import cache as cache_module
from saezarr.analysis.cache import AnalysisCache, ChunkFiles
from saezarr.analysis.metrics import METRICS, block_metrics
from saezarr.analysis.pooling import sentence_activations
from saezarr.store.reading import open_existing

CHUNK = 7  # fragments per chunk: sentences span chunk edges


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny):
    folder = tmp_path_factory.mktemp("analyze-fast")
    return build_store(folder, tiny.config_file, tiny.csv, "--chunk-fragments", str(CHUNK))


@pytest.mark.parametrize("pool", ["final", "max", "mean"])
def test_pooling_from_the_shards_equals_pooling_through_xarray(store, pool):
    ds = saezarr.open_store(store).isel(config=[2, 0])
    direct = sentence_activations(ds, pool, open_existing(store)).values
    np.testing.assert_array_equal(direct, sentence_activations(ds, pool).values)
    expected, _, _ = reference_pooled(store, pool)
    np.testing.assert_allclose(direct.astype(np.float64), expected[[2, 0]], rtol=1e-12, atol=0)


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


def test_the_cache_filled_in_one_pass_or_two_holds_the_same(store, tmp_path, monkeypatch):
    ds = saezarr.open_store(store)
    pooled = sentence_activations(ds, "max", open_existing(store))
    one_pass = AnalysisCache("one", tmp_path)
    one_pass.fill(pooled)
    # fewer sentences per block than the store has: written, then read back; the second block is an edge chunk
    monkeypatch.setattr(cache_module, "SENTENCE_BLOCK", pooled.sizes["sentence"] // 2 + 1)
    two_passes = AnalysisCache("two", tmp_path)
    two_passes.fill(pooled)
    np.testing.assert_array_equal(one_pass.pooled_array()[:], two_passes.pooled_array()[:])
    np.testing.assert_array_equal(one_pass.pooled_array()[:], pooled.values)
    first, second = one_pass.metrics(pooled), two_passes.metrics(pooled)
    for name in METRICS:
        np.testing.assert_array_equal(first[name].values, second[name].values)


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
