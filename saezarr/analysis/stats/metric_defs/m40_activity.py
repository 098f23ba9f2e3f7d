"""How often a feature fires, overall and per label, and its greatest activation."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from saezarr.analysis.stats.blocks import LABELS, Block, DenseBlock, SparseBlock
from saezarr.analysis.stats.metric_defs import Metric, register_metric


def _dense_frac_active(block: DenseBlock) -> np.ndarray:
    return (block.x > 0).mean(axis=0)


def _sparse_frac_active(block: SparseBlock) -> np.ndarray:
    return block.per_column / block.n_rows


def _label_frac_active(k: int) -> Metric:
    """The share of label k's sentences on which the feature fires (NaN without any)."""

    def dense(block: DenseBlock) -> np.ndarray:
        return (block.rows[k] > 0).mean(axis=0) if block.counts[k] else np.full(block.n_cols, np.nan)

    def sparse(block: SparseBlock) -> np.ndarray:
        return block.positive[k] / block.counts[k] if block.counts[k] else np.full(block.n_cols, np.nan)

    def all_zero(counts: Mapping[int, int]) -> float:
        return 0.0 if counts[k] else np.nan

    return Metric(f"frac_active_label_{k}", dense, sparse, all_zero=all_zero)


def _maximum(block: Block) -> np.ndarray:
    return block.maximum


register_metric(Metric("frac_active", _dense_frac_active, _sparse_frac_active, all_zero=0.0))
for _k in LABELS:
    register_metric(_label_frac_active(_k))
register_metric(Metric("max_activation", _maximum, _maximum, all_zero=0.0))
