"""Per-feature metrics of per-sentence activations against the 0-3 concept labels, vectorised over features: every
registered metric (saezarr.analysis.stats.metric_defs) of a block of features, by the dense path, or by the sparse
one for a mostly-zero block. The metrics are looked up once, on import: every caller sees the same columns."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from saezarr.analysis.stats.blocks import Block, DenseBlock, SparseBlock, label_counts
from saezarr.analysis.stats.metric_defs import METRIC_REGISTRY, Metric
from saezarr.analysis.stats.sparse import Positives, positive_entries
from saezarr.errors import SaezarrError

# bytes of one float64 [sentences x features] block in the metrics pass; its temporaries are a few times this
BLOCK_BYTES = 16 * 2**20


def registered_metrics() -> tuple[Metric, ...]:
    """Every registered metric: the built-ins in their modules' order, then the plugins'."""
    metrics = []
    for name, metric in METRIC_REGISTRY.items():
        if not isinstance(metric, Metric):
            raise SaezarrError(f"metric {name!r}: expected a saezarr Metric, got a {type(metric).__name__}")
        if metric.name != name:
            raise SaezarrError(f"metric {name!r}: registered under that name, but named {metric.name!r}")
        metrics.append(metric)
    return tuple(metrics)


REGISTERED = registered_metrics()
METRICS = tuple(metric.name for metric in REGISTERED)
# metrics the legacy analysis computes; NaN for a constant feature or without label-0 or label-3 sentences
LEGACY_NAN = tuple(metric.name for metric in REGISTERED if metric.legacy_nan)


def feature_block(n_sentences: int, width: int) -> int:
    """Features per block so that a float64 [sentences x features] block stays within BLOCK_BYTES."""
    fit = max(1, BLOCK_BYTES // (8 * max(n_sentences, 1)))
    block = 1 << (fit.bit_length() - 1)  # a power of two, so blocks tile power-of-two widths
    return int(min(block, width))


def stacked_metrics(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Every metric of a [sentences, features] array as [metric, feature] float64, in METRICS order, computed in
    blocks of features that bound the temporaries' memory."""
    n_sentences, width = x.shape
    out = np.empty((len(METRICS), width), dtype=np.float64)
    step = feature_block(n_sentences, width)
    for start in range(0, width, step):
        for i, values in enumerate(block_metrics(x[:, start : start + step], labels).values()):
            out[i, start : start + step] = values
    return out


def unstacked(stacked) -> dict:
    """The metrics of a [metric, ...] stack (numpy or dask) by name, in METRICS order, the boolean ones as bool."""
    return {
        metric.name: stacked[i].astype(bool) if metric.boolean else stacked[i] for i, metric in enumerate(REGISTERED)
    }


def passes_filter(metrics, min_pearson: float, min_tpr: float, max_fpr: float):
    """pearson >= min_pearson, monotonic, tpr >= min_tpr and fpr <= max_fpr (NaN never passes), for metrics held
    as arrays or DataArrays by name."""
    return (
        (metrics["pearson_corr"] >= min_pearson)
        & (metrics["monotonic"] != 0)
        & (metrics["tpr"] >= min_tpr)
        & (metrics["fpr"] <= max_fpr)
    )


def block_metrics(x: np.ndarray, labels: np.ndarray, metrics: Sequence[Metric] = REGISTERED) -> dict[str, np.ndarray]:
    """The metrics (every registered one unless given) of a [sentences, features] array, one float64 value per
    feature, in their order."""
    x = np.asarray(x)
    positives = positive_entries(x)
    if positives is None:
        return _dense_block_metrics(x, labels, metrics)
    return _sparse_block_metrics(positives, labels, x.shape[1], metrics)


def _dense_block_metrics(
    x: np.ndarray, labels: np.ndarray, metrics: Sequence[Metric] = REGISTERED
) -> dict[str, np.ndarray]:
    """block_metrics of any array, from a float64 copy of its columns that are not all zero."""
    out = _all_zero_metrics(labels, x.shape[1], metrics)
    # an all-zero column's metrics are known without looking at it
    active = np.flatnonzero(np.count_nonzero(x, axis=0))
    if len(active):
        # rows grouped by label, 3 and 0 first: each label's rows, and label 3's then label 0's, are slices
        order = np.argsort((labels + 1) % 4, kind="stable")
        block = DenseBlock(x[np.ix_(order, active)].astype(np.float64), labels[order])
        for name, values in block_values(block, metrics).items():
            out[name][active] = values
    return out


def _sparse_block_metrics(
    positives: Positives, labels: np.ndarray, n_features: int, metrics: Sequence[Metric] = REGISTERED
) -> dict[str, np.ndarray]:
    """block_metrics of a mostly-zero array from its positive entries (positive_entries), without a dense copy."""
    out = _all_zero_metrics(labels, n_features, metrics)
    rows, cols, values = positives
    if len(cols):
        starts = np.flatnonzero(np.r_[True, cols[1:] != cols[:-1]])  # each active column's first positive
        column = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(cols)]))  # among the active columns
        block = SparseBlock((rows, column, values.astype(np.float64)), labels, starts)
        for name, values in block_values(block, metrics).items():
            out[name][cols[starts]] = values
    return out


def _all_zero_metrics(labels: np.ndarray, n_features: int, metrics: Sequence[Metric]) -> dict[str, np.ndarray]:
    """The metrics of features that are 0.0 for every sentence."""
    counts = label_counts(labels)
    return {metric.name: np.full(n_features, metric.all_zero_value(counts), dtype=np.float64) for metric in metrics}


def block_values(block: Block, metrics: Sequence[Metric] = REGISTERED) -> dict[str, np.ndarray]:
    """The metrics of a block's columns, in their order; the legacy ones NaN where the legacy script skips the
    feature (a constant one; every one without label-0 or label-3 sentences)."""
    out = {}
    for metric in metrics:
        values = block.value(metric)
        out[metric.name] = np.where(block.shared(_skipped), np.nan, values) if metric.legacy_nan else values
    return out


def _skipped(block: Block) -> np.ndarray:
    """The columns the legacy script skips."""
    counts = block.counts
    return block.constant | (counts[0] == 0) | (counts[3] == 0)
