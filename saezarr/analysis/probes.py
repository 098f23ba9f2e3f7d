"""Linear probes scored out of fold: ridge regression of the 0-3 label on standardised inputs, its penalty chosen
by an inner leave-one-out cross-validation on the training folds (the closed form scikit-learn's RidgeCV uses), fit
for many targets at once; and the out-of-fold Spearman ρ and AUROC 3-vs-0 of predictions."""

from __future__ import annotations

import numpy as np

ALPHAS = np.logspace(-3, 5, 17)  # the ridge penalties the inner cross-validation chooses among


def standardised(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays' columns centred and scaled by the training rows' mean and std (constant columns: zero)."""
    mean, std = train.mean(axis=0), train.std(axis=0)
    scale = np.where(std > 0, std, np.inf)
    return (train - mean) / scale, (test - mean) / scale


def ridge_predictions(train: np.ndarray, targets: np.ndarray, test: np.ndarray, alphas=ALPHAS) -> np.ndarray:
    """Predictions [test rows, targets] of a ridge fit (with intercept) of each target column on the training rows,
    its penalty the one of `alphas` with the least leave-one-out squared error on those rows."""
    n = len(train)
    x_mean, y_mean = train.mean(axis=0), targets.mean(axis=0)
    u, s, vt = np.linalg.svd(train - x_mean, full_matrices=False)
    keep = s > s.max(initial=0.0) * 1e-12 if len(s) else s > 0
    u, s, vt = u[:, keep], s[keep], vt[keep]
    uty = u.T @ (targets - y_mean)  # [rank, targets]
    shrink = s**2 / (s**2 + alphas[:, None])  # [alphas, rank]
    fitted = np.einsum("nr,ar,rt->atn", u, shrink, uty)  # centred fits [alphas, targets, rows]
    leverage = (u**2) @ shrink.T + 1.0 / n  # [rows, alphas]: the intercept's share is 1/n
    residual = ((targets - y_mean).T[None] - fitted) / (1.0 - leverage.T)[:, None, :]
    best = alphas[np.argmin((residual**2).sum(axis=2), axis=0)]  # [targets]
    coef = vt.T @ (s[:, None] / (s[:, None] ** 2 + best[None, :]) * uty)  # [features, targets]
    return (test - x_mean) @ coef + y_mean


def spearman_columns(predictions: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Spearman ρ of each prediction column with its target column (NaN where either is constant)."""
    from scipy.stats import rankdata

    a, b = rankdata(predictions, axis=0), rankdata(targets, axis=0)
    a, b = a - a.mean(axis=0), b - b.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (a * b).sum(axis=0) / np.sqrt((a**2).sum(axis=0) * (b**2).sum(axis=0))


def auroc_columns(predictions: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """AUROC 3-vs-0 of each prediction column against its target column of labels (ties half)."""
    from scipy.stats import rankdata

    out = np.full(predictions.shape[1], np.nan)
    for column in range(predictions.shape[1]):
        inside = np.isin(targets[:, column], (0, 3))
        is3 = targets[inside, column] == 3
        n3, n0 = int(is3.sum()), int((~is3).sum())
        if n3 and n0:
            ranks = rankdata(predictions[inside, column])
            out[column] = (ranks[is3].sum() - n3 * (n3 + 1) / 2) / (n3 * n0)
    return out
