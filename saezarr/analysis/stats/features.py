"""Per-sentence activations [sentence, feature] held for resampling: sparse (their positive entries) when mostly zero,
else dense; row subsets, products with many target columns at once, and within-column ranks."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from saezarr.analysis.stats.sparse import Positives, average_ranks, positive_entries_of, positive_ranks


@dataclass
class FeatureMatrix:
    """A [sentences, features] array: `positives` (row, column, value; sorted by column, then value) of a mostly
    zero non-negative one, else `dense` (float64)."""

    shape: tuple[int, int]
    positives: Positives | None = None
    dense: np.ndarray | None = None
    _csc: object = field(default=None, repr=False)
    _starts: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def of(cls, x: np.ndarray) -> FeatureMatrix:
        """The matrix of a [sentences, features] array."""
        return cls.of_blocks([np.asarray(x)])

    @classmethod
    def of_blocks(cls, blocks: list[np.ndarray]) -> FeatureMatrix:
        """The matrix of [sentences, features] column blocks side by side, without joining them where mostly zero."""
        positives = positive_entries_of(blocks)
        shape = (blocks[0].shape[0], sum(block.shape[1] for block in blocks))
        if positives is None:
            return cls(shape, dense=np.hstack(blocks).astype(np.float64))
        rows, cols, values = positives
        return cls(shape, positives=(rows, cols, values.astype(np.float64)))

    @classmethod
    def joined(cls, parts: list[FeatureMatrix]) -> FeatureMatrix:
        """The matrices' columns side by side (same rows)."""
        n_rows = parts[0].shape[0]
        width = sum(part.shape[1] for part in parts)
        positives = [part.positives for part in parts if part.positives is not None]
        if len(positives) == len(parts):
            offsets = np.cumsum([0, *(part.shape[1] for part in parts[:-1])])
            rows = np.concatenate([entries[0] for entries in positives])
            cols = np.concatenate([entries[1] + offset for entries, offset in zip(positives, offsets)])
            values = np.concatenate([entries[2] for entries in positives])
            return cls((n_rows, width), positives=(rows, cols, values))
        return cls((n_rows, width), dense=np.hstack([part.toarray() for part in parts]))

    @property
    def _dense_array(self) -> np.ndarray:
        """`dense`, of a matrix held dense (one not held as positives)."""
        assert self.dense is not None
        return self.dense

    @property
    def _positive_entries(self) -> Positives:
        """`positives`, of a matrix held as its positive entries."""
        assert self.positives is not None
        return self.positives

    def toarray(self) -> np.ndarray:
        """The matrix as a dense float64 array."""
        return self.columns(np.arange(self.shape[1]))

    def rows(self, keep: np.ndarray) -> FeatureMatrix:
        """The matrix of the rows where the boolean mask keep is true, in order."""
        keep = np.asarray(keep, dtype=bool)
        shape = (int(keep.sum()), self.shape[1])
        if self.positives is None:
            return FeatureMatrix(shape, dense=self._dense_array[keep])
        rows, cols, values = self.positives
        inside = keep[rows]
        renumber = np.cumsum(keep) - 1
        return FeatureMatrix(shape, positives=(renumber[rows[inside]], cols[inside], values[inside]))

    def columns(self, which: np.ndarray) -> np.ndarray:
        """The columns `which` as a dense float64 [sentences, len(which)] array."""
        which = np.asarray(which, dtype=np.int64)
        if self.positives is None:
            return self._dense_array[:, which]
        rows, _, values = self.positives
        unique, repeats = np.unique(which, return_inverse=True)  # a column asked for twice is filled twice
        starts = self._column_starts()
        lengths = starts[unique + 1] - starts[unique]
        column = np.repeat(np.arange(len(unique)), lengths)
        taken = np.arange(lengths.sum()) + np.repeat(starts[unique] - (np.cumsum(lengths) - lengths), lengths)
        out = np.zeros((self.shape[0], len(unique)))
        out[rows[taken], column] = values[taken]
        return out[:, repeats]

    def scaled(self, keep: np.ndarray, scale: np.ndarray) -> FeatureMatrix:
        """The matrix of the columns where the boolean mask keep is true, each multiplied by its scale."""
        keep = np.asarray(keep, dtype=bool)
        shape = (self.shape[0], int(keep.sum()))
        if self.positives is None:
            return FeatureMatrix(shape, dense=self._dense_array[:, keep] * scale[keep])
        rows, cols, values = self.positives
        inside = keep[cols]
        renumber = np.cumsum(keep) - 1
        return FeatureMatrix(
            shape, positives=(rows[inside], renumber[cols[inside]], values[inside] * scale[cols[inside]])
        )

    def active(self) -> np.ndarray:
        """Which columns hold a value other than zero."""
        if self.positives is None:
            return np.count_nonzero(self._dense_array, axis=0) > 0
        return np.bincount(self.positives[1], minlength=self.shape[1]) > 0

    def t_dot(self, w: np.ndarray) -> np.ndarray:
        """matrixᵀ @ w for a [sentences, k] array w: [features, k] float64."""
        if self.positives is None:
            return self._dense_array.T @ w
        return np.asarray(self._sparse().T @ w)

    def spread(self, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """On the rows where the boolean mask keep is true (None: every row): which columns hold one value in every
        row, and each column's sum of squared deviations from its mean."""
        if self.positives is None:
            x = self._dense_array if keep is None else self._dense_array[keep]
            return x.max(axis=0) == x.min(axis=0), ((x - x.mean(axis=0)) ** 2).sum(axis=0)
        _, cols, values = self.positives
        n_rows, n_cols = self.shape
        if keep is not None:  # the kept rows' entries, still sorted by column, then value
            inside = keep[self.positives[0]]
            cols, values, n_rows = cols[inside], values[inside], int(np.count_nonzero(keep))
        count = np.bincount(cols, minlength=n_cols)
        mean = np.bincount(cols, values, minlength=n_cols) / n_rows
        squares = np.bincount(cols, (values - mean[cols]) ** 2, minlength=n_cols) + (n_rows - count) * mean**2
        if not len(values):
            return count == 0, squares
        starts = np.cumsum(count) - count
        low, high = values[np.minimum(starts, len(values) - 1)], values[np.maximum(starts + count - 1, 0)]
        return (count == 0) | ((count == n_rows) & (low == high)), squares

    def ranks_t_dot(self, w: np.ndarray) -> np.ndarray:
        """(within-column average ranks)ᵀ @ w for a [sentences, k] array w: [features, k] float64."""
        if self.positives is None:
            return average_ranks(self._dense_array).T @ w
        _, cols, values = self.positives
        zeros, ranks = positive_ranks(*self.shape, cols, values)
        bottom = (zeros + 1) / 2  # the rank the zeros of a column share
        above = self._csc_of(ranks - bottom[cols])
        return np.asarray(above.T @ w) + bottom[:, None] * w.sum(axis=0)[None, :]

    def _sparse(self):
        if self._csc is None:
            self._csc = self._csc_of(self.positives[2])
        return self._csc

    def _csc_of(self, values: np.ndarray):
        """A scipy CSC matrix of these values at the positives' places, straight from their column order (unsorted
        rows within a column are valid CSC: nothing is sorted)."""
        import scipy.sparse as sp

        return sp.csc_matrix((values, self._positive_entries[0], self._column_starts()), shape=self.shape)

    def _column_starts(self) -> np.ndarray:
        """Where each column's positives start, and where the last one's end: [features + 1]."""
        if self._starts is None:
            counts = np.bincount(self._positive_entries[1], minlength=self.shape[1])
            self._starts = np.concatenate([[0], np.cumsum(counts)])
        return self._starts


def pearson_many(matrix: FeatureMatrix, targets: np.ndarray) -> np.ndarray:
    """Pearson correlation of every column with every target column [sentences, k]: [features, k] (NaN where a
    column or a target is constant)."""
    centered = targets - targets.mean(axis=0)
    covariance = matrix.t_dot(centered)
    constant, squares = matrix.spread()
    with np.errstate(divide="ignore", invalid="ignore"):
        r = covariance / np.sqrt(squares[:, None] * (centered**2).sum(axis=0)[None, :])
    r[constant] = np.nan
    return np.clip(r, -1.0, 1.0)


def max_pearson(matrix: FeatureMatrix, targets: np.ndarray) -> np.ndarray:
    """The greatest Pearson correlation over the non-constant columns with each target column [sentences, k] (targets
    of equal variance, as permutations of one vector are): [k], -inf without such a column."""
    constant, squares = matrix.spread()
    varying = ~constant
    if not varying.any():
        return np.full(targets.shape[1], -np.inf)
    centered = targets - targets.mean(axis=0)
    with np.errstate(divide="ignore"):
        scale = 1.0 / np.sqrt(squares)
    covariance = matrix.t_dot(centered)[varying] * scale[varying, None]  # each varying column over its norm
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.clip(covariance.max(axis=0) / np.sqrt((centered**2).sum(axis=0)), -1.0, 1.0)


def max_auroc(matrix: FeatureMatrix, positive: np.ndarray) -> np.ndarray:
    """The greatest AUROC over the columns for each boolean column of positive (as auroc_many): [k]."""
    n_pos = int(positive[:, 0].sum())
    n_neg = matrix.shape[0] - n_pos
    if not n_pos or not n_neg:
        return np.full(positive.shape[1], np.nan)
    active = matrix.active()
    best = np.full(positive.shape[1], 0.5 if not active.all() else -np.inf)  # an all-zero column scores 0.5
    if active.any():
        ranked = matrix.scaled(active, np.ones(matrix.shape[1])).ranks_t_dot(positive.astype(np.float64))
        best = np.maximum(best, (ranked.max(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return best


def auroc_many(matrix: FeatureMatrix, positive: np.ndarray) -> np.ndarray:
    """P(a positive row outscores a negative one), ties half, of every column for every boolean column of positive
    [sentences, k] (each with the same number of positives): [features, k]."""
    n_pos = int(positive[:, 0].sum())
    n_neg = matrix.shape[0] - n_pos
    if not n_pos or not n_neg:
        return np.full((matrix.shape[1], positive.shape[1]), np.nan)
    rank_sums = matrix.ranks_t_dot(positive.astype(np.float64))
    return (rank_sums - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
