"""The chance level of the best feature: Pearson correlation and AUROC 3-vs-0 recomputed under label permutations,
the maximum over all analysed features per permutation, and family-wise p-values from those maxima.

p_value_fwer of a feature = (1 + #{permutations whose maximum over every analysed feature >= its score}) / (1 + N)
(ties within 1e-12 counted):
the permutation test of the maximum statistic (Westfall & Young), which bounds the family-wise error rate over all
features analysed together; the +1 counts the observed labelling as one of the permutations, so p is never 0.
Pearson's null permutes all labels; AUROC 3-vs-0's permutes labels 0 and 3 among the label-0 and label-3 sentences
(the exact null of that two-sample comparison; labels 1 and 2 do not enter it)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from saezarr.analysis.stats.features import FeatureMatrix, max_auroc, max_pearson

ALPHA = 0.05  # the family-wise error rate: a feature whose p_value_fwer is at most this beats chance
# a permuted maximum this close below a score counts as reaching it: permutations that only reorder tied values give
# the observed score again, computed in another order (sparse features tie at zero often)
TIE = 1e-12
CHANCE_QUANTILE = 100 * (1 - ALPHA)  # the chance level: this percentile (95) of the permuted maxima


@dataclass(frozen=True)
class Permutations:
    """Label permutations: `all` [N, sentences] reorders every label; `extremes` [N, label-0 and label-3 sentences]
    reorders the labels of those sentences among them."""

    all: np.ndarray
    extremes: np.ndarray

    @classmethod
    def draw(cls, labels: np.ndarray, n: int, seed: int) -> Permutations:
        """n permutations of the labels from a fixed seed."""
        rng = np.random.default_rng(seed)
        n_extremes = int(np.isin(labels, (0, 3)).sum())
        every = np.array([rng.permutation(len(labels)) for _ in range(n)], dtype=np.int64).reshape(n, len(labels))
        extremes = np.array([rng.permutation(n_extremes) for _ in range(n)], dtype=np.int64).reshape(n, n_extremes)
        return cls(every, extremes)

    @property
    def n(self) -> int:
        """The number of permutations."""
        return len(self.all)


def null_maxima(matrix: FeatureMatrix, labels: np.ndarray, permutations: Permutations) -> tuple[np.ndarray, np.ndarray]:
    """The greatest Pearson correlation and the greatest AUROC 3-vs-0 over the matrix's features under each
    permutation ([N] each; -inf where no feature has one, NaN without label-0 or label-3 sentences)."""
    n = permutations.n
    if not ((labels == 0).any() and (labels == 3).any()) or not n:
        return np.full(n, np.nan), np.full(n, np.nan)
    y = labels.astype(np.float64)
    extremes = np.isin(labels, (0, 3))
    is3 = labels[extremes] == 3
    return max_pearson(matrix, y[permutations.all].T), max_auroc(matrix.rows(extremes), is3[permutations.extremes].T)


def fwer_p_values(observed: np.ndarray, maxima: np.ndarray) -> np.ndarray:
    """(1 + #{maxima >= observed}) / (1 + N) for each observed score, ties within TIE included (NaN where it is NaN,
    or without maxima)."""
    maxima = np.sort(np.asarray(maxima, dtype=np.float64))
    if not len(maxima) or np.isnan(maxima).any():
        return np.full(np.shape(observed), np.nan)
    at_least = len(maxima) - np.searchsorted(maxima, np.asarray(observed) - TIE, side="left")
    with np.errstate(invalid="ignore"):
        return np.where(np.isnan(observed), np.nan, (1.0 + at_least) / (1.0 + len(maxima)))


def beats_chance(p_values: np.ndarray) -> np.ndarray:
    """Which family-wise p-values beat chance: p_value_fwer <= ALPHA (False where NaN)."""
    with np.errstate(invalid="ignore"):
        return np.asarray(p_values, dtype=np.float64) <= ALPHA


def chance_level(maxima: np.ndarray) -> float:
    """The (1 - ALPHA) quantile, the 95th percentile, of permuted maxima: the score the best feature reaches under
    permuted labels at the family-wise error rate (NaN without any finite one)."""
    finite = np.asarray(maxima, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    return float(np.percentile(finite, CHANCE_QUANTILE)) if len(finite) else float("nan")
