"""Mostly-zero non-negative arrays (SAE activations), by their positive entries: finding them, sorted by column then
value, and the columns' average ranks from them."""

from __future__ import annotations

import numpy as np

# a mostly-zero array's positive entries: row, column and value, sorted by column, then value
Positives = tuple[np.ndarray, np.ndarray, np.ndarray]


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks of each column of x (ties get their average rank), as scipy.stats.rankdata(x, axis=0)."""
    positives = positive_entries(x)
    if positives is None:
        return _sorted_ranks(x)
    rows, cols, values = positives
    n_rows, n_cols = x.shape
    zeros, ranks = positive_ranks(n_rows, n_cols, cols, values)
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


def positive_entries(x: np.ndarray, most: float = 0.25) -> Positives | None:
    """The nonzero entries of a mostly-zero [rows, columns] array (SAE activations are: non-negative, at most a
    share `most` of the entries of its not all-zero columns positive) as (row, column, value), sorted by column,
    then value; None for any other array."""
    return positive_entries_of([np.asarray(x)], most)


def positive_entries_of(blocks: list[np.ndarray], most: float = 0.25) -> Positives | None:
    """The positive entries (row, column, value; sorted by column, then value) of mostly-zero non-negative column
    blocks [rows, columns of each] side by side, as positive_entries gives them for the joined array, without
    joining them; None for any other."""
    if not blocks or blocks[0].ndim != 2 or not sum(block.size for block in blocks):
        return None
    parts, offset, found = [], 0, 0
    n_rows, width = blocks[0].shape[0], sum(block.shape[1] for block in blocks)
    for block in blocks:
        nonzero = block != 0  # a C-ordered mask, even of a view: np.flatnonzero of it is far faster than np.nonzero
        found += int(np.count_nonzero(nonzero))
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


def positive_ranks(n_rows: int, n_cols: int, cols: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
