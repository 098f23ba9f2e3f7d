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


def unstacked(stacked) -> dict:
    """The metrics of a [metric, ...] stack (numpy or dask) by name, in METRICS order, `monotonic` as bool."""
    return {name: stacked[i].astype(bool) if name == "monotonic" else stacked[i] for i, name in enumerate(METRICS)}


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
    positives = _positive_entries(x)
    if positives is None:
        return _dense_block_metrics(x, labels)
    return _sparse_block_metrics(positives, labels, x.shape[1])


def _dense_block_metrics(x: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """block_metrics of any array, from a float64 copy of its columns that are not all zero."""
    out = _all_zero_metrics(labels, x.shape[1])
    # an all-zero column's metrics are known without looking at it
    active = np.flatnonzero(np.count_nonzero(x, axis=0))
    if len(active):
        # rows grouped by label, 3 and 0 first: each label's rows, and label 3's then label 0's, are slices
        order = np.argsort((labels + 1) % 4, kind="stable")
        for name, values in _metrics(x[np.ix_(order, active)].astype(np.float64), labels[order]).items():
            out[name][active] = values
    return out


def _sparse_block_metrics(positives: Positives, labels: np.ndarray, n_features: int) -> dict[str, np.ndarray]:
    """block_metrics of a mostly-zero array from its positive entries (_positive_entries), without a dense copy."""
    out = _all_zero_metrics(labels, n_features)
    rows, cols, values = positives
    if len(cols):
        starts = np.flatnonzero(np.r_[True, cols[1:] != cols[:-1]])  # each active column's first positive
        column = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(cols)]))  # among the active columns
        for name, metric in _sparse_metrics((rows, column, values.astype(np.float64)), labels, starts).items():
            out[name][cols[starts]] = metric
    return out


def _all_zero_metrics(labels: np.ndarray, n_features: int) -> dict[str, np.ndarray]:
    """The metrics of features that are 0.0 for every sentence (what _metrics gives for them)."""
    counts = _label_counts(labels)
    both = counts[0] > 0 and counts[3] > 0
    values = {name: np.nan for name in METRICS}
    values.update({f"mean_label_{k}": 0.0 for k in LABELS})
    values.update({"monotonic": 1.0, "frac_active": 0.0, "max_activation": 0.0, "auroc_3v0": 0.5 if both else np.nan})
    values.update({f"frac_active_label_{k}": 0.0 for k in LABELS if counts[k]})
    return {name: np.full(n_features, values[name]) for name in METRICS}


def _label_counts(labels: np.ndarray) -> dict[int, int]:
    """The number of sentences of each label."""
    return {k: int((labels == k).sum()) for k in LABELS}


def _metrics(x: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric of a float64 [sentences, features] array whose rows are grouped by label, label 3's and label 0's
    first, one value per feature, in METRICS order."""
    counts = _label_counts(labels)
    starts = np.cumsum([0, *(counts[k] for k in GROUPED)])
    rows = {k: x[starts[i] : starts[i + 1]] for i, k in enumerate(GROUPED)}
    means = {k: rows[k].mean(axis=0) if counts[k] else np.zeros(x.shape[1]) for k in LABELS}
    y = labels - labels.mean()
    squares, covariance = _moments(x, y)
    x0, x3 = rows[0], rows[3]
    if counts[0] and counts[3]:
        threshold = np.percentile(x0, 95, axis=0)
        tpr = (x3 > threshold).mean(axis=0)
        fpr = (x0 > threshold).mean(axis=0)
    else:
        threshold = tpr = fpr = np.full(x.shape[1], np.nan)
    variances = {k: rows[k].var(axis=0, ddof=1) if counts[k] > 1 else np.zeros(x.shape[1]) for k in (0, 3)}
    measured = {
        "pearson_corr": _correlation(squares, covariance, y),
        "spearman_corr": _spearman(x, _label_ranks(labels)),
        **{f"mean_label_{k}": means[k] for k in LABELS},
        "threshold": threshold,
        "tpr": tpr,
        "fpr": fpr,
        "frac_active": (x > 0).mean(axis=0),
        **{
            f"frac_active_label_{k}": (rows[k] > 0).mean(axis=0) if counts[k] else np.full(x.shape[1], np.nan)
            for k in LABELS
        },
        "max_activation": x.max(axis=0),
        "auroc_3v0": _auroc(x[: counts[3] + counts[0]], counts[3]),
        "cohens_d_3v0": _cohens_d(counts, means, variances),
    }
    return _completed(measured, np.sqrt(squares / len(x)), x.max(axis=0) == x.min(axis=0), counts)


def _sparse_metrics(positives: Positives, labels: np.ndarray, starts: np.ndarray) -> dict[str, np.ndarray]:
    """What _metrics gives, from the positive entries (row, column, float64 value; sorted by column, then value) of a
    non-negative [sentences, features] array in which every column has one; starts: each column's first entry."""
    rows, cols, values = positives
    n_rows, n_cols = len(labels), len(starts)
    counts = _label_counts(labels)
    label = labels[rows].astype(np.intp)
    cell = label * n_cols + cols  # (label, column) of each entry
    positive = np.bincount(cell, minlength=4 * n_cols).reshape(4, n_cols)
    sums = np.bincount(cell, values, minlength=4 * n_cols).reshape(4, n_cols)
    means = {k: sums[k] / counts[k] if counts[k] else np.zeros(n_cols) for k in LABELS}
    deviations = values - np.stack([means[k] for k in LABELS])[label, cols]
    squared = np.bincount(cell, deviations**2, minlength=4 * n_cols).reshape(4, n_cols)
    # a label's zeros each deviate from its mean by -mean
    variances = {
        k: (squared[k] + (counts[k] - positive[k]) * means[k] ** 2) / (counts[k] - 1)
        if counts[k] > 1
        else np.zeros(n_cols)
        for k in (0, 3)
    }
    y = labels - labels.mean()
    squares, covariance = _sparse_moments(positives, y, n_rows, n_cols)
    per_column = np.bincount(cols, minlength=n_cols)
    maximum = values[np.r_[starts[1:], len(values)] - 1]
    if counts[0] and counts[3]:
        threshold = _sparse_percentile_95(values[label == 0], positive[0], counts[0])
        above = values > threshold[cols]  # zeros never are: the threshold is >= 0
        tpr = np.bincount(cols[above & (label == 3)], minlength=n_cols) / counts[3]
        fpr = np.bincount(cols[above & (label == 0)], minlength=n_cols) / counts[0]
    else:
        threshold = tpr = fpr = np.full(n_cols, np.nan)
    measured = {
        "pearson_corr": _correlation(squares, covariance, y),
        "spearman_corr": _sparse_spearman(positives, _label_ranks(labels), n_cols),
        **{f"mean_label_{k}": means[k] for k in LABELS},
        "threshold": threshold,
        "tpr": tpr,
        "fpr": fpr,
        "frac_active": per_column / n_rows,
        **{f"frac_active_label_{k}": positive[k] / counts[k] if counts[k] else np.full(n_cols, np.nan) for k in LABELS},
        "max_activation": maximum,
        "auroc_3v0": _sparse_auroc(positives, label, counts, n_cols),
        "cohens_d_3v0": _cohens_d(counts, means, variances),
    }
    # a column with a zero varies (it has a positive); one without is constant if its least and greatest are equal
    constant = (per_column == n_rows) & (values[starts] == maximum)
    return _completed(measured, np.sqrt(squares / n_rows), constant, counts)


def _completed(
    measured: dict[str, np.ndarray], std: np.ndarray, constant: np.ndarray, counts: dict[int, int]
) -> dict[str, np.ndarray]:
    """Every metric, in METRICS order, from the measured ones, the columns' population std and which columns are
    constant; the legacy metrics NaN where the legacy script skips the feature."""
    means = [measured[f"mean_label_{k}"] for k in LABELS]
    with np.errstate(divide="ignore", invalid="ignore"):
        separation = (means[3] - means[0]) / std
    out = {
        **measured,
        "monotonic": ((means[0] <= means[1]) & (means[1] <= means[2]) & (means[2] <= means[3])).astype(np.float64),
        "separation_score": separation,
        "interpretability_score": 0.4 * measured["pearson_corr"]
        + 0.3 * separation
        + 0.3 * (measured["tpr"] - measured["fpr"]),
    }
    skipped = constant | (counts[0] == 0) | (counts[3] == 0)
    for name in LEGACY_NAN:
        out[name] = np.where(skipped, np.nan, out[name])
    return {name: out[name] for name in METRICS}


def _sparse_percentile_95(values0: np.ndarray, positive0: np.ndarray, n0: int) -> np.ndarray:
    """np.percentile(x0, 95, axis=0), bit for bit, of the n0 label-0 rows of a non-negative array, from their
    positive values (sorted by column, then value) and each column's number of them: the zeros come first in sorted
    order, so a column's i-th smallest value is 0 or one of its positives."""
    # numpy's linear method: index (n - 1) q in the sorted column, interpolated by numpy's _lerp
    virtual = (n0 - 1) * np.true_divide(95, 100)
    lower = -1 if virtual >= n0 - 1 else int(np.floor(virtual))  # numpy takes the last value at the top
    upper = -1 if virtual >= n0 - 1 else lower + 1
    t = virtual - lower
    zeros = n0 - positive0
    first = np.cumsum(positive0) - positive0  # each column's first label-0 positive in values0
    padded = np.r_[values0, 0.0]

    def order_statistic(i: int) -> np.ndarray:
        among = i % n0 - zeros
        return padded[np.where(among >= 0, first + among, len(values0))]

    a, b = order_statistic(lower), order_statistic(upper)
    difference = b - a
    return b - difference * (1 - t) if t >= 0.5 else a + difference * t


def _label_ranks(labels: np.ndarray) -> np.ndarray:
    """Average ranks of the integer labels (ties share their mean rank), as scipy.stats.rankdata."""
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    below = np.cumsum(counts) - counts
    return (below + (counts + 1) / 2)[inverse].astype(np.float64)


def _moments(x: np.ndarray, yc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column of x: the sum of squared deviations from its mean, and the sum of those deviations times yc."""
    xc = x - x.mean(axis=0)
    # xc.T @ yc, not yc @ xc: the same sums, but BLAS runs it several times faster on C-ordered xc
    return np.einsum("ij,ij->j", xc, xc), xc.T @ yc


def _sparse_moments(positives: Positives, yc: np.ndarray, n_rows: int, n_cols: int) -> tuple[np.ndarray, np.ndarray]:
    """_moments of a non-negative [n_rows, n_cols] array from its positive entries: a column's zeros deviate by
    -mean, and add nothing to sum(x * yc)."""
    rows, cols, values = positives
    mean = np.bincount(cols, values, minlength=n_cols) / n_rows
    zeros = n_rows - np.bincount(cols, minlength=n_cols)
    squares = np.bincount(cols, (values - mean[cols]) ** 2, minlength=n_cols) + zeros * mean**2
    return squares, np.bincount(cols, yc[rows] * values, minlength=n_cols) - mean * yc.sum()


def _correlation(squares: np.ndarray, covariance: np.ndarray, yc: np.ndarray) -> np.ndarray:
    """Pearson correlation from _moments (NaN where either side is constant)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.clip(covariance / np.sqrt(squares * (yc @ yc)), -1.0, 1.0)


def _spearman(x: np.ndarray, label_ranks: np.ndarray) -> np.ndarray:
    """Spearman correlation of every column of x with the labels: Pearson's of their average ranks."""
    yc = label_ranks - label_ranks.mean()
    return _correlation(*_moments(average_ranks(x), yc), yc)


def _sparse_spearman(positives: Positives, label_ranks: np.ndarray, n_cols: int) -> np.ndarray:
    """_spearman of a non-negative array from its positive entries: a column's zeros share rank c, and every
    column's ranks average (n + 1) / 2."""
    rows, cols, values = positives
    n_rows = len(label_ranks)
    yc = label_ranks - label_ranks.mean()
    zeros, ranks = _positive_ranks(n_rows, n_cols, cols, values)
    c, middle = (zeros + 1) / 2, (n_rows + 1) / 2
    squares = np.bincount(cols, (ranks - middle) ** 2, minlength=n_cols) + zeros * (c - middle) ** 2
    covariance = np.bincount(cols, yc[rows] * (ranks - c[cols]), minlength=n_cols) + (c - middle) * yc.sum()
    return _correlation(squares, covariance, yc)


def _auroc(x30: np.ndarray, n3: int) -> np.ndarray:
    """P(a label-3 sentence outscores a label-0 one), ties counting half: Mann-Whitney U / (n3 n0), from the rows of
    label 3 followed by those of label 0."""
    n0 = len(x30) - n3
    if not n3 or not n0:
        return np.full(x30.shape[1], np.nan)
    return (average_ranks(x30)[:n3].sum(axis=0) - n3 * (n3 + 1) / 2) / (n3 * n0)


def _sparse_auroc(positives: Positives, label: np.ndarray, counts: dict[int, int], n_cols: int) -> np.ndarray:
    """_auroc of a non-negative array from its positive entries and their labels."""
    n3, n0 = counts[3], counts[0]
    if not n3 or not n0:
        return np.full(n_cols, np.nan)
    _, cols, values = positives
    inside = (label == 3) | (label == 0)  # still sorted by column, then value
    zeros, ranks = _positive_ranks(n3 + n0, n_cols, cols[inside], values[inside])
    of3 = label[inside] == 3
    cols3 = cols[inside][of3]
    positive3 = np.bincount(cols3, minlength=n_cols)
    rank_sum3 = np.bincount(cols3, ranks[of3], minlength=n_cols) + (n3 - positive3) * (zeros + 1) / 2
    return (rank_sum3 - n3 * (n3 + 1) / 2) / (n3 * n0)


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks of each column of x (ties get their average rank), as scipy.stats.rankdata(x, axis=0)."""
    positives = _positive_entries(x)
    if positives is None:
        return _sorted_ranks(x)
    rows, cols, values = positives
    zeros, ranks = _positive_ranks(*x.shape, cols, values)
    out = np.broadcast_to((zeros + 1) / 2, x.shape).copy()
    out[rows, cols] = ranks
    return out


def _sorted_ranks(x: np.ndarray) -> np.ndarray:
    """average_ranks of any [rows, columns] array, by sorting each column (a column holding NaN ranks as NaN); not
    scipy.stats.rankdata, whose import (about 1 s) would be most of a small analysis's resampling."""
    x = np.asarray(x)
    order = np.argsort(x, axis=0, kind="stable")
    ordered = np.take_along_axis(x, order, axis=0)
    position = np.broadcast_to(np.arange(len(x))[:, None], x.shape)
    starts = np.ones(x.shape, dtype=bool)  # where a run of equal values begins, and where one ends
    starts[1:] = ordered[1:] != ordered[:-1]
    ends = np.ones(x.shape, dtype=bool)
    ends[:-1] = starts[1:]
    first = np.maximum.accumulate(np.where(starts, position, 0), axis=0)
    last = np.flip(np.minimum.accumulate(np.flip(np.where(ends, position, len(x) - 1), axis=0), axis=0), axis=0)
    ranks = np.empty(x.shape)
    np.put_along_axis(ranks, order, (first + last) / 2 + 1, axis=0)
    ranks[:, np.isnan(x).any(axis=0)] = np.nan
    return ranks


def _positive_entries(x: np.ndarray, most: float = 0.25) -> Positives | None:
    """The nonzero entries of a mostly-zero [rows, columns] array (SAE activations are: non-negative, at most a
    share `most` of the entries of its not all-zero columns positive) as (row, column, value), sorted by column,
    then value; None for any other array."""
    return positive_entries_of([np.asarray(x)], most)


def positive_entries_of(blocks: list[np.ndarray], most: float = 0.25) -> Positives | None:
    """The positive entries (row, column, value; sorted by column, then value) of mostly-zero non-negative column
    blocks [rows, columns of each] side by side, as _positive_entries gives them for the joined array, without
    joining them; None for any other."""
    if not blocks or blocks[0].ndim != 2 or not sum(block.size for block in blocks):
        return None
    parts, offset, found = [], 0, 0
    n_rows, width = blocks[0].shape[0], sum(block.shape[1] for block in blocks)
    for block in blocks:
        nonzero = block != 0  # a C-ordered mask, even of a view: np.flatnonzero of it is far faster than np.nonzero
        found += np.count_nonzero(nonzero)
        if found > most * n_rows * width:
            return None
        rows, cols = np.divmod(np.flatnonzero(nonzero), block.shape[1])
        values = block[rows, cols]
        if len(values) and not values.min() > 0:  # a negative or NaN entry
            return None
        order = _column_value_order(rows, cols, values, block.shape)  # blocks in column order: sorted overall
        parts.append((rows[order], cols[order] + offset, values[order]))
        offset += block.shape[1]
    rows, cols, values = (np.concatenate(part) for part in zip(*parts))
    if len(values) > most * n_rows * np.count_nonzero(np.bincount(cols, minlength=width)):
        return None
    return rows, cols, values


def _column_value_order(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The order that sorts positive entries by column, then value (then row)."""
    row_bits, col_bits = ((max(n, 1) - 1).bit_length() for n in shape)
    if values.dtype == np.float64:
        narrowed = values.astype(np.float32)
        if np.array_equal(narrowed, values):  # float32 activations widened: their order is the float32 values' order
            values = narrowed
    if values.dtype != np.float32 or row_bits + 31 + col_bits > 64:
        return np.lexsort((values, cols))
    # positive float32 values sort as their bit patterns do: one integer key, which sorts several times faster
    key = cols.astype(np.uint64) << np.uint64(31 + row_bits)
    key |= values.view(np.uint32).astype(np.uint64) << np.uint64(row_bits)
    key |= rows.astype(np.uint64)
    return np.argsort(key)


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


def _cohens_d(counts: dict[int, int], means: dict[int, np.ndarray], variances: dict[int, np.ndarray]) -> np.ndarray:
    """(mean_3 - mean_0) / pooled standard deviation (from the labels' ddof-1 variances, 0 for a single sentence);
    NaN where it is undefined or zero."""
    n3, n0 = counts[3], counts[0]
    if n3 + n0 <= 2 or not n3 or not n0:
        return np.full(len(means[3]), np.nan)
    pooled = np.sqrt(((n3 - 1) * variances[3] + (n0 - 1) * variances[0]) / (n3 + n0 - 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(pooled > 0, (means[3] - means[0]) / np.where(pooled > 0, pooled, 1), np.nan)


def positive_ranks(n_rows: int, n_cols: int, cols: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each column's number of zeros, and each positive entry's average rank within its column (entries from
    positive_entries_of)."""
    return _positive_ranks(n_rows, n_cols, cols, values)
