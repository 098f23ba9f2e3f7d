"""The batched held-out validation and emergence curves against plainly written loops on a small case: one labelling,
one fold, one config at a time, ridge by scikit-learn's RidgeCV, scores by scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from saezarr.analysis.emergence import CURVES, SPARSE_KS, emergence_rows
from saezarr.analysis.stats.features import FeatureMatrix
from saezarr.analysis.stats.metrics import block_metrics, passes_filter
from saezarr.analysis.stats.permutation import CHANCE_QUANTILE
from saezarr.analysis.stats.probes import ALPHAS, TIE_DIGITS
from saezarr.analysis.stats.validation import Thresholds, chosen_in_splits, fold_ids, fold_splits
from saezarr.sites import RESID_POST

N_SENTENCES, WIDTHS, HIDDEN = 40, (60, 50, 70), 12


def _case(seed: int) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Labels, three configs' sparse activations (many features silent on most sentences, one tracking the label)
    and residuals."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(N_SENTENCES) % 4)
    configs = []
    for width in WIDTHS:
        x = np.where(rng.random((N_SENTENCES, width)) < 0.15, rng.gamma(2.0, 1.0, (N_SENTENCES, width)), 0.0)
        x[:, : width // 3] = 0.0  # silent features: constant on every fold
        x[:, -1] = labels + rng.uniform(0, 0.5, N_SENTENCES)
        configs.append(x.astype(np.float32))
    residuals = rng.standard_normal((N_SENTENCES, HIDDEN)) + labels[:, None] * rng.standard_normal(HIDDEN) * 0.3
    return labels, configs, residuals


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    return np.nan if x.std() == 0 else float(np.corrcoef(x, y)[0, 1])


def _auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Pairs of a label-3 and a label-0 sentence in which the label-3 one scores higher, ties half."""
    s3, s0 = scores[labels == 3][:, None], scores[labels == 0][None, :]
    return float(((s3 > s0) + 0.5 * (s3 == s0)).mean())


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std > 0, std, np.inf)
    return (train - mean) / std, (test - mean) / std


def _ridge_cv(x_train: np.ndarray, y: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import RidgeCV

    return RidgeCV(alphas=ALPHAS).fit(x_train, y).predict(x_test)


def _plain_predictions(x: np.ndarray, residuals: np.ndarray, y: np.ndarray, folds: np.ndarray) -> dict:
    """Out-of-fold predictions of every curve for one labelling y."""
    out = {curve: np.zeros(len(y)) for curve in CURVES}
    for fold in np.unique(folds):
        train, test = folds != fold, folds == fold
        r = np.array([_pearson(x[train, j], y[train]) for j in range(x.shape[1])])
        best = int(np.argmax(np.where(np.isnan(r), -np.inf, r)))
        out["best_feature"][test] = _standardise(x[train][:, [best]], x[test][:, [best]])[1][:, 0]
        strongest = np.argsort(-np.where(np.isnan(r), -1.0, np.abs(r)), kind="stable")
        for k in SPARSE_KS:
            x_train, x_test = _standardise(x[train][:, strongest[:k]], x[test][:, strongest[:k]])
            out[f"sparse_probe_k{k}"][test] = _ridge_cv(x_train, y[train], x_test)
        x_train, x_test = _standardise(residuals[train], residuals[test])
        out["probe"][test] = _ridge_cv(x_train, y[train], x_test)
    return out


def _tied(predictions: np.ndarray) -> np.ndarray:
    """The documented tie rule: predictions equal to TIE_DIGITS decimals of the largest magnitude tie."""
    return np.round(predictions / np.abs(predictions).max(), TIE_DIGITS)


def _plain_row(x: np.ndarray, residuals: np.ndarray, labels: np.ndarray, folds: np.ndarray, permutations) -> dict:
    """One layer's emergence row, a labelling at a time."""
    labellings = [labels, *(labels[p] for p in permutations)]
    scores = {curve: {"spearman": [], "auroc_3v0": []} for curve in CURVES}
    for y in labellings:
        for curve, predictions in _plain_predictions(x, residuals, y.astype(float), folds).items():
            scores[curve]["spearman"].append(spearmanr(_tied(predictions), y)[0])
            scores[curve]["auroc_3v0"].append(_auroc(_tied(predictions), y))
    row = {}
    for curve in CURVES:
        for score, values in scores[curve].items():
            row[f"{curve}_heldout_{score}"] = values[0]
            row[f"{curve}_chance_{score}"] = float(np.percentile(values[1:], CHANCE_QUANTILE))
    for score in ("spearman", "auroc_3v0"):
        row[f"chance_{score}"] = max(row[f"{curve}_chance_{score}"] for curve in CURVES)
    return row


@pytest.mark.parametrize("seed", [0, 1])
def test_emergence_row_equals_a_loop_over_labellings_folds_and_probes(seed):
    pytest.importorskip("sklearn")
    labels, configs, residuals = _case(seed)
    folds = fold_ids(labels, 5, seed)
    rng = np.random.default_rng(seed + 10)
    # the first permutation leaves the labels as they are: it shares every choice with them
    permutations = np.array([np.arange(N_SENTENCES), *(rng.permutation(N_SENTENCES) for _ in range(5))])
    matrix = FeatureMatrix.joined([FeatureMatrix.of(x) for x in configs])
    (fast,) = emergence_rows(
        [(7, RESID_POST)], {(7, RESID_POST): matrix}, {(7, RESID_POST): residuals}, labels, folds, permutations
    )
    plain = _plain_row(np.hstack(configs).astype(np.float64), residuals, labels, folds, permutations)
    assert fast.pop("layer") == 7
    assert fast.keys() == plain.keys()
    for name, value in plain.items():
        assert fast[name] == pytest.approx(value, abs=1e-10), name
    assert fast["best_feature_heldout_spearman"] > 0.8  # the planted feature, not a zeroed prediction


def test_heldout_choices_of_a_whole_layer_equal_a_loop_over_configs_and_folds():
    labels, configs, _ = _case(2)
    folds = fold_ids(labels, 4, 0)
    thresholds = Thresholds(min_pearson=0.05, min_tpr=0.0, max_fpr=1.0, top_n=4)
    matrix = FeatureMatrix.joined([FeatureMatrix.of(x) for x in configs])
    owners = np.repeat([3, 5, 8], WIDTHS)
    features = np.concatenate([np.arange(width) for width in WIDTHS])
    fast = chosen_in_splits(fold_splits(matrix, labels[:, None], folds), labels, thresholds, owners, features)
    plain = []
    for config, x in zip((3, 5, 8), configs):
        for fold in range(4):
            train, test = folds != fold, folds == fold
            metrics = block_metrics(x[train], labels[train])
            passing = np.flatnonzero(passes_filter(metrics, 0.05, 0.0, 1.0))
            score = metrics["interpretability_score"][passing]
            order = np.argsort(-score, kind="stable")[:4]
            for feature, value in zip(passing[order], score[order]):
                held = _pearson(x[test, feature].astype(float), labels[test])
                extremes = np.isin(labels[test], (0, 3))
                auroc = _auroc(x[test, feature][extremes], labels[test][extremes])
                plain.append((fold, config, feature, value, 0.0 if np.isnan(held) else held, auroc))
    assert len(fast) == len(plain) > 20
    fast = np.sort(fast, order=["fold", "config", "feature"])
    plain.sort()
    for row, expected in zip(fast, plain):
        assert (row["fold"], row["config"], row["feature"]) == expected[:3]
        for name, value in zip(("score", "heldout_pearson", "heldout_auroc_3v0"), expected[3:]):
            assert row[name] == pytest.approx(value, abs=1e-10), name


def test_features_nan_past_a_narrower_width_and_too_few_varying_ones_change_no_curve():
    labels, configs, residuals = _case(3)
    x = configs[0][:, 15:]  # fewer features than the largest probe's k, some silent
    padded = np.hstack([x, np.full((N_SENTENCES, 30), np.nan, dtype=np.float32)])  # a wider SAE's feature axis
    folds = fold_ids(labels, 5, 0)
    permutations = np.array([np.random.default_rng(k).permutation(N_SENTENCES) for k in range(4)])
    rows = [
        emergence_rows([(0, RESID_POST)], {(0, RESID_POST): FeatureMatrix.of(m)}, {}, labels, folds, permutations)[0]
        for m in (x, padded)
    ]
    assert np.isfinite(rows[0]["sparse_probe_k64_heldout_spearman"])
    for name, value in rows[0].items():
        assert rows[1][name] == pytest.approx(value, abs=1e-10, nan_ok=True), name
