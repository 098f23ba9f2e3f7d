"""Token traces: the top features' activations token by token through a sentence, from Python and in the report."""

from __future__ import annotations

import html
import re

import matplotlib
import numpy as np
import pytest

import saezarr
from saezarr import cli
from saezarr.analysis.examples import TRACE_FEATURES
from saezarr.analysis.run import AnalyzeOptions, analyze
from saezarr.errors import SaezarrError

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def store(tmp_path_factory, demo_config):
    path = tmp_path_factory.mktemp("traces") / "demo.zarr"
    args = ["build", "--demo", "--config", str(demo_config), "--output", str(path), "--quiet"]
    assert cli.main(args) == 0
    return path


def test_token_traces_are_the_stores_activations_token_by_token(store):
    ds = saezarr.open_store(store)
    traces = saezarr.token_traces(ds, 7, "layer_2_l0_24", [3, 99, 400])
    rows = np.flatnonzero(ds.sentence_index.values == 7)
    assert traces.dims == ("feature", "token")
    assert traces.feature.values.tolist() == [3, 99, 400]
    expected = ds.activations.sel(config="layer_2_l0_24").values[rows][:, [3, 99, 400]].T
    np.testing.assert_array_equal(traces.values, expected)
    assert "".join(traces.token.values.tolist()) == str(ds.fragment_text.values[rows[-1]])
    np.testing.assert_array_equal(traces.token_position.values, ds.token_position.values[rows])
    ax = saezarr.plot_token_traces(traces)
    assert len(ax.get_lines()) == 3
    assert [t.get_text() for t in ax.get_xticklabels()] == [t.strip() or "␣" for t in traces.token.values]


def test_unknown_sentence_or_config_is_one_line(store):
    ds = saezarr.open_store(store)
    with pytest.raises(SaezarrError, match="sentence_index 400: no such sentence"):
        saezarr.token_traces(ds, 400, "layer_2_l0_24", [0])
    with pytest.raises(SaezarrError, match="config 'layer_9_l0_1': not in the store"):
        saezarr.token_traces(ds, 0, "layer_9_l0_1", [0])


def test_the_report_draws_the_top_features_through_each_labels_example(store, tmp_path):
    out = tmp_path / "analysis"
    options = AnalyzeOptions(
        store=store, output=out, min_pearson=0.2, min_tpr=0.2, max_fpr=0.3, top_n=10, quiet=True, cache=tmp_path / "c"
    )
    analyze(options)
    page = (out / "report.html").read_text()
    section = page[page.index('<section id="traces">') :]
    figures = section.split('<figure class="trace">')[1:]
    assert len(figures) == 4  # the #1 feature's top example of labels 3, 2, 1, 0 (all distinct here)
    assert [re.search(r'chip l(\d)"', f).group(1) for f in figures] == ["3", "2", "1", "0"]
    ds = saezarr.open_store(store)
    import pandas as pd

    ranked = pd.read_csv(out / "ranked_features.csv").head(TRACE_FEATURES)
    for figure in figures:
        sentence = int(re.search(r"</span> sentence (\d+):", figure).group(1))
        assert figure.count("<polyline") == len(ranked)
        rows = np.flatnonzero(ds.sentence_index.values == sentence)
        titles = [html.unescape(t) for t in re.findall(r"<title>([^<]*)</title>", figure)]
        for j, row in enumerate(ranked.itertuples()):
            values = ds.activations.sel(config=row.config).values[rows, row.feature_id]
            shown = titles[j * len(rows) : (j + 1) * len(rows)]
            assert [float(t.rsplit(": ", 1)[1]) for t in shown] == [float(f"{v:.4g}") for v in values]
    import json

    examples = json.loads((out / "feature_examples.json").read_text())
    assert all(key.startswith("layer_") for key in examples)  # the legacy file holds features only
