"""Held-out validation of the ranking: stratified folds; in each, the top features are chosen on the other folds with
the analysis's own filter and score, and scored on the held-out sentences only."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from saezarr.analysis.stats.features import FeatureMatrix, auroc_many, pearson_many
from saezarr.analysis.stats.metrics import block_metrics, passes_filter
from saezarr.errors import InputError, option

# training Pearson below min_pearson by more than rounding cannot pass the filter: only the others get all metrics
ROUNDING = 1e-9


def fold_ids(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Each sentence's fold (0..k-1), stratified by label: each label's sentences, shuffled with a fixed seed, dealt
    round the folds in turn (continuing from where the previous label stopped, so fold sizes differ by at most one)."""
    if k < 2 or k > len(labels):
        raise InputError(
            f"{option('folds')}: expected 0 (off) or 2 to the number of sentences ({len(labels)}), got {k}"
        )
    rng = np.random.default_rng(seed)
    folds = np.empty(len(labels), dtype=np.int64)
    dealt = 0
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        folds[members] = (dealt + np.arange(len(members))) % k
        dealt += len(members)
    return folds


@dataclass(frozen=True)
class Thresholds:
    """The analysis's filter and how many top features it keeps."""

    min_pearson: float
    min_tpr: float
    max_fpr: float
    top_n: int


# one feature chosen in one fold: (fold, config position, feature id, training score, held-out pearson, held-out AUROC)
CHOSEN = np.dtype(
    [
        ("fold", "<i8"),
        ("config", "<i8"),
        ("feature", "<i8"),
        ("score", "<f8"),
        ("heldout_pearson", "<f8"),
        ("heldout_auroc_3v0", "<f8"),
    ]
)


@dataclass(frozen=True)
class FoldSplit:
    """One outer fold of a [sentences, features] matrix: its training and held-out rows (boolean masks), which
    features are constant on the training rows, the features that correlate with some target on the training rows
    and their training Pearson correlation with each target column [those features, targets] (the others have none:
    they are constant, or NaN past a narrower SAE's width)."""

    train: np.ndarray
    test: np.ndarray
    matrix: FeatureMatrix
    constant: np.ndarray
    varying: np.ndarray
    r: np.ndarray

    def training(self, which: np.ndarray) -> np.ndarray:
        """The columns `which` on the training rows, dense."""
        return self.matrix.columns(which)[self.train]

    def testing(self, which: np.ndarray) -> np.ndarray:
        """The columns `which` on the held-out rows, dense."""
        return self.matrix.columns(which)[self.test]


def fold_splits(matrix: FeatureMatrix, targets: np.ndarray, folds: np.ndarray) -> list[FoldSplit]:
    """Each fold's FoldSplit of the matrix against targets [sentences, targets] (the labels first): what the held-out
    validation and the emergence curves both select on, computed once."""
    targets = targets.astype(np.float64)
    splits = []
    for fold in range(int(folds.max()) + 1):
        train = folds != fold
        constant, squares = matrix.spread(train)  # most SAE features are silent on every training sentence
        # the targets centred on the training rows and zero on the others: the whole matrix's product (its sparse
        # form built once for every fold) is the training rows' covariance
        centred = np.where(train[:, None], targets - targets[train].mean(axis=0), 0.0)
        norms = np.sqrt(squares[~constant, None] * (centred**2).sum(axis=0))
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.clip(matrix.t_dot(centred)[~constant] / norms, -1.0, 1.0)
        correlates = ~np.isnan(r).all(axis=1)
        splits.append(FoldSplit(train, ~train, matrix, constant, np.flatnonzero(~constant)[correlates], r[correlates]))
    return splits


def chosen_in_folds(
    matrix: FeatureMatrix, config: int, labels: np.ndarray, folds: np.ndarray, thresholds: Thresholds
) -> np.ndarray:
    """One config's top features of each fold (passing the filter on the training folds, the top_n by training
    interpretability_score) with their metrics on the held-out fold: a CHOSEN array."""
    owners = np.full(matrix.shape[1], config, dtype=np.int64)
    splits = fold_splits(matrix, labels[:, None], folds)
    return chosen_in_splits(splits, labels, thresholds, owners, np.arange(matrix.shape[1]))


def chosen_in_splits(
    splits: list[FoldSplit], labels: np.ndarray, thresholds: Thresholds, owners: np.ndarray, features: np.ndarray
) -> np.ndarray:
    """The top features of each fold and of each config (owners: each column's config position, features: its
    feature id), chosen on the training rows of the splits (whose first target is the labels) and scored on the
    held-out rows: a CHOSEN array."""
    found = []
    for fold, split in enumerate(splits):
        train_labels = labels[split.train]
        candidates = split.varying[split.r[:, 0] >= thresholds.min_pearson - ROUNDING]
        if not len(candidates):
            continue
        metrics = block_metrics(split.training(candidates), train_labels)
        passing = passes_filter(metrics, thresholds.min_pearson, thresholds.min_tpr, thresholds.max_fpr)
        chosen, score = candidates[passing], metrics["interpretability_score"][passing]
        # each config's top_n by score; candidates are in column order, so ties keep the lower feature first
        order = np.lexsort((-score, owners[chosen]))
        chosen, score = chosen[order], score[order]
        group_start = np.searchsorted(owners[chosen], owners[chosen], side="left")
        kept = np.arange(len(chosen)) - group_start < thresholds.top_n
        chosen, score = chosen[kept], score[kept]
        if not len(chosen):
            continue
        rows = np.empty(len(chosen), dtype=CHOSEN)
        rows["fold"], rows["config"], rows["feature"], rows["score"] = fold, owners[chosen], features[chosen], score
        rows["heldout_pearson"], rows["heldout_auroc_3v0"] = heldout_scores(split.testing(chosen), labels[split.test])
        found.append(rows)
    return np.concatenate(found) if found else np.empty(0, dtype=CHOSEN)


def heldout_scores(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pearson correlation and AUROC 3-vs-0 of each column of held-out activations [sentences, features]; a column
    constant on the held-out sentences (a feature silent on all of them) scores 0 and 0.5: it tells them apart no
    better than chance."""
    matrix = FeatureMatrix.of(x)
    pearson = pearson_many(matrix, labels.astype(np.float64)[:, None])[:, 0]
    pearson = np.where(np.isnan(pearson) & (np.ptp(labels) > 0), 0.0, pearson)
    extremes = np.isin(labels, (0, 3))
    return pearson, auroc_many(matrix.rows(extremes), (labels[extremes] == 3)[:, None])[:, 0]


def top_of_each_fold(chosen: np.ndarray, top_n: int) -> np.ndarray:
    """Of every config's choices, each fold's top_n by training score (ties: the earlier config, then feature, as
    the in-sample ranking orders them)."""
    chosen = np.sort(chosen, order=["fold", "config", "feature"])
    kept = []
    for fold in np.unique(chosen["fold"]):
        rows = chosen[chosen["fold"] == fold]
        kept.append(rows[np.argsort(-rows["score"], kind="stable")[:top_n]])
    return np.concatenate(kept) if kept else np.empty(0, dtype=CHOSEN)


def heldout_columns(top: np.ndarray, config: np.ndarray, feature: np.ndarray) -> dict[str, np.ndarray]:
    """For features given by config position and id: heldout_pearson and heldout_auroc_3v0 (means over the folds
    whose top features they were among; NaN if none) and folds_in_top_n."""
    keys = top["config"] * (1 << 32) + top["feature"]
    wanted = np.asarray(config, dtype=np.int64) * (1 << 32) + np.asarray(feature, dtype=np.int64)
    out = {
        "heldout_pearson": np.full(len(wanted), np.nan),
        "heldout_auroc_3v0": np.full(len(wanted), np.nan),
        "folds_in_top_n": np.zeros(len(wanted), dtype=np.int64),
    }
    for i, key in enumerate(wanted):
        rows = top[keys == key]
        if len(rows):
            out["folds_in_top_n"][i] = len(rows)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # every fold's value NaN: the mean is NaN
                out["heldout_pearson"][i] = np.nanmean(rows["heldout_pearson"])
                out["heldout_auroc_3v0"][i] = np.nanmean(rows["heldout_auroc_3v0"])
    return out
