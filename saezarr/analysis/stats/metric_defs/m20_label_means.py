"""Each label's mean activation, whether they rise with the label, and the separation of label 3's from label 0's."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from saezarr.analysis.stats.blocks import LABELS, Block
from saezarr.analysis.stats.metric_defs import Metric, register_metric


def _label_mean(k: int) -> Callable[[Block], np.ndarray]:
    return lambda block: block.means[k]


def _monotonic(block: Block) -> np.ndarray:
    """1.0 where the label means never fall from label 0 to label 3."""
    means = block.means
    return ((means[0] <= means[1]) & (means[1] <= means[2]) & (means[2] <= means[3])).astype(np.float64)


def _separation(block: Block) -> np.ndarray:
    """(mean of label 3 - mean of label 0) / the column's population standard deviation."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return (block.means[3] - block.means[0]) / block.std


for _k in LABELS:
    register_metric(Metric(f"mean_label_{_k}", _label_mean(_k), _label_mean(_k), all_zero=0.0))
register_metric(Metric("monotonic", _monotonic, _monotonic, all_zero=1.0, boolean=True))
register_metric(Metric("separation_score", _separation, _separation, legacy_nan=True))
