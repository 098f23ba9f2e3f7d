"""The legacy detector: the 95th percentile of label 0 as a threshold, the shares of label 3 (tpr) and label 0 (fpr)
above it, and the interpretability score that weighs them with the correlation and separation."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from saezarr.analysis.stats.blocks import Block, DenseBlock, SparseBlock
from saezarr.analysis.stats.metric_defs import Metric, register_metric

Rates = tuple[np.ndarray, np.ndarray, np.ndarray]  # threshold, tpr, fpr


def _dense_rates(block: DenseBlock) -> Rates:
    if not (block.counts[0] and block.counts[3]):
        return _undefined(block)
    x0, x3 = block.rows[0], block.rows[3]
    threshold = np.percentile(x0, 95, axis=0)
    return threshold, (x3 > threshold).mean(axis=0), (x0 > threshold).mean(axis=0)


def _sparse_rates(block: SparseBlock) -> Rates:
    counts, cols, label = block.counts, block.cols, block.label
    if not (counts[0] and counts[3]):
        return _undefined(block)
    threshold = _sparse_percentile_95(block.values[label == 0], block.positive[0], counts[0])
    above = block.values > threshold[cols]  # zeros never are: the threshold is >= 0
    tpr = np.bincount(cols[above & (label == 3)], minlength=block.n_cols) / counts[3]
    fpr = np.bincount(cols[above & (label == 0)], minlength=block.n_cols) / counts[0]
    return threshold, tpr, fpr


def _undefined(block: Block) -> Rates:
    nan = np.full(block.n_cols, np.nan)
    return nan, nan, nan


def _sparse_percentile_95(values0: np.ndarray, positive0: np.ndarray, n0: int) -> np.ndarray:
    """np.percentile(x0, 95, axis=0), bit for bit, of the n0 label-0 rows of a non-negative array, from their
    positive values (sorted by column, then value) and each column's number of them: the zeros come first in sorted
    order, so a column's i-th smallest value is 0 or one of its positives."""
    # numpy's linear method: index (n - 1) q in the sorted column, interpolated by numpy's _lerp
    virtual = (n0 - 1) * np.true_divide(95, 100)
    lower = -1 if virtual >= n0 - 1 else int(np.floor(virtual))  # numpy takes the last value at the top
    upper = -1 if virtual >= n0 - 1 else lower + 1
    t = virtual - lower
    zeros = n0 - positive0
    first = np.cumsum(positive0) - positive0  # each column's first label-0 positive in values0
    padded = np.r_[values0, 0.0]

    def order_statistic(i: int) -> np.ndarray:
        among = i % n0 - zeros
        return padded[np.where(among >= 0, first + among, len(values0))]

    a, b = order_statistic(lower), order_statistic(upper)
    difference = b - a
    return b - difference * (1 - t) if t >= 0.5 else a + difference * t


def _rate(i: int) -> tuple[Callable[[DenseBlock], np.ndarray], Callable[[SparseBlock], np.ndarray]]:
    """The dense and sparse functions of the i-th of threshold, tpr and fpr."""
    return (lambda block: block.shared(_dense_rates)[i]), (lambda block: block.shared(_sparse_rates)[i])


def _interpretability(block: Block) -> np.ndarray:
    """0.4 pearson + 0.3 separation + 0.3 (tpr - fpr)."""
    value = block.value
    return 0.4 * value("pearson_corr") + 0.3 * value("separation_score") + 0.3 * (value("tpr") - value("fpr"))


for _i, _name in enumerate(("threshold", "tpr", "fpr")):
    register_metric(Metric(_name, *_rate(_i), legacy_nan=True))
register_metric(Metric("interpretability_score", _interpretability, _interpretability, legacy_nan=True))
