"""What the metrics of a block of features are computed from: the features' per-sentence activations and the
sentences' 0-3 labels, on one of two paths (a float64 copy of the columns, or a mostly-zero array's positive entries
alone), with what several metrics share (label counts, label means, moments) computed once per block."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from saezarr.analysis.stats.metric_defs import METRIC_REGISTRY
from saezarr.analysis.stats.sparse import Positives

if TYPE_CHECKING:
    from saezarr.analysis.stats.metric_defs import Metric

LABELS = (0, 1, 2, 3)
GROUPED = (3, 0, 1, 2)  # the order of the labels' rows in a DenseBlock
T = TypeVar("T")


def label_counts(labels: np.ndarray) -> dict[int, int]:
    """The number of sentences of each label."""
    return {k: int((labels == k).sum()) for k in LABELS}


def moments(x: np.ndarray, yc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column of x: the sum of squared deviations from its mean, and the sum of those deviations times yc."""
    xc = x - x.mean(axis=0)
    # xc.T @ yc, not yc @ xc: the same sums, but BLAS runs it several times faster on C-ordered xc
    return np.einsum("ij,ij->j", xc, xc), xc.T @ yc


def sparse_moments(positives: Positives, yc: np.ndarray, n_rows: int, n_cols: int) -> tuple[np.ndarray, np.ndarray]:
    """moments of a non-negative [n_rows, n_cols] array from its positive entries: a column's zeros deviate by
    -mean, and add nothing to sum(x * yc)."""
    rows, cols, values = positives
    mean = np.bincount(cols, values, minlength=n_cols) / n_rows
    zeros = n_rows - np.bincount(cols, minlength=n_cols)
    squares = np.bincount(cols, (values - mean[cols]) ** 2, minlength=n_cols) + zeros * mean**2
    return squares, np.bincount(cols, yc[rows] * values, minlength=n_cols) - mean * yc.sum()


class Block:
    """A block of n_cols features (none of them 0.0 for every sentence) and the labels of its n_rows sentences; what
    both paths share. A metric's value is computed once per block (`value`), and so is any quantity several metrics
    share (`shared`)."""

    labels: np.ndarray
    n_rows: int
    n_cols: int

    def __init__(self, labels: np.ndarray, n_cols: int) -> None:
        self.labels = labels
        self.n_rows = len(labels)
        self.n_cols = n_cols
        self._values: dict[str, np.ndarray] = {}
        self._shared: dict[Callable, Any] = {}

    def value(self, metric: Metric | str) -> np.ndarray:
        """A metric of every column (a registered one by name), as its function for this path gives it."""
        if isinstance(metric, str):
            metric = METRIC_REGISTRY[metric]
        if metric.name not in self._values:
            self._values[metric.name] = self._compute(metric)
        return self._values[metric.name]

    def shared(self, compute: Callable[[Any], T]) -> T:
        """compute(self), computed once per block: a quantity that several metrics share."""
        if compute not in self._shared:
            self._shared[compute] = compute(self)
        return self._shared[compute]

    @cached_property
    def counts(self) -> dict[int, int]:
        """The number of sentences of each label."""
        return label_counts(self.labels)

    @cached_property
    def centred_labels(self) -> np.ndarray:
        """The labels less their mean."""
        return self.labels - self.labels.mean()

    @cached_property
    def std(self) -> np.ndarray:
        """Each column's population standard deviation."""
        return np.sqrt(self.moments[0] / self.n_rows)

    @property
    def means(self) -> dict[int, np.ndarray]:
        """Each label's mean of each column (0.0 for a label without sentences)."""
        raise NotImplementedError

    @property
    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """moments of the columns against the centred labels."""
        raise NotImplementedError

    @property
    def constant(self) -> np.ndarray:
        """Which columns hold one value for every sentence."""
        raise NotImplementedError

    @property
    def maximum(self) -> np.ndarray:
        """Each column's greatest value."""
        raise NotImplementedError

    def _compute(self, metric: Metric) -> np.ndarray:
        raise NotImplementedError


class DenseBlock(Block):
    """The dense path: x, float64 [sentences, columns], its rows grouped by label (label 3's, 0's, 1's, then 2's:
    each label's rows, and label 3's then label 0's, are slices), and labels, each row's label."""

    def __init__(self, x: np.ndarray, labels: np.ndarray) -> None:
        super().__init__(labels, x.shape[1])
        self.x = x

    @cached_property
    def rows(self) -> dict[int, np.ndarray]:
        """Each label's rows of x."""
        starts = np.cumsum([0, *(self.counts[k] for k in GROUPED)])
        return {k: self.x[starts[i] : starts[i + 1]] for i, k in enumerate(GROUPED)}

    @cached_property
    def means(self) -> dict[int, np.ndarray]:
        """Each label's mean of each column (0.0 for a label without sentences)."""
        return {k: self.rows[k].mean(axis=0) if self.counts[k] else np.zeros(self.n_cols) for k in LABELS}

    @cached_property
    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """moments of the columns against the centred labels."""
        return moments(self.x, self.centred_labels)

    @cached_property
    def maximum(self) -> np.ndarray:
        """Each column's greatest value."""
        return self.x.max(axis=0)

    @cached_property
    def constant(self) -> np.ndarray:
        """Which columns hold one value for every sentence."""
        return self.maximum == self.x.min(axis=0)

    def _compute(self, metric: Metric) -> np.ndarray:
        return metric.dense(self)


class SparseBlock(Block):
    """The sparse path, for a non-negative [sentences, columns] array every column of which has a positive entry:
    its positive entries as rows (each one's sentence), cols (each one's column) and float64 values, sorted by
    column, then value; starts, each column's first entry; and labels, each sentence's label."""

    def __init__(self, positives: Positives, labels: np.ndarray, starts: np.ndarray) -> None:
        super().__init__(labels, len(starts))
        self.rows, self.cols, self.values = positives
        self.starts = starts

    @cached_property
    def label(self) -> np.ndarray:
        """Each entry's label."""
        return self.labels[self.rows].astype(np.intp)

    @cached_property
    def cell(self) -> np.ndarray:
        """Each entry's (label, column), as label * n_cols + column."""
        return self.label * self.n_cols + self.cols

    @cached_property
    def positive(self) -> np.ndarray:
        """[label, column]: how many of the label's sentences are positive in the column."""
        return np.bincount(self.cell, minlength=4 * self.n_cols).reshape(4, self.n_cols)

    @cached_property
    def means(self) -> dict[int, np.ndarray]:
        """Each label's mean of each column (0.0 for a label without sentences)."""
        sums = np.bincount(self.cell, self.values, minlength=4 * self.n_cols).reshape(4, self.n_cols)
        return {k: sums[k] / self.counts[k] if self.counts[k] else np.zeros(self.n_cols) for k in LABELS}

    @cached_property
    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """moments of the columns against the centred labels."""
        positives = (self.rows, self.cols, self.values)
        return sparse_moments(positives, self.centred_labels, self.n_rows, self.n_cols)

    @cached_property
    def per_column(self) -> np.ndarray:
        """Each column's number of positive entries."""
        return np.bincount(self.cols, minlength=self.n_cols)

    @cached_property
    def maximum(self) -> np.ndarray:
        """Each column's greatest value."""
        return self.values[np.r_[self.starts[1:], len(self.values)] - 1]

    @cached_property
    def constant(self) -> np.ndarray:
        """Which columns hold one value for every sentence."""
        # a column with a zero varies (it has a positive); one without is constant if its least and greatest are equal
        return (self.per_column == self.n_rows) & (self.values[self.starts] == self.maximum)

    def _compute(self, metric: Metric) -> np.ndarray:
        return metric.sparse(self)
