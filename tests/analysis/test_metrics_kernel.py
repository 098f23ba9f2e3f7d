"""block_metrics' sparse path (metrics from the sorted positive entries alone) against an independent per-feature
numpy/scipy computation, and against the dense path, on mostly-zero non-negative data with the awkward cases."""

from __future__ import annotations

import numpy as np
import pytest
from analyzetools import reference_feature, sae_like

from saezarr.analysis.stats.metrics import (
    METRICS,
    _dense_block_metrics,
    _sparse_block_metrics,
    block_metrics,
)
from saezarr.analysis.stats.sparse import positive_entries

# bit for bit: counts, order statistics and numpy's percentile interpolation, no sums in another order
EXACT = (
    "threshold",
    "tpr",
    "fpr",
    "monotonic",
    "max_activation",
    "frac_active",
    *(f"frac_active_label_{k}" for k in range(4)),
)
# sentences per label 0, 1, 2, 3; label 0's 95th percentile at index (n0 - 1) 0.95 has fraction 0.55 for 10 (the
# t >= 0.5 branch of numpy's _lerp), 0.4 for 13, 0.3 for 15 and 0.0 for 21; n0 = 1 takes the top value alone
COUNTS = [
    (10, 10, 10, 10),
    (13, 5, 6, 7),
    (21, 3, 0, 9),
    (15, 2, 2, 15),
    (0, 4, 4, 4),
    (5, 5, 5, 0),
    (1, 1, 1, 1),
    (2, 0, 1, 3),
    (3, 2, 2, 1),
    (1, 3, 0, 4),
]


def sparse_metrics(x: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """block_metrics by the sparse path, however dense x is (with a few sentences, every active column is dense)."""
    return _sparse_block_metrics(positive_entries(x, most=1.0), labels, x.shape[1])


def reference(x: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """reference_feature of every column in float64; Cohen's d from the sums of squares, so that a label with one
    sentence adds 0 to the pooled variance (its ddof-1 variance is undefined, its sum of squares is 0)."""
    columns = []
    for f in range(x.shape[1]):
        values = x[:, f].astype(np.float64)
        metrics = reference_feature(values, labels)
        x3, x0 = values[labels == 3], values[labels == 0]
        if len(x3) and len(x0) and len(x3) + len(x0) > 2:
            squares = ((x3 - x3.mean()) ** 2).sum() + ((x0 - x0.mean()) ** 2).sum()
            sd = np.sqrt(squares / (len(x3) + len(x0) - 2))
            metrics["cohens_d_3v0"] = (x3.mean() - x0.mean()) / sd if sd > 0 else np.nan
        columns.append(metrics)
    return {name: np.array([column[name] for column in columns]) for name in METRICS}


def assert_metrics_equal(computed: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    """The EXACT metrics bit for bit (NaN where NaN), the others to the last few bits."""
    assert list(computed) == list(METRICS)
    for name in METRICS:
        assert computed[name].dtype == np.float64, name
        if name in EXACT:
            np.testing.assert_array_equal(computed[name], expected[name], err_msg=name)
        else:
            np.testing.assert_allclose(computed[name], expected[name], rtol=1e-9, atol=1e-12, err_msg=name)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # reference_feature's ddof-1 variance of one value
@pytest.mark.parametrize("counts", COUNTS, ids=["-".join(map(str, c)) for c in COUNTS])
def test_sparse_path_equals_a_per_feature_scipy_computation(counts):
    x, labels = sae_like(counts, seed=sum(counts))
    assert_metrics_equal(sparse_metrics(x, labels), reference(x, labels))


@pytest.mark.parametrize("counts", COUNTS, ids=["-".join(map(str, c)) for c in COUNTS])
def test_sparse_and_dense_paths_agree(counts):
    x, labels = sae_like(counts, seed=7 + sum(counts))
    assert_metrics_equal(sparse_metrics(x, labels), _dense_block_metrics(x, labels))


def test_sparse_and_dense_paths_agree_on_sae_sized_data():
    rng = np.random.default_rng(11)
    labels = rng.permutation(np.arange(400) % 4)
    x = np.where(rng.random((400, 600)) < 0.01, rng.exponential(1.0, (400, 600)), 0.0).astype(np.float32)
    x[:, rng.random(600) < 0.55] = 0.0
    assert positive_entries(x) is not None  # block_metrics takes the sparse path
    assert_metrics_equal(block_metrics(x, labels), _dense_block_metrics(x, labels))


def test_float64_input_sorts_another_way_to_the_same_metrics():
    x, labels = sae_like((10, 10, 10, 10), seed=3)
    assert positive_entries(x) is not None
    computed, from_float64 = block_metrics(x, labels), block_metrics(x.astype(np.float64), labels)
    for name in METRICS:
        np.testing.assert_array_equal(from_float64[name], computed[name], err_msg=name)


@pytest.mark.parametrize("case", ["negative entry", "more than a quarter positive"])
def test_data_that_is_not_mostly_zero_takes_the_dense_path_to_the_same_metrics(case):
    x, labels = sae_like((10, 10, 10, 10), seed=5)
    if case == "negative entry":
        x[4, 30] = -0.5
    else:
        x[:, 20:] = np.random.default_rng(5).exponential(1.0, (len(x), 20))
    assert positive_entries(x) is None
    assert_metrics_equal(block_metrics(x, labels), reference(x, labels))


def test_positive_entries_are_sorted_by_column_then_value():
    x, _ = sae_like((10, 10, 10, 10), seed=9)
    rows, cols, values = positive_entries(x)
    expected_rows, expected_cols = np.nonzero(x)
    order = np.lexsort((x[expected_rows, expected_cols], expected_cols))
    np.testing.assert_array_equal(rows, expected_rows[order])
    np.testing.assert_array_equal(cols, expected_cols[order])
    np.testing.assert_array_equal(values, x[rows, cols])
    x[0, 0] = np.nan
    assert positive_entries(x) is None


def test_a_view_of_some_columns_gives_what_a_copy_gives():
    x, labels = sae_like((10, 10, 10, 10), seed=4)
    view = x[:, 5:33]  # not contiguous, as analyze's feature blocks of a config are
    assert positive_entries(view) is not None
    computed, from_copy = block_metrics(view, labels), block_metrics(view.copy(), labels)
    for name in METRICS:
        np.testing.assert_array_equal(computed[name], from_copy[name], err_msg=name)
