"""A toy metric from outside saezarr, for the tests: how many more label-3 than label-0 sentences a feature fires on.
The plugin test copies this file into a folder beside a dist-info whose `saezarr.metrics` entry point names `metric`."""

from __future__ import annotations

import numpy as np

from saezarr.analysis.stats.blocks import DenseBlock, SparseBlock
from saezarr.analysis.stats.metric_defs import Metric

NAME = "active_3_minus_0"


def dense(block: DenseBlock) -> np.ndarray:
    """From the float64 rows: the label-3 rows that are positive less the label-0 ones, per column."""
    return (block.x[block.labels == 3] > 0).sum(axis=0) - (block.x[block.labels == 0] > 0).sum(axis=0)


def sparse(block: SparseBlock) -> np.ndarray:
    """From the positive entries alone: those of label-3 sentences less those of label-0 ones, per column."""
    label = block.labels[block.rows]
    of = {k: np.bincount(block.cols[label == k], minlength=block.n_cols) for k in (3, 0)}
    return of[3] - of[0]


metric = Metric(NAME, dense, sparse, all_zero=0.0)
