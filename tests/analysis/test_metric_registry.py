"""The metric registry: every metric is the same by the dense and the sparse path, a record's all-zero value is what
its dense function gives, and a metric from a plugin outside saezarr runs through the real `analyze`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import toymetric
from analyzetools import reference_pooled, sae_like
from clitools import run_cli

from saezarr.analysis.stats.blocks import GROUPED, DenseBlock
from saezarr.analysis.stats.metrics import (
    LEGACY_NAN,
    METRICS,
    REGISTERED,
    _dense_block_metrics,
    _sparse_block_metrics,
    block_values,
)
from saezarr.analysis.stats.sparse import positive_entries

BUILT_IN = (
    "pearson_corr",
    "spearman_corr",
    *(f"mean_label_{k}" for k in range(4)),
    "monotonic",
    "separation_score",
    "threshold",
    "tpr",
    "fpr",
    "interpretability_score",
    "frac_active",
    *(f"frac_active_label_{k}" for k in range(4)),
    "max_activation",
    "auroc_3v0",
    "cohens_d_3v0",
)
CHECKED = (*REGISTERED, toymetric.metric)
# sentences per label 0, 1, 2, 3: balanced, unbalanced, without label 0, without label 3, one each, a single label 3
COUNTS = [(10, 10, 10, 10), (13, 5, 6, 7), (0, 4, 4, 4), (5, 5, 5, 0), (1, 1, 1, 1), (3, 2, 2, 1)]
LOOSE = ("--min-pearson", "0.1", "--min-tpr", "0.1", "--max-fpr", "0.5")  # the tiny random SAEs pass these


def test_the_built_in_metrics_keep_their_columns_in_their_order():
    assert METRICS == BUILT_IN
    assert LEGACY_NAN == (
        "pearson_corr",
        "spearman_corr",
        "separation_score",
        "threshold",
        "tpr",
        "fpr",
        "interpretability_score",
    )


@pytest.fixture(scope="module")
def samples() -> list[tuple[np.ndarray, np.ndarray]]:
    """Mostly-zero activations with all-zero, constant and single-positive columns and tied values, and labels."""
    rng = np.random.default_rng(5)
    labels = rng.permutation(np.arange(400) % 4)
    wide = np.where(rng.random((400, 300)) < 0.02, rng.exponential(1.0, (400, 300)), 0.0).astype(np.float32)
    return [*(sae_like(counts, seed) for seed, counts in enumerate(COUNTS)), (wide, labels)]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # a single sentence's ddof-1 variance
@pytest.mark.parametrize("metric", CHECKED, ids=[metric.name for metric in CHECKED])
def test_every_metric_is_the_same_by_the_dense_and_the_sparse_path(metric, samples):
    compared = 0
    for x, labels in samples:
        dense = _dense_block_metrics(x, labels, [metric])[metric.name]
        sparse = _sparse_block_metrics(positive_entries(x, most=1.0), labels, x.shape[1], [metric])[metric.name]
        np.testing.assert_allclose(sparse, dense, rtol=1e-9, atol=1e-12, err_msg=str(np.bincount(labels)))
        compared += np.count_nonzero(~np.isnan(dense))
    assert compared > 100


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("metric", CHECKED, ids=[metric.name for metric in CHECKED])
def test_every_metric_of_an_all_zero_feature_is_what_its_dense_function_gives(metric):
    for counts in COUNTS:
        labels = np.repeat(GROUPED, [counts[k] for k in GROUPED])  # grouped, as a DenseBlock's rows are
        zeros = np.zeros((len(labels), 3))
        filled = _dense_block_metrics(zeros, labels, [metric])[metric.name]  # skips the columns: the all-zero value
        computed = block_values(DenseBlock(zeros, labels), [metric])[metric.name]
        np.testing.assert_array_equal(filled, computed, err_msg=str(counts))


def write_plugin(folder: Path, entry: str) -> Path:
    """A folder holding toymetric.py as the module toyplugin and a dist-info with the `saezarr.metrics` entry."""
    folder.mkdir()
    shutil.copy(Path(toymetric.__file__), folder / "toyplugin.py")
    info = folder / "toyplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toyplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[saezarr.metrics]\n{entry}\n")
    return folder


def analyze(store: Path, output: Path, cache: Path, plugin: Path | None = None):
    """Run `saezarr analyze` with loose thresholds, the plugin's folder first on PYTHONPATH if given."""
    env = {"SAEZARR_CACHE": str(cache)}
    if plugin is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(plugin), os.environ.get("PYTHONPATH")]))
    return run_cli("analyze", store, "--output", output, "--quiet", *LOOSE, env=env)


@pytest.fixture(scope="module")
def store(cli_store) -> Path:
    """`saezarr build` of the tiny model and the demo CSV, every option its default (tests/conftest.py): read only."""
    return cli_store


def test_a_plugin_metric_runs_through_analyze_after_the_built_ins(store, tmp_path):
    plugin = write_plugin(tmp_path / "plugin", f"{toymetric.NAME} = toyplugin:metric")
    # one cache: the run with the plugin must not take the plain run's metrics for its own
    plain = analyze(store, tmp_path / "plain", tmp_path / "cache")
    assert plain.returncode == 0, plain.stderr
    extended = analyze(store, tmp_path / "extended", tmp_path / "cache", plugin)
    assert extended.returncode == 0, extended.stderr

    features = pd.read_parquet(tmp_path / "extended" / "features.parquet")
    columns = list(features.columns)
    assert columns[columns.index("cohens_d_3v0") + 1 : columns.index("passes_filter")] == [toymetric.NAME]
    pooled, labels, _ = reference_pooled(store, "final")
    expected = (pooled[:, labels == 3] > 0).sum(axis=1) - (pooled[:, labels == 0] > 0).sum(axis=1)
    assert expected.any()
    np.testing.assert_array_equal(features[toymetric.NAME].to_numpy(), expected.ravel().astype(np.float64))
    # the built-in columns as without the plugin
    pd.testing.assert_frame_equal(
        features.drop(columns=toymetric.NAME), pd.read_parquet(tmp_path / "plain" / "features.parquet")
    )
    ranked = pd.read_csv(tmp_path / "extended" / "ranked_features.csv")
    assert len(ranked) and toymetric.NAME in ranked.columns
    pd.testing.assert_frame_equal(
        ranked.drop(columns=toymetric.NAME), pd.read_csv(tmp_path / "plain" / "ranked_features.csv")
    )


def test_a_plugin_metric_under_a_name_not_its_own_is_refused(store, tmp_path):
    plugin = write_plugin(tmp_path / "plugin", "renamed = toyplugin:metric")
    result = analyze(store, tmp_path / "out", tmp_path / "cache", plugin)
    assert result.returncode != 0
    assert "metric 'renamed'" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()
