"""The permutation null: its vectorised maxima against a direct loop over permutations, the family-wise p-value
convention, and analyze's outputs on planted and on shuffled labels."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from clitools import run_main

from saezarr.analysis.outputs import LEGACY_COLUMNS
from saezarr.analysis.stats.features import FeatureMatrix
from saezarr.analysis.stats.metrics import block_metrics
from saezarr.analysis.stats.permutation import Permutations, chance_level, fwer_p_values, null_maxima


def _activations(density: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(30) % 4)
    x = np.where(rng.random((30, 25)) < density, rng.gamma(2.0, 1.0, (30, 25)), 0.0).astype(np.float32)
    x[:, 3] = 0.0  # all zero
    x[:, 4] = 1.5  # constant
    x[::3, 5] = 2.0  # ties
    x[labels == 3, 6] += 3.0  # a feature that tracks label 3
    return x, labels


@pytest.mark.parametrize("density", [0.08, 0.7], ids=["sparse", "dense"])
def test_the_vectorised_null_equals_a_direct_loop_over_permutations(density):
    x, labels = _activations(density, seed=int(density * 100))
    permutations = Permutations.draw(labels, 12, seed=5)
    pearson, auroc = null_maxima(FeatureMatrix.of(x), labels, permutations)
    extremes = np.isin(labels, (0, 3))
    loop_pearson, loop_auroc = [], []
    for every, among in zip(permutations.all, permutations.extremes):
        loop_pearson.append(np.nanmax(block_metrics(x, labels[every])["pearson_corr"]))
        relabelled = labels.copy()
        relabelled[extremes] = labels[extremes][among]
        loop_auroc.append(np.nanmax(block_metrics(x, relabelled)["auroc_3v0"]))
    np.testing.assert_allclose(pearson, loop_pearson, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(auroc, loop_auroc, rtol=1e-12, atol=1e-14)
    observed = block_metrics(x, labels)["pearson_corr"]
    # the same p-values from the loop's maxima, counted one by one (permutations that only reorder tied zeros give
    # the observed score again, rounded otherwise: within 1e-12 counts as reaching it)
    direct = [
        np.nan if np.isnan(r) else (1 + sum(m >= r - 1e-12 for m in loop_pearson)) / (1 + len(loop_pearson))
        for r in observed
    ]
    np.testing.assert_array_equal(fwer_p_values(observed, pearson), direct)
    assert fwer_p_values(observed, pearson)[6] == 1 / 13  # the planted feature beats every permutation


def test_p_values_count_the_permutations_at_least_as_high_plus_one():
    maxima = np.array([0.1, 0.5, 0.6, 0.95])
    np.testing.assert_array_equal(
        fwer_p_values(np.array([0.5, 0.9, np.nan, 0.99, -1.0]), maxima), [4 / 5, 2 / 5, np.nan, 1 / 5, 5 / 5]
    )
    assert chance_level(maxima) == np.percentile(maxima, 95)
    assert np.isnan(fwer_p_values(np.array([0.5]), np.array([]))).all()


def test_permutations_are_fixed_by_the_seed_and_keep_the_labels():
    labels = np.arange(20) % 4
    a, b, c = Permutations.draw(labels, 5, 1), Permutations.draw(labels, 5, 1), Permutations.draw(labels, 5, 2)
    np.testing.assert_array_equal(a.all, b.all)
    assert not np.array_equal(a.all, c.all)
    for perm in a.all:
        np.testing.assert_array_equal(np.sort(labels[perm]), np.sort(labels))
    assert a.extremes.shape == (5, 10)


def _analyze(store, out, cache, *extra):
    result = run_main(
        "analyze", store, "--output", out, "--quiet", "--probe-permutations", "5", *extra, env={"SAEZARR_CACHE": cache}
    )
    assert result.returncode == 0, result.stderr
    return json.loads((out / "analysis.json").read_text())


def test_planted_labels_beat_chance_and_shuffled_ones_do_not(planted, tmp_path):
    cued = _analyze(planted.cued, tmp_path / "cued", tmp_path / "cache")
    assert cued["significant_features"] > 0
    permutation = cued["permutation"]
    assert permutation["permutations"] == 100 and len(permutation["null_maxima"]["pearson"]) == 100
    assert permutation["best"]["pearson"] > permutation["chance"]["pearson"]
    assert set(permutation["chance_per_sae"]) == {"layer_0_l0_4", "layer_0_l0_12", "layer_2_l0_4", "layer_2_l0_12"}
    features = pd.read_parquet(tmp_path / "cued" / "features.parquet")
    assert list(features.columns[-2:]) == ["p_value_fwer", "p_value_fwer_auroc"]
    assert (features.p_value_fwer < 0.05).sum() == cued["significant_features"]
    assert features.p_value_fwer.min() == 1 / 101
    ranked = pd.read_csv(tmp_path / "cued" / "ranked_features.csv")
    assert tuple(ranked.columns[: len(LEGACY_COLUMNS)]) == LEGACY_COLUMNS
    assert "p_value_fwer" in ranked.columns[len(LEGACY_COLUMNS) :]
    report = (tmp_path / "cued" / "report.html").read_text()
    assert "beat chance</b>" in report and "No feature beats chance" not in report

    shuffled = _analyze(planted.shuffled, tmp_path / "shuffled", tmp_path / "cache")
    assert shuffled["significant_features"] == 0
    assert shuffled["permutation"]["best"]["pearson"] < shuffled["permutation"]["chance"]["pearson"]
    assert "No feature beats chance" in (tmp_path / "shuffled" / "report.html").read_text()


def test_no_permutations_no_p_values(planted, tmp_path):
    info = _analyze(planted.cued, tmp_path / "out", tmp_path / "cache", "--permutations", "0", "--folds", "0")
    assert info["significant_features"] is None and info["permutation"] is None and info["heldout"] is None
    features = pd.read_parquet(tmp_path / "out" / "features.parquet")
    assert "p_value_fwer" not in features.columns
    assert not (tmp_path / "out" / "emergence.csv").exists()
    assert "No permutation null was computed" in (tmp_path / "out" / "report.html").read_text()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--permutations", "-1", "--permutations: expected a non-negative integer, got '-1'"),
        ("--folds", "1", "--folds: expected 0 (off) or at least 2, got 1"),
        ("--folds", "41", "--folds: expected at most the number of sentences (40), got 41"),
        ("--seed", "x", "--seed: expected a non-negative integer, got 'x'"),
    ],
)
def test_bad_resampling_options_are_one_line_and_write_nothing(planted, tmp_path, option, value, message):
    result = run_main(
        "analyze", planted.cued, "--output", tmp_path / "out", option, value, env={"SAEZARR_CACHE": tmp_path / "c"}
    )
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
