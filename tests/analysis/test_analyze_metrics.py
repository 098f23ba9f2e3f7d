"""`saezarr.feature_metrics` and the per-sentence pooling against an independent per-feature scipy computation."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from analyzetools import build_store, csv_without, reference_metrics, reference_pooled

import saezarr
from saezarr.analysis.lazy import sentence_activations
from saezarr.analysis.stats.metrics import METRICS

CHUNK = 7  # fragments per chunk: the demo's sentences (9-16 tokens) span two or three chunks


@pytest.fixture(scope="module")
def store(linked_store_chunk7):
    """`saezarr build` of the tiny model (its SAEs' Neuronpedia sources named) and the demo CSV in chunks of CHUNK
    fragments (tests/conftest.py): read only."""
    assert CHUNK == 7
    return linked_store_chunk7


@pytest.mark.parametrize("pool", ["final", "max", "mean"])
def test_pooled_activations_match_a_loop_over_sentences(store, pool):
    ds = saezarr.open_store(store)
    pooled = sentence_activations(ds, pool)
    expected, labels, sentences = reference_pooled(store, pool)
    sentence = ds.sentence_index.values
    assert any(len(set(np.flatnonzero(sentence == s) // CHUNK)) >= 2 for s in np.unique(sentence))
    assert isinstance(pooled.data, da.Array)
    np.testing.assert_allclose(pooled.values.astype(np.float64), expected, rtol=1e-12, atol=0)
    assert pooled.concept_strength_label.values.tolist() == labels.tolist()
    assert pooled.original_sentence.values.tolist() == sentences


@pytest.mark.parametrize("pool", ["final", "max", "mean"])
def test_metrics_equal_a_per_feature_scipy_computation(store, pool):
    metrics = saezarr.feature_metrics(saezarr.open_store(store), pool=pool)
    assert all(isinstance(metrics[name].data, da.Array) for name in METRICS)  # lazy until computed
    assert dict(metrics.sizes) == {"config": 6, "feature": 128}
    computed = metrics.compute()
    expected = reference_metrics(*reference_pooled(store, pool)[:2])
    for name in METRICS:
        np.testing.assert_allclose(
            computed[name].values.astype(np.float64),
            expected[name],
            rtol=1e-9,
            atol=1e-12,
            equal_nan=True,
            err_msg=name,
        )
    constant = np.isnan(expected["pearson_corr"])
    assert constant.any() and (~constant).any()  # both constant (all-zero) and varying features are covered
    pooled = reference_pooled(store, pool)[0]
    has_ties = [(len(np.unique(pooled[c, :, f])) < pooled.shape[1]) for c, f in zip(*np.nonzero(~constant))]
    assert any(has_ties)


@pytest.mark.parametrize("missing", [0, 3])
def test_without_label_0_or_3_the_legacy_metrics_are_nan(tmp_path, tiny, missing):
    store = build_store(
        tmp_path,
        tiny.config_file,
        csv_without(tmp_path, missing),
        "--configs",
        "layer_12_l0_20",
        "--fragments",
        "final",
    )
    computed = saezarr.feature_metrics(saezarr.open_store(store)).compute()
    expected = reference_metrics(*reference_pooled(store, "final")[:2])
    for name in METRICS:
        np.testing.assert_allclose(
            computed[name].values.astype(np.float64),
            expected[name],
            rtol=1e-9,
            atol=1e-12,
            equal_nan=True,
            err_msg=name,
        )
    for name in (
        "pearson_corr",
        "spearman_corr",
        "separation_score",
        "tpr",
        "fpr",
        "interpretability_score",
        "auroc_3v0",
        "cohens_d_3v0",
    ):
        assert np.isnan(computed[name].values).all(), name
    assert (computed[f"mean_label_{missing}"].values == 0.0).all()
    assert not np.isnan(computed.mean_label_1.values).any()


@pytest.mark.parametrize("density", [0.0, 0.05, 0.2, 0.9])
def test_average_ranks_equal_scipys_on_sparse_dense_and_negative_data(density):
    from scipy.stats import rankdata

    from saezarr.analysis.stats.sparse import average_ranks

    rng = np.random.default_rng(int(density * 100))
    for _ in range(50):
        shape = tuple(rng.integers(1, 40, size=2))
        x = rng.integers(0, 5, shape) * (rng.random(shape) < density) * 0.5  # many ties, zeros and repeats
        np.testing.assert_array_equal(average_ranks(x), rankdata(x, axis=0))
        np.testing.assert_array_equal(average_ranks(x - 1.0), rankdata(x - 1.0, axis=0))


def test_an_unknown_pool_or_a_sentence_without_one_final_fragment_is_one_line(store, tmp_path):
    from saezarr.analysis.run import AnalyzeOptions, analyze
    from saezarr.errors import SaezarrError

    ds = saezarr.open_store(store)
    with pytest.raises(SaezarrError, match=r"^pool: expected one of final, max, mean, got 'sum'$"):
        saezarr.feature_metrics(ds, pool="sum")
    with pytest.raises(SaezarrError, match=r"^pool: expected one of final, max, mean, got 'sum'$"):
        analyze(AnalyzeOptions(store=store, output=tmp_path / "out", pool="sum", cache=tmp_path / "cache"))
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
    no_finals = ds.assign_coords(is_final_token=("fragment", np.zeros(ds.sizes["fragment"], dtype=bool)))
    with pytest.raises(SaezarrError, match=r"^pool=final: not every sentence has exactly one final-token fragment"):
        saezarr.feature_metrics(no_finals, pool="final")
    assert saezarr.feature_metrics(no_finals, pool="max").sizes == {"config": 6, "feature": 128}  # max needs none
