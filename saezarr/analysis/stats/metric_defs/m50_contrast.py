"""Label 3 against label 0: the AUROC (how often a label-3 sentence outscores a label-0 one) and Cohen's d."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from saezarr.analysis.stats.blocks import LABELS, DenseBlock, SparseBlock
from saezarr.analysis.stats.metric_defs import Metric, register_metric
from saezarr.analysis.stats.sparse import average_ranks, positive_ranks


def _dense_auroc(block: DenseBlock) -> np.ndarray:
    """P(a label-3 sentence outscores a label-0 one), ties counting half: Mann-Whitney U / (n3 n0), from the rows of
    label 3 followed by those of label 0."""
    n3, n0 = block.counts[3], block.counts[0]
    if not n3 or not n0:
        return np.full(block.n_cols, np.nan)
    return (average_ranks(block.x[: n3 + n0])[:n3].sum(axis=0) - n3 * (n3 + 1) / 2) / (n3 * n0)


def _sparse_auroc(block: SparseBlock) -> np.ndarray:
    n3, n0 = block.counts[3], block.counts[0]
    if not n3 or not n0:
        return np.full(block.n_cols, np.nan)
    label, n_cols = block.label, block.n_cols
    inside = (label == 3) | (label == 0)  # still sorted by column, then value
    zeros, ranks = positive_ranks(n3 + n0, n_cols, block.cols[inside], block.values[inside])
    of3 = label[inside] == 3
    cols3 = block.cols[inside][of3]
    positive3 = np.bincount(cols3, minlength=n_cols)
    rank_sum3 = np.bincount(cols3, ranks[of3], minlength=n_cols) + (n3 - positive3) * (zeros + 1) / 2
    return (rank_sum3 - n3 * (n3 + 1) / 2) / (n3 * n0)


def _dense_cohens_d(block: DenseBlock) -> np.ndarray:
    variances = {
        k: block.rows[k].var(axis=0, ddof=1) if block.counts[k] > 1 else np.zeros(block.n_cols) for k in (0, 3)
    }
    return _cohens_d(block.counts, block.means, variances)


def _sparse_cohens_d(block: SparseBlock) -> np.ndarray:
    counts, means, positive, n_cols = block.counts, block.means, block.positive, block.n_cols
    deviations = block.values - np.stack([means[k] for k in LABELS])[block.label, block.cols]
    squared = np.bincount(block.cell, deviations**2, minlength=4 * n_cols).reshape(4, n_cols)
    # a label's zeros each deviate from its mean by -mean
    variances = {
        k: (squared[k] + (counts[k] - positive[k]) * means[k] ** 2) / (counts[k] - 1)
        if counts[k] > 1
        else np.zeros(n_cols)
        for k in (0, 3)
    }
    return _cohens_d(counts, means, variances)


def _cohens_d(
    counts: Mapping[int, int], means: Mapping[int, np.ndarray], variances: Mapping[int, np.ndarray]
) -> np.ndarray:
    """(mean_3 - mean_0) / pooled standard deviation (from the labels' ddof-1 variances, 0 for a single sentence);
    NaN where it is undefined or zero."""
    n3, n0 = counts[3], counts[0]
    if n3 + n0 <= 2 or not n3 or not n0:
        return np.full(len(means[3]), np.nan)
    pooled = np.sqrt(((n3 - 1) * variances[3] + (n0 - 1) * variances[0]) / (n3 + n0 - 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(pooled > 0, (means[3] - means[0]) / np.where(pooled > 0, pooled, 1), np.nan)


def _auroc_of_all_zero(counts: Mapping[int, int]) -> float:
    """An all-zero feature ties every pair: 0.5, NaN without label-0 or label-3 sentences."""
    return 0.5 if counts[0] and counts[3] else np.nan


register_metric(Metric("auroc_3v0", _dense_auroc, _sparse_auroc, all_zero=_auroc_of_all_zero))
register_metric(Metric("cohens_d_3v0", _dense_cohens_d, _sparse_cohens_d))
