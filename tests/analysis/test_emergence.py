"""Emergence: the ridge probe against scikit-learn's RidgeCV, and per-layer held-out curves on a real store whose
residual stream was written in: planted labels are readable at some layer, shuffled ones at none."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from clitools import run_cli
from plantedtools import LAYERS, RESIDUAL_LAYERS

import saezarr
from saezarr.analysis.emergence import columns, strongest
from saezarr.analysis.stats.probes import ALPHAS, auroc_columns, ridge_predictions, spearman_columns


@pytest.mark.parametrize(("n", "p"), [(50, 4), (50, 120), (200, 30)], ids=["tall", "wide", "taller"])
def test_the_ridge_probe_equals_scikit_learns_ridgecv(n, p):
    from sklearn.linear_model import RidgeCV

    rng = np.random.default_rng(n + p)
    x = rng.standard_normal((n, p))
    y = x[:, :3] @ rng.standard_normal((3, 4)) + 2 * rng.standard_normal((n, 4))
    test = rng.standard_normal((15, p))
    reference = RidgeCV(alphas=ALPHAS, alpha_per_target=True).fit(x, y).predict(test)
    np.testing.assert_allclose(ridge_predictions(x, y, test), reference, rtol=1e-8, atol=1e-10)


def test_the_sparse_probes_features_are_a_stable_sorts_first_k():
    # many ties at the k-th value, as when constant features fill a probe: they go to the earlier columns, the same
    # on every numpy (argpartition alone picks among them differently in numpy 1.26 and 2.x)
    rng = np.random.default_rng(0)
    strength = np.concatenate([rng.random((30, 40)), np.full((30, 60), -1.0)], axis=1)
    strength[:, 5::7] = strength[:, 5:6]  # ties among the strong too
    for k in (1, 8, 39, 40, 41, 64, 100):
        np.testing.assert_array_equal(strongest(strength, k), np.argsort(-strength, axis=1, kind="stable")[:, :k])


def test_scores_of_prediction_columns_equal_scipy():
    from scipy.stats import mannwhitneyu, spearmanr

    rng = np.random.default_rng(0)
    targets = np.column_stack([rng.permutation(np.arange(24) % 4) for _ in range(3)])
    predictions = rng.standard_normal((24, 3)).round(1)  # ties
    for t in range(3):
        assert spearman_columns(predictions, targets)[t] == pytest.approx(
            spearmanr(predictions[:, t], targets[:, t])[0]
        )
        x3, x0 = predictions[targets[:, t] == 3, t], predictions[targets[:, t] == 0, t]
        assert auroc_columns(predictions, targets)[t] == pytest.approx(mannwhitneyu(x3, x0).statistic / (6 * 6))


@pytest.fixture(scope="module")
def curves(planted):
    return {
        name: saezarr.emergence(saezarr.open_store(store), permutations=10)
        for name, store in (("cued", planted.cued), ("shuffled", planted.shuffled))
    }


def test_emergence_is_a_dataset_over_layers_with_every_curve(curves):
    ds = curves["cued"]
    assert ds.layer.values.tolist() == sorted({*LAYERS, *RESIDUAL_LAYERS})
    assert list(ds.data_vars) == columns()[1:]
    assert np.isnan(ds.best_feature_heldout_spearman.sel(layer=1))  # no SAE on layer 1: only the residual probe
    assert np.isfinite(ds.probe_heldout_spearman).all()


def test_planted_labels_are_readable_held_out_and_shuffled_ones_are_not(curves):
    cued, shuffled = curves["cued"], curves["shuffled"]
    probes = ["probe_heldout_spearman", "sparse_probe_k8_heldout_spearman", "sparse_probe_k64_heldout_spearman"]
    best = max(float(cued[name].max()) for name in probes)
    assert best > 0.5
    assert (cued.probe_heldout_spearman > cued.probe_chance_spearman).any()
    assert (cued.probe_heldout_auroc_3v0.max()) > 0.8
    for name in [*probes, "best_feature_heldout_spearman"]:
        values = shuffled[name].values[np.isfinite(shuffled[name].values)]
        chance = shuffled[name.replace("heldout", "chance")].values[np.isfinite(shuffled[name].values)]
        assert (values < chance).all() and (values < 0.15).all(), name  # nothing read beyond chance


def test_analyze_writes_emergence_csv_and_a_plot(planted, tmp_path):
    result = run_cli(
        "analyze",
        planted.cued,
        "--output",
        tmp_path / "out",
        "--quiet",
        "--probe-permutations",
        "10",
        env={"SAEZARR_CACHE": tmp_path / "cache"},
    )
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(tmp_path / "out" / "emergence.csv")
    assert list(table.columns[:1]) == ["layer"] and set(columns()) == set(table.columns)
    expected = saezarr.emergence(saezarr.open_store(planted.cued), permutations=10).to_dataframe().reset_index()
    pd.testing.assert_frame_equal(table, expected[table.columns], check_dtype=False)
    assert (tmp_path / "out" / "plots" / "emergence.png").stat().st_size > 1000
    report = (tmp_path / "out" / "report.html").read_text()
    assert "Where the concept emerges" in report and "held-out Spearman by layer" in report
