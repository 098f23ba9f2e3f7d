"""`Analysis` and `Comparison`: the folders `analyze` and `compare` write, read back: their tables are the files', the
significant features those below the recorded alpha, the emergence Dataset what `saezarr.emergence` computes, the
plots the report's figures on matplotlib axes, and the HTML Jupyter shows the report's own summary card."""

from __future__ import annotations

import json
import re

import matplotlib
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from clitools import run_cli

import saezarr
from saezarr.analysis.headline import Headline
from saezarr.analysis.report.summary_card import summary_card
from saezarr.analysis.results import Analysis, Comparison
from saezarr.errors import InputError

matplotlib.use("Agg")
PROBE_PERMUTATIONS = "10"


@pytest.fixture(scope="module")
def folders(planted, tmp_path_factory):
    """Analyses of the planted and shuffled stores, one of the planted store without resampling, and a comparison."""
    root = tmp_path_factory.mktemp("results")
    runs = {
        "cued": (planted.cued,),
        "shuffled": (planted.shuffled,),
        "bare": (planted.cued, "--permutations", "0", "--folds", "0"),
    }
    for name, (store, *extra) in runs.items():
        result = run_cli(
            "analyze",
            store,
            "--output",
            root / name,
            "--quiet",
            "--probe-permutations",
            PROBE_PERMUTATIONS,
            *extra,
            env={"SAEZARR_CACHE": root / "cache"},
        )
        assert result.returncode == 0, result.stderr
    result = run_cli("compare", root / "cued", root / "shuffled", "--output", root / "compared")
    assert result.returncode == 0, result.stderr
    return root


def test_an_analysis_reads_its_folders_tables(folders):
    analysis = Analysis(folders / "cued")
    assert repr(analysis) == f"Analysis({str(folders / 'cued')!r})"
    assert analysis.info == json.loads((folders / "cued" / "analysis.json").read_text())
    pd.testing.assert_frame_equal(analysis.features, pd.read_parquet(folders / "cued" / "features.parquet"))
    pd.testing.assert_frame_equal(analysis.ranked, pd.read_csv(folders / "cued" / "ranked_features.csv"))
    pd.testing.assert_frame_equal(analysis.heldout, pd.read_csv(folders / "cued" / "heldout.csv"))
    assert analysis.report_path == folders / "cued" / "report.html" and analysis.report_path.is_file()


def test_significant_features_are_those_below_the_analysis_alpha(folders):
    cued, shuffled, bare = (Analysis(folders / name) for name in ("cued", "shuffled", "bare"))
    alpha = cued.info["permutation"]["alpha"]
    significant = cued.significant
    assert len(significant) == cued.info["significant_features"] == cued.headline.beat_chance > 0
    assert (significant.p_value_fwer <= alpha).all()
    assert len(significant) == (cued.features.p_value_fwer <= alpha).sum()
    assert significant.p_value_fwer.is_monotonic_increasing
    assert len(shuffled.significant) == shuffled.info["significant_features"] == 0
    assert bare.significant is None  # no permutation null: nothing can be said to beat chance


def test_emergence_is_the_dataset_saezarr_emergence_computes(planted, folders):
    ours = Analysis(folders / "cued").emergence
    expected = saezarr.emergence(saezarr.open_store(planted.cued), permutations=int(PROBE_PERMUTATIONS))
    assert list(ours.data_vars) == list(expected.data_vars) and ours.attrs["pool"] == "final"
    xr.testing.assert_allclose(ours, expected)
    assert Analysis(folders / "bare").emergence is None and Analysis(folders / "bare").heldout is None


def test_the_plots_are_the_reports_figures_on_matplotlib_axes(folders):
    import matplotlib.pyplot as plt

    analysis = Analysis(folders / "cued")
    ax = analysis.plot_emergence()
    assert ax.get_title(loc="left") == "Where the concept becomes linearly readable"
    assert len(ax.get_lines()) >= 4  # three curves at least, and the zero line
    fig, given = plt.subplots(1, 2)
    axes = analysis.plot_null(given)
    assert list(axes) == list(given)
    best = analysis.info["permutation"]["best"]["pearson"]
    assert f"best real {best:.3f}" in [text.get_text() for text in axes[0].get_legend().get_texts()]
    assert [a.get_xlabel() for a in axes] == ["Pearson correlation", "AUROC 3 vs 0"]
    plt.close("all")
    bare = Analysis(folders / "bare")
    with pytest.raises(InputError) as caught:
        bare.plot_null()
    assert str(caught.value) == f"{bare.folder}: the analysis has no permutation null (it was made with permutations=0)"
    with pytest.raises(InputError, match=r"has no emergence curves \(it was made with folds=0\)$"):
        bare.plot_emergence()


def test_jupyter_shows_the_reports_summary_card(folders):
    analysis = Analysis(folders / "cued")
    shown = analysis._repr_html_()
    card = summary_card(Headline.from_json(analysis.info["headline"]))
    assert card in (folders / "cued" / "report.html").read_text(encoding="utf-8") and shown.startswith(card)
    assert str(folders / "cued" / "report.html") in shown
    facts = dict(re.findall(r'<div class="szc-fact"><span>(.*?)</span><b>(.*?)</b></div>', shown))
    assert facts["beat chance"] == f"{len(analysis.significant):,} of {len(analysis.features):,}"
    assert facts["pass in-sample filter"] == f"{len(analysis.ranked):,}"
    assert analysis.headline == Headline.from_json(analysis.info["headline"])
    assert Analysis(folders / "bare").headline.beat_chance is None


def test_jupyter_shows_a_comparison_as_its_reports_header(folders):
    shown = Comparison(folders / "compared")._repr_html_()
    report = (folders / "compared" / "report.html").read_text(encoding="utf-8")
    assert re.search(r'<header class="top">.*?</header>', report, flags=re.DOTALL).group(0) in shown
    assert str(folders / "compared" / "report.html") in shown
    style = re.search(r"<style>(.*?)</style>", shown, flags=re.DOTALL).group(1)
    rules = re.findall(r"([^{}]+)\{[^{}]*\}", style)
    assert rules and all(rule.startswith(".saezarr-card") for rule in rules)  # the notebook keeps its own styles


def test_a_comparison_reads_its_folders_tables(folders):
    comparison = Comparison(folders / "compared")
    assert comparison.concepts == ["cued", "shuffled"]
    pd.testing.assert_frame_equal(comparison.features, pd.read_parquet(folders / "compared" / "features.parquet"))
    counted = pd.read_csv(folders / "compared" / "concept_features.csv")
    pd.testing.assert_frame_equal(comparison.concept_features, counted)
    assert len(counted) and set(comparison.emergence.concept) == {"cued", "shuffled"}
    np.testing.assert_array_equal(comparison.features.pearson_cued, Analysis(folders / "cued").features.pearson_corr)


def test_a_folder_of_something_else_is_refused_in_one_line(folders, tmp_path):
    with pytest.raises(InputError) as caught:
        Analysis(tmp_path)
    assert str(caught.value) == f"{tmp_path}: not a saezarr analyze output (no analysis.json and features.parquet)"
    with pytest.raises(InputError) as caught:
        Comparison(folders / "cued")
    assert str(caught.value) == (
        f"{folders / 'cued'}: not a saezarr compare output (no comparison.json and features.parquet)"
    )
