"""Linear probes scored out of fold: ridge regression of the 0-3 label on standardised inputs, its penalty chosen
by an inner leave-one-out cross-validation on the training folds (the closed form scikit-learn's RidgeCV uses), fit
for many targets at once; and the out-of-fold Spearman ρ and AUROC 3-vs-0 of predictions."""

from __future__ import annotations

import numpy as np

from saezarr.analysis.stats.sparse import average_ranks

ALPHAS = np.logspace(-3, 5, 17)  # the ridge penalties the inner cross-validation chooses among
TIE_DIGITS = 9  # predictions equal to this many decimals of their column's largest magnitude are scored as tied


def standardised(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays' columns (axis -1, rows on axis -2) centred and scaled by the training rows' mean and std
    (constant columns: zero)."""
    mean, std = train.mean(axis=-2, keepdims=True), train.std(axis=-2, keepdims=True)
    scale = np.where(std > 0, std, np.inf)
    return (train - mean) / scale, (test - mean) / scale


def ridge_predictions(train: np.ndarray, targets: np.ndarray, test: np.ndarray, alphas=ALPHAS) -> np.ndarray:
    """Predictions [..., test rows, targets] of a ridge fit (with intercept) of each target column on the training
    rows [..., rows, features], its penalty the one of `alphas` with the least leave-one-out squared error on those
    rows; leading axes are separate problems, solved at once."""
    n = train.shape[-2]
    x_mean, y_mean = train.mean(axis=-2, keepdims=True), targets.mean(axis=-2, keepdims=True)
    squares, scores, test_scores = _principal_axes(train - x_mean, test - x_mean)
    centred = targets - y_mean
    projected = np.swapaxes(scores, -1, -2) @ centred  # [..., rank, targets]
    inverse = 1.0 / (squares[..., None, :] + alphas[:, None])  # [..., alphas, rank]
    # every penalty's fit in one product: [..., rows, alphas x targets]
    weights = np.swapaxes(inverse, -1, -2)[..., :, :, None] * projected[..., :, None, :]
    fitted = (scores @ weights.reshape(*weights.shape[:-2], -1)).reshape(*centred.shape[:-1], len(alphas), -1)
    leverage = scores**2 @ np.swapaxes(inverse, -1, -2) + 1.0 / n  # [..., rows, alphas]; the intercept's share is 1/n
    residual = (centred[..., :, None, :] - fitted) / (1.0 - leverage)[..., None]
    best = alphas[np.argmin((residual**2).sum(axis=-3), axis=-2)]  # [..., targets]
    factor = projected / (squares[..., :, None] + best[..., None, :])
    return test_scores @ factor + y_mean


def _principal_axes(x: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Of centred training rows x [..., rows, features]: the squared singular values, the scores x @ V (U·S) and the
    test rows' scores test @ V, from the eigendecomposition of the smaller Gram matrix (several times faster than an
    SVD): xᵀx where features are fewer than rows, else x xᵀ, whose directions of no variance are left out (their
    share of a ridge fit is nothing)."""
    if x.shape[-1] <= x.shape[-2]:
        squares, directions = np.linalg.eigh(np.swapaxes(x, -1, -2) @ x)
        return np.maximum(squares, 0.0), x @ directions, test @ directions
    squares, u = np.linalg.eigh(x @ np.swapaxes(x, -1, -2))
    tolerance = squares.max(axis=-1, keepdims=True) * x.shape[-2] * np.finfo(x.dtype).eps
    kept = squares > tolerance
    singular = np.sqrt(np.where(kept, squares, 0.0))[..., None, :]
    inverse = np.divide(1.0, singular, out=np.zeros_like(singular), where=singular > 0)
    return np.where(kept, squares, 0.0), u * singular, (test @ np.swapaxes(x, -1, -2)) @ u * inverse


def tied_to_rounding(predictions: np.ndarray) -> np.ndarray:
    """Each column divided by its largest magnitude and rounded to TIE_DIGITS decimals: predictions that differ by
    rounding alone (rows with equal inputs, whose products BLAS may round differently by their position) tie."""
    scale = np.nanmax(np.abs(predictions), axis=0, initial=0.0)
    return np.round(predictions / np.where(scale > 0, scale, 1.0), TIE_DIGITS)


def spearman_columns(predictions: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Spearman ρ of each prediction column with its target column (NaN where either is constant; predictions equal
    to rounding tie)."""
    a, b = average_ranks(tied_to_rounding(predictions)), average_ranks(targets)
    a, b = a - a.mean(axis=0), b - b.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (a * b).sum(axis=0) / np.sqrt((a**2).sum(axis=0) * (b**2).sum(axis=0))


def auroc_columns(predictions: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """AUROC 3-vs-0 of each prediction column (finite or NaN) against its target column of labels (ties half, and
    predictions equal to rounding tie; NaN without label-0 or label-3 rows)."""
    inside, is3 = np.isin(targets, (0, 3)), targets == 3
    n3, n0 = is3.sum(axis=0), (inside & ~is3).sum(axis=0)
    # ranks among each column's label-0 and label-3 rows: every other row is put above them all
    ranks = average_ranks(np.where(inside, tied_to_rounding(predictions), np.inf))
    with np.errstate(divide="ignore", invalid="ignore"):
        auroc = (np.where(is3, ranks, 0.0).sum(axis=0) - n3 * (n3 + 1) / 2) / (n3 * n0)
    return np.where((n3 > 0) & (n0 > 0), auroc, np.nan)
