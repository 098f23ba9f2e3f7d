"""The per-feature metrics that analyze computes, one `Metric` record each, in a registry (group "metrics").

The built-in metrics are this package's modules, one per family of metrics that share a computation; the registry
imports them in the order of their names, so the number in a module's name (m10_, m20_, ...) places its metrics'
columns. A plugin's metrics (entry points in the `saezarr.metrics` group, each naming a Metric or a module that
calls register_metric) follow the built-ins. A metric's functions take a `saezarr.analysis.stats.blocks` DenseBlock
or SparseBlock; a plugin imports this package and that module, never `saezarr.analysis.stats.metrics`, which loads
the plugins on import.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from saezarr.registry import Registry

if TYPE_CHECKING:
    from saezarr.analysis.stats.blocks import DenseBlock, SparseBlock


@dataclass(frozen=True)
class Metric:
    """One per-feature metric: its name (its column), its value for every column of a block on the dense path and on
    the sparse one (the same numbers, by two routes), and its value for a feature 0.0 for every sentence (a number,
    or a function of the number of sentences of each label), which neither path is given."""

    name: str
    dense: Callable[[DenseBlock], np.ndarray]
    sparse: Callable[[SparseBlock], np.ndarray]
    all_zero: float | Callable[[Mapping[int, int]], float] = math.nan
    # NaN, as in the legacy analysis, for a constant feature and for every feature without label-0 or label-3 sentences
    legacy_nan: bool = False
    boolean: bool = False  # a 0.0/1.0 metric, handed out as bool

    def all_zero_value(self, counts: Mapping[int, int]) -> float:
        """The metric of a feature 0.0 for every sentence, given the number of sentences of each label."""
        if self.legacy_nan:  # such a feature is constant
            return math.nan
        return float(self.all_zero(counts) if callable(self.all_zero) else self.all_zero)


METRIC_REGISTRY: Registry[Metric] = Registry("metrics", "metric", __name__)


def register_metric(metric: Metric) -> Metric:
    """Register a metric under its own name."""
    return METRIC_REGISTRY.register(metric.name, metric)
