"""Held-out validation: stratified folds, top features chosen on the training folds only and scored on the held-out
one; pure noise scores ~0 held out while its in-sample best looks good; analyze's held-out columns and files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from clitools import run_cli

from saezarr.analysis.outputs import LEGACY_COLUMNS
from saezarr.analysis.stats.features import FeatureMatrix
from saezarr.analysis.stats.metrics import block_metrics
from saezarr.analysis.stats.validation import Thresholds, chosen_in_folds, fold_ids, top_of_each_fold

LOOSE = Thresholds(min_pearson=0.1, min_tpr=0.0, max_fpr=1.0, top_n=10)


def test_folds_are_stratified_and_fixed_by_the_seed():
    labels = np.random.default_rng(0).permutation(np.arange(43) % 4)
    folds = fold_ids(labels, 5, seed=3)
    assert sorted(np.unique(folds)) == [0, 1, 2, 3, 4]
    for k in range(4):
        counts = np.bincount(folds[labels == k], minlength=5)
        assert counts.max() - counts.min() <= 1
    np.testing.assert_array_equal(folds, fold_ids(labels, 5, seed=3))
    assert not np.array_equal(folds, fold_ids(labels, 5, seed=4))


def _noise(n_sentences: int, n_features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n_sentences) % 4)
    x = np.where(rng.random((n_sentences, n_features)) < 0.5, rng.gamma(2.0, 1.0, (n_sentences, n_features)), 0.0)
    return x.astype(np.float32), labels


def test_pure_noise_looks_good_in_sample_and_scores_near_zero_held_out():
    # the leak detector: selecting on the held-out sentences would carry the in-sample optimism over to them
    x, labels = _noise(48, 3000, seed=1)
    in_sample = block_metrics(x, labels)["pearson_corr"]
    assert np.nanmax(in_sample) > 0.45  # the best of 3000 noise features looks like a finding
    folds = fold_ids(labels, 4, seed=0)
    top = top_of_each_fold(chosen_in_folds(FeatureMatrix.of(x), 0, labels, folds, LOOSE), LOOSE.top_n)
    assert len(top) == 4 * LOOSE.top_n
    assert top["score"].min() > 0.2  # chosen for looking good on the training folds
    assert abs(np.nanmean(top["heldout_pearson"])) < 0.1
    assert abs(np.nanmean(top["heldout_auroc_3v0"]) - 0.5) < 0.07


def test_a_planted_feature_holds_up_held_out_and_each_score_uses_only_its_own_rows():
    x, labels = _noise(48, 300, seed=2)
    x[:, 17] = labels + np.random.default_rng(5).normal(0, 0.3, len(labels)).clip(-0.3)  # tracks the label
    folds = fold_ids(labels, 4, seed=0)
    top = top_of_each_fold(chosen_in_folds(FeatureMatrix.of(x), 3, labels, folds, LOOSE), LOOSE.top_n)
    best = top[top["feature"] == 17]
    assert len(best) == 4 and (best["config"] == 3).all() and best["heldout_pearson"].min() > 0.8
    for row in top:
        train, test = folds != row["fold"], folds == row["fold"]
        trained = block_metrics(x[train][:, [row["feature"]]], labels[train])
        assert trained["interpretability_score"][0] == pytest.approx(row["score"], rel=1e-12)  # on the training folds
        held = np.corrcoef(x[test, row["feature"]], labels[test])[0, 1] if x[test, row["feature"]].std() else 0.0
        np.testing.assert_allclose(row["heldout_pearson"], held, rtol=1e-9)  # scored on the held-out fold only
        fold_rows = top[top["fold"] == row["fold"]]
        assert row["score"] >= fold_rows["score"].min()


def _analyze(store, out, cache):
    result = run_cli(
        "analyze",
        store,
        "--output",
        out,
        "--quiet",
        "--min-pearson",
        "0.1",
        "--min-tpr",
        "0.1",
        "--max-fpr",
        "0.5",
        "--top-n",
        "5",
        "--probe-permutations",
        "5",
        env={"SAEZARR_CACHE": cache},
    )
    assert result.returncode == 0, result.stderr
    return json.loads((out / "analysis.json").read_text())


def test_analyze_writes_heldout_columns_and_they_separate_planted_from_shuffled(planted, tmp_path):
    cued = _analyze(planted.cued, tmp_path / "cued", tmp_path / "cache")
    assert cued["heldout"]["folds"] == 5 and len(cued["heldout"]["per_fold"]) == 5
    top1 = [fold["top1_heldout_pearson"] for fold in cued["heldout"]["per_fold"]]
    assert np.mean(top1) > 0.5  # each fold's best choice holds up on its held-out sentences
    assert cued["heldout"]["mean_heldout_pearson"] > 0.25  # its top 5 on average
    ranked = pd.read_csv(tmp_path / "cued" / "ranked_features.csv")
    assert tuple(ranked.columns[: len(LEGACY_COLUMNS)]) == LEGACY_COLUMNS
    assert list(ranked.columns[-3:]) == ["heldout_pearson", "heldout_auroc_3v0", "folds_in_top_n"]
    assert ranked.folds_in_top_n.between(0, 5).all() and ranked.folds_in_top_n.iloc[0] >= 1
    heldout = pd.read_csv(tmp_path / "cued" / "heldout.csv")
    assert heldout.folds_in_top_n.sum() == sum(f["chosen"] for f in cued["heldout"]["per_fold"])
    assert "Held-out validation (5 folds)" in (tmp_path / "cued" / "report.html").read_text()

    shuffled = _analyze(planted.shuffled, tmp_path / "shuffled", tmp_path / "cache")
    shuffled_mean = shuffled["heldout"]["mean_heldout_pearson"]
    assert shuffled_mean is None or abs(shuffled_mean) < 0.25  # None: no fold chose a feature at all


def test_feature_matrix_columns_asked_for_twice_are_each_filled():
    rng = np.random.default_rng(3)
    x = np.where(rng.random((12, 40)) < 0.2, rng.random((12, 40)), 0.0)  # sparse, as SAE features are
    which = np.array([7, 3, 7, 0, 3, 39])
    matrix = FeatureMatrix.of(x)
    assert matrix.positives is not None  # the sparse path, where repeats were lost
    np.testing.assert_array_equal(matrix.columns(which), x[:, which])
