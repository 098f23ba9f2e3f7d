"""Correlation with the labels: Pearson's of the activations, Spearman's of their average ranks."""

from __future__ import annotations

import numpy as np

from saezarr.analysis.stats.blocks import Block, DenseBlock, SparseBlock, moments
from saezarr.analysis.stats.metric_defs import Metric, register_metric
from saezarr.analysis.stats.sparse import average_ranks, positive_ranks


def correlation(squares: np.ndarray, covariance: np.ndarray, yc: np.ndarray) -> np.ndarray:
    """Pearson correlation from moments (NaN where either side is constant)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.clip(covariance / np.sqrt(squares * (yc @ yc)), -1.0, 1.0)


def _pearson(block: Block) -> np.ndarray:
    return correlation(*block.moments, block.centred_labels)


def _centred_label_ranks(labels: np.ndarray) -> np.ndarray:
    """Average ranks of the integer labels (ties share their mean rank, as scipy.stats.rankdata), less their mean."""
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    below = np.cumsum(counts) - counts
    ranks = (below + (counts + 1) / 2)[inverse].astype(np.float64)
    return ranks - ranks.mean()


def _dense_spearman(block: DenseBlock) -> np.ndarray:
    yc = _centred_label_ranks(block.labels)
    return correlation(*moments(average_ranks(block.x), yc), yc)


def _sparse_spearman(block: SparseBlock) -> np.ndarray:
    """The Spearman correlation from the positive entries: a column's zeros share rank c, and every column's ranks
    average (n + 1) / 2."""
    yc = _centred_label_ranks(block.labels)
    zeros, ranks = positive_ranks(block.n_rows, block.n_cols, block.cols, block.values)
    c, middle = (zeros + 1) / 2, (block.n_rows + 1) / 2
    squares = np.bincount(block.cols, (ranks - middle) ** 2, minlength=block.n_cols) + zeros * (c - middle) ** 2
    covariance = (
        np.bincount(block.cols, yc[block.rows] * (ranks - c[block.cols]), minlength=block.n_cols)
        + (c - middle) * yc.sum()
    )
    return correlation(squares, covariance, yc)


register_metric(Metric("pearson_corr", _pearson, _pearson, legacy_nan=True))
register_metric(Metric("spearman_corr", _dense_spearman, _sparse_spearman, legacy_nan=True))
