"""The resampling's building blocks against plain numpy, scipy and scikit-learn: the ridge probe on narrow and wide
inputs, sparse matrices read in column blocks, statistics of a subset of rows, column gathers, and the analysis
threads' single-threaded BLAS."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from saezarr.analysis.stats.features import FeatureMatrix
from saezarr.analysis.stats.probes import ALPHAS, ridge_predictions, standardised
from saezarr.analysis.stats.sparse import average_ranks
from saezarr.execution.running import map_in_threads
from saezarr.machine import usable_cores


def _sparse(rng: np.random.Generator, shape: tuple[int, int], density: float = 0.1) -> np.ndarray:
    x = np.where(rng.random(shape) < density, rng.gamma(2.0, 1.0, shape), 0.0).astype(np.float32)
    x[:, 3] = 0.0  # silent
    x[:, 5] = 1.5  # constant and positive
    return x


@pytest.mark.parametrize("features", [1, 7, 30, 90])  # fewer than the 50 training rows, then more
def test_ridge_on_narrow_and_wide_inputs_equals_ridgecv(features):
    from sklearn.linear_model import RidgeCV

    rng = np.random.default_rng(features)
    x = rng.standard_normal((3, 70, features))
    if features > 2:
        x[:, :, 1] = x[:, :, 0]  # a duplicated column: rank-deficient
    y = x[:, :, :1] @ rng.standard_normal((1, 2)) + rng.standard_normal((3, 70, 2))
    train, test = standardised(x[:, :50], x[:, 50:])
    got = ridge_predictions(train, y[:, :50], test)
    for problem in range(3):
        for target in range(2):
            fitted = RidgeCV(alphas=ALPHAS).fit(train[problem], y[problem, :50, target])
            np.testing.assert_allclose(got[problem, :, target], fitted.predict(test[problem]), rtol=1e-9, atol=1e-9)


def test_a_matrix_read_in_column_blocks_equals_the_whole_array():
    x = _sparse(np.random.default_rng(0), (40, 90))
    whole = FeatureMatrix.of(x)
    blocks = FeatureMatrix.of_blocks([x[:, :32], x[:, 32:64], x[:, 64:]])
    assert whole.positives is not None and blocks.shape == whole.shape
    for got, want in zip(blocks.positives, whole.positives):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("spoil", ["negative", "dense"])
def test_blocks_that_are_not_mostly_positive_zeros_give_a_dense_matrix(spoil):
    x = _sparse(np.random.default_rng(1), (40, 90)).astype(np.float64)
    if spoil == "negative":
        x[7, 70] = -1.0
    else:
        x[:, 40:] = 1.0 + np.arange(50)
    matrix = FeatureMatrix.of_blocks([x[:, :32], x[:, 32:64], x[:, 64:]])
    assert matrix.positives is None
    np.testing.assert_array_equal(matrix.toarray(), x)


@pytest.mark.parametrize("form", ["sparse", "dense"])
def test_spread_of_some_rows_equals_numpy_on_those_rows(form):
    rng = np.random.default_rng(2)
    x = _sparse(rng, (40, 30)).astype(np.float64)
    if form == "dense":
        x[:, 10] = -rng.random(40)
    matrix = FeatureMatrix.of(x)
    assert (matrix.positives is None) == (form == "dense")
    keep = rng.random(40) < 0.7
    x[:, 12] = np.where(keep, 0.0, 9.0)  # varies only on rows left out: constant on the kept ones
    matrix = FeatureMatrix.of(x)
    for rows, mask in ((x, None), (x[keep], keep)):
        constant, squares = matrix.spread(mask)
        np.testing.assert_array_equal(constant, rows.max(axis=0) == rows.min(axis=0))
        np.testing.assert_allclose(squares, ((rows - rows.mean(axis=0)) ** 2).sum(axis=0), rtol=1e-12, atol=1e-12)
    assert matrix.spread(keep)[0][12] and not matrix.spread()[0][12]


def test_columns_gathered_in_any_order_and_repeated_equal_the_array():
    x = _sparse(np.random.default_rng(3), (25, 40))
    which = np.array([39, 3, 0, 17, 3, 5, 39, 22])
    np.testing.assert_array_equal(FeatureMatrix.of(x).columns(which), x[:, which].astype(np.float64))
    assert FeatureMatrix.of(x).columns(np.array([], dtype=np.int64)).shape == (25, 0)


def test_analysis_threads_run_their_blas_on_one_thread_each_and_give_it_back():
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads(_: int) -> list[int]:
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    with threadpool_limits(limits=2, user_api="blas"):  # as on a host of several cores (the suite sets one thread)
        before = blas_threads(0)
        assert before and all(threads == 2 for threads in before), "numpy's BLAS is not visible to threadpoolctl"
        inside = list(map_in_threads(blas_threads, range(4)))
        assert len(inside) == 4
        expected = [1] * len(before) if usable_cores() > 1 else before
        assert all(threads == expected for threads in inside)
        assert blas_threads(0) == before
    assert list(map_in_threads(lambda item: item * item, range(10))) == [i * i for i in range(10)]


def test_average_ranks_equal_scipy_rankdata_with_ties_infinities_and_nan():
    from scipy.stats import rankdata

    rng = np.random.default_rng(4)
    for trial in range(60):
        x = rng.integers(-3, 4, (int(rng.integers(1, 30)), int(rng.integers(1, 6)))).astype(np.float64)
        x[rng.integers(len(x)), rng.integers(x.shape[1])] = (np.nan, np.inf, -np.inf, 0.0)[trial % 4]
        np.testing.assert_array_equal(average_ranks(x), rankdata(x, axis=0))


def test_the_resampling_of_a_small_analysis_never_imports_scipy_stats():
    """Its import (about 1 s) would be most of the resampling's cost on a few SAEs."""
    script = (
        "import sys, numpy as np\n"
        "from saezarr.analysis.emergence import emergence_rows\n"
        "from saezarr.analysis.stats.features import FeatureMatrix\n"
        "from saezarr.analysis.stats.permutation import Permutations, null_maxima\n"
        "rng = np.random.default_rng(0)\n"
        "labels = np.arange(40) % 4\n"
        "x = np.where(rng.random((40, 50)) < 0.2, rng.random((40, 50)), 0.0)\n"
        "matrix = FeatureMatrix.of(x)\n"
        "null_maxima(matrix, labels, Permutations.draw(labels, 5, 0))\n"
        "rows = emergence_rows([(3, 'r')], {(3, 'r'): matrix}, {(3, 'r'): rng.standard_normal((40, 6))}, labels, labels % 2,\n"
        "                      Permutations.draw(labels, 3, 0).all)\n"
        "assert rows[0]['probe_heldout_spearman'] is not None\n"
        "sys.exit(3 if 'scipy.stats' in sys.modules else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
