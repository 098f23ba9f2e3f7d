"""Per-feature metrics of per-sentence activations against the 0-3 concept labels, vectorised over features."""

from __future__ import annotations

import numpy as np

LABELS = (0, 1, 2, 3)
# metrics the legacy analysis computes; NaN for a constant feature or without label-0 or label-3 sentences
LEGACY_NAN = ("pearson_corr", "spearman_corr", "separation_score", "threshold", "tpr", "fpr", "interpretability_score")
METRICS = (
    "pearson_corr",
    "spearman_corr",
    *(f"mean_label_{k}" for k in LABELS),
    "monotonic",
    "separation_score",
    "threshold",
    "tpr",
    "fpr",
    "interpretability_score",
    "frac_active",
    *(f"frac_active_label_{k}" for k in LABELS),
    "max_activation",
    "auroc_3v0",
    "cohens_d_3v0",
)
# a mostly-zero array's positive entries: row, column and value, sorted by column, then value
Positives = tuple[np.ndarray, np.ndarray, np.ndarray]
GROUPED = (3, 0, 1, 2)  # the order of the labels' rows in _metrics
# bytes of one float64 [sentences x features] block in the metrics pass; its temporaries are a few times this
BLOCK_BYTES = 16 * 2**20


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


def passes_filter(metrics, min_pearson: float, min_tpr: float, max_fpr: float):
    """pearson >= min_pearson, monotonic, tpr >= min_tpr and fpr <= max_fpr (NaN never passes), for metrics held
    as arrays or DataArrays by name."""
    return (
        (metrics["pearson_corr"] >= min_pearson)
        & (metrics["monotonic"] != 0)
        & (metrics["tpr"] >= min_tpr)
        & (metrics["fpr"] <= max_fpr)
    )


def block_metrics(x: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric of a [sentences, features] array, one value per feature, in METRICS order."""
    x = np.asarray(x)
    out = _all_zero_metrics(labels, x.shape[1])
    # SAE activations are mostly exact zeros: an all-zero column's metrics are known without looking at it
    active = np.flatnonzero(np.count_nonzero(x, axis=0))
    if len(active):
        # rows grouped by label, 3 and 0 first: each label's rows, and label 3's then label 0's, are slices
        order = np.argsort((labels + 1) % 4, kind="stable")
        for name, values in _metrics(x[np.ix_(order, active)].astype(np.float64), labels[order]).items():
            out[name][active] = values
    return out


def _all_zero_metrics(labels: np.ndarray, n_features: int) -> dict[str, np.ndarray]:
    """The metrics of features that are 0.0 for every sentence (what _metrics gives for them)."""
    counts = {k: int((labels == k).sum()) for k in LABELS}
    both = counts[0] > 0 and counts[3] > 0
    values = {name: np.nan for name in METRICS}
    values.update({f"mean_label_{k}": 0.0 for k in LABELS})
    values.update({"monotonic": 1.0, "frac_active": 0.0, "max_activation": 0.0, "auroc_3v0": 0.5 if both else np.nan})
    values.update({f"frac_active_label_{k}": 0.0 for k in LABELS if counts[k]})
    return {name: np.full(n_features, values[name]) for name in METRICS}


def _metrics(x: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric of a float64 [sentences, features] array whose rows are grouped by label, label 3's and label 0's
    first, one value per feature, in METRICS order."""
    counts = {k: int((labels == k).sum()) for k in LABELS}
    starts = np.cumsum([0, *(counts[k] for k in GROUPED)])
    rows = {k: x[starts[i] : starts[i + 1]] for i, k in enumerate(GROUPED)}
    means = {k: rows[k].mean(axis=0) if counts[k] else np.zeros(x.shape[1]) for k in LABELS}
    positives = _positive_entries(x) if _mostly_zero(x) else None
    y = labels - labels.mean()
    squares, covariance = _moments(x, y, positives)
    std = np.sqrt(squares / len(x))
    pearson = _correlation(squares, covariance, y)
    spearman = _spearman(x, _label_ranks(labels), positives)
    x0, x3 = rows[0], rows[3]
    if counts[0] and counts[3]:
        threshold = np.percentile(x0, 95, axis=0)
        tpr = (x3 > threshold).mean(axis=0)
        fpr = (x0 > threshold).mean(axis=0)
    else:
        threshold = tpr = fpr = np.full(x.shape[1], np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        separation = (means[3] - means[0]) / std
    out = {
        "pearson_corr": pearson,
        "spearman_corr": spearman,
        **{f"mean_label_{k}": means[k] for k in LABELS},
        "monotonic": ((means[0] <= means[1]) & (means[1] <= means[2]) & (means[2] <= means[3])).astype(np.float64),
        "separation_score": separation,
        "threshold": threshold,
        "tpr": tpr,
        "fpr": fpr,
        "interpretability_score": 0.4 * pearson + 0.3 * separation + 0.3 * (tpr - fpr),
        "frac_active": (x > 0).mean(axis=0),
        **{f"frac_active_label_{k}": (rows[k] > 0).mean(axis=0) if counts[k] else np.full(x.shape[1], np.nan)
           for k in LABELS},
        "max_activation": x.max(axis=0),
        "auroc_3v0": _auroc(x[: counts[3] + counts[0]], counts[3], positives),
        "cohens_d_3v0": _cohens_d(x3, x0),
    }
    constant = x.max(axis=0) == x.min(axis=0)
    skipped = constant | (counts[0] == 0) | (counts[3] == 0)
    for name in LEGACY_NAN:
        out[name] = np.where(skipped, np.nan, out[name])
    return out


def _label_ranks(labels: np.ndarray) -> np.ndarray:
    """Average ranks of the integer labels (ties share their mean rank), as scipy.stats.rankdata."""
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    below = np.cumsum(counts) - counts
    return (below + (counts + 1) / 2)[inverse].astype(np.float64)


def _moments(x: np.ndarray, yc: np.ndarray, positives: Positives | None) -> tuple[np.ndarray, np.ndarray]:
    """Per column of x: the sum of squared deviations from its mean, and the sum of those deviations times yc."""
    if positives is None:
        xc = x - x.mean(axis=0)
        # xc.T @ yc, not yc @ xc: the same sums, but BLAS runs it several times faster on C-ordered xc
        return np.einsum("ij,ij->j", xc, xc), xc.T @ yc
    # from the positive entries alone: a column's zeros deviate by -mean, and add nothing to sum(x * yc)
    rows, cols, values = positives
    n_rows, n_cols = x.shape
    mean = np.bincount(cols, values, minlength=n_cols) / n_rows
    zeros = n_rows - np.bincount(cols, minlength=n_cols)
    squares = np.bincount(cols, (values - mean[cols]) ** 2, minlength=n_cols) + zeros * mean**2
    return squares, np.bincount(cols, yc[rows] * values, minlength=n_cols) - mean * yc.sum()


def _correlation(squares: np.ndarray, covariance: np.ndarray, yc: np.ndarray) -> np.ndarray:
    """Pearson correlation from _moments (NaN where either side is constant)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.clip(covariance / np.sqrt(squares * (yc @ yc)), -1.0, 1.0)


def _spearman(x: np.ndarray, label_ranks: np.ndarray, positives: Positives | None) -> np.ndarray:
    """Spearman correlation of every column of x with the labels: Pearson's of their average ranks."""
    yc = label_ranks - label_ranks.mean()
    if positives is None:
        return _correlation(*_moments(average_ranks(x), yc, None), yc)
    # from the positive entries alone: a column's zeros share rank c, and every column's ranks average (n + 1) / 2
    rows, cols, values = positives
    n_rows, n_cols = x.shape
    zeros, ranks = _positive_ranks(n_rows, n_cols, cols, values)
    c, middle = (zeros + 1) / 2, (n_rows + 1) / 2
    squares = np.bincount(cols, (ranks - middle) ** 2, minlength=n_cols) + zeros * (c - middle) ** 2
    covariance = np.bincount(cols, yc[rows] * (ranks - c[cols]), minlength=n_cols) + (c - middle) * yc.sum()
    return _correlation(squares, covariance, yc)


def _auroc(x30: np.ndarray, n3: int, positives: Positives | None) -> np.ndarray:
    """P(a label-3 sentence outscores a label-0 one), ties counting half: Mann-Whitney U / (n3 n0), from the rows of
    label 3 followed by those of label 0 (the first rows of the array `positives` describes)."""
    n0 = len(x30) - n3
    if not n3 or not n0:
        return np.full(x30.shape[1], np.nan)
    if positives is None:
        rank_sum3 = average_ranks(x30)[:n3].sum(axis=0)
    else:
        rows, cols, values = positives
        inside = rows < len(x30)  # still sorted by column, then value
        rows, cols, values = rows[inside], cols[inside], values[inside]
        zeros, ranks = _positive_ranks(len(x30), x30.shape[1], cols, values)
        of3 = rows < n3
        positive3 = np.bincount(cols[of3], minlength=x30.shape[1])
        rank_sum3 = np.bincount(cols[of3], ranks[of3], minlength=x30.shape[1]) + (n3 - positive3) * (zeros + 1) / 2
    return (rank_sum3 - n3 * (n3 + 1) / 2) / (n3 * n0)


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks of each column of x (ties get their average rank), as scipy.stats.rankdata(x, axis=0)."""
    if not _mostly_zero(x):
        from scipy.stats import rankdata  # imported here: a cached rerun never ranks (a 1 s import)

        return rankdata(x, axis=0)
    rows, cols, values = _positive_entries(x)
    zeros, ranks = _positive_ranks(*x.shape, cols, values)
    out = np.broadcast_to((zeros + 1) / 2, x.shape).copy()
    out[rows, cols] = ranks
    return out


def _mostly_zero(x: np.ndarray) -> bool:
    """Whether x is non-negative with at most a quarter of its entries positive (SAE activations are)."""
    return x.size > 0 and not x.min() < 0 and (x > 0).mean() <= 0.25


def _positive_entries(x: np.ndarray) -> Positives:
    """The nonzero entries of x as (row, column, value), sorted by column, then value."""
    rows, cols = np.nonzero(x)
    values = x[rows, cols]
    order = np.lexsort((values, cols))
    return rows[order], cols[order], values[order]


def _positive_ranks(n_rows: int, n_cols: int, cols: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each column's number of zeros, and the average rank within its column of each positive entry (sorted by
    column, then value) of a non-negative [n_rows, n_cols] array: the zeros tie at the bottom, so only the positive
    values need sorting."""
    zeros = n_rows - np.bincount(cols, minlength=n_cols)
    if not len(cols):
        return zeros, np.empty(0)
    position = np.arange(len(cols)) - np.searchsorted(cols, np.arange(n_cols))[cols]  # among the column's positives
    starts = np.flatnonzero(np.r_[True, (cols[1:] != cols[:-1]) | (values[1:] != values[:-1])])
    sizes = np.diff(np.r_[starts, len(cols)])
    tied = np.repeat(position[starts] + (sizes - 1) / 2, sizes)  # a run of equal values shares its average position
    return zeros, zeros[cols] + tied + 1


def _cohens_d(x3: np.ndarray, x0: np.ndarray) -> np.ndarray:
    """(mean_3 - mean_0) / pooled standard deviation (ddof 1); NaN where it is undefined or zero."""
    n3, n0 = len(x3), len(x0)
    if n3 + n0 <= 2 or not n3 or not n0:
        return np.full(x3.shape[1], np.nan)
    var3 = x3.var(axis=0, ddof=1) if n3 > 1 else np.zeros(x3.shape[1])
    var0 = x0.var(axis=0, ddof=1) if n0 > 1 else np.zeros(x0.shape[1])
    pooled = np.sqrt(((n3 - 1) * var3 + (n0 - 1) * var0) / (n3 + n0 - 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(pooled > 0, (x3.mean(axis=0) - x0.mean(axis=0)) / np.where(pooled > 0, pooled, 1), np.nan)
