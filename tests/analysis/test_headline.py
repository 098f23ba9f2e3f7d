"""The headline: analyze's summary line, the report's summary card and analysis.json say one thing, from one record,
leading with what survives chance; on planted labels a feature beats chance, on shuffled ones none does, and without
a null nothing is claimed."""

from __future__ import annotations

import html
import json
import re

import numpy as np
import pandas as pd
import pytest
from clitools import run_main

CARD = re.compile(
    r'<div class="szc szc-(?P<state>\w+)"><p class="szc-verdict">(?P<verdict>.*?)</p>'
    r'<div class="szc-facts">(?P<facts>(?:<div class="szc-fact">.*?</div>)*)</div>'
)
FACT = re.compile(r'<div class="szc-fact"><span>(.*?)</span><b>(.*?)</b></div>')


def _card(report: str) -> tuple[str, str, dict[str, str]]:
    """The summary card of a report page: its state (some, none, untested), its sentence and its facts, as text."""
    matches = list(CARD.finditer(report))
    assert len(matches) == 1, "the page has one summary card"
    card = matches[0]
    verdict = html.unescape(re.sub(r"<[^>]+>", "", card["verdict"]))
    facts = {html.unescape(k): html.unescape(v) for k, v in FACT.findall(card["facts"])}
    return card["state"], verdict, facts


def _analyze(store, folder, *extra) -> tuple[str, dict, pd.DataFrame, tuple[str, str, dict[str, str]]]:
    """analyze's stdout, analysis.json, features.parquet and the report's card."""
    out = folder / "out"
    result = run_main(
        "analyze", store, "--output", out, "--quiet", "--probe-permutations", "5", *extra,
        env={"SAEZARR_CACHE": folder / "cache"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    info = json.loads((out / "analysis.json").read_text())
    return result.stdout, info, pd.read_parquet(out / "features.parquet"), _card((out / "report.html").read_text())


def _tested(beat: int, info: dict) -> str:
    """The sentence of a tested analysis, from analysis.json's permutation part and counts."""
    permutation, counts = info["permutation"], info["counts"]
    return (
        f"{beat:,} of {counts['features']:,} features beat chance (FWER 0.05; best Pearson "
        f"{permutation['best']['pearson']:.2f}, chance {permutation['chance']['pearson']:.2f}); "
        f"{counts['passing']:,} pass the in-sample filter"
    )


def test_the_line_the_card_and_analysis_json_agree_on_the_demo(demo_analysis):
    folder, stdout = demo_analysis
    info = json.loads((folder / "analysis.json").read_text())
    headline, permutation = info["headline"], info["permutation"]
    features = pd.read_parquet(folder / "features.parquet")
    ranked = pd.read_csv(folder / "ranked_features.csv")
    # the record, recomputed from the files: beating chance is p_value_fwer <= alpha, and chance is the (1 - alpha)
    # quantile of the best Pearson correlation of any feature under permuted labels
    beat = int((features.p_value_fwer <= 0.05).sum())
    assert headline["beat_chance"] == beat == info["significant_features"] == permutation["significant_features"]
    assert headline["features"] == len(features) == info["counts"]["features"] == 6 * 512
    assert headline["passing"] == len(ranked) == int(features.passes_filter.sum()) == info["counts"]["passing"] > 0
    assert headline["best_pearson"] == features.pearson_corr.max()
    assert headline["chance_pearson"] == np.percentile(permutation["null_maxima"]["pearson"], 95)
    assert headline["permutations"] == 100 and headline["alpha"] == 0.05
    text = headline["text"]
    assert text == _tested(beat, info)
    # the line leads with it; the card says the same sentence, and counts as analysis.json does
    assert stdout.startswith(f"saezarr: {text}; analysed 6 configs x 512 features over 40 sentences (pool final)")
    assert stdout.count("\n") == 1
    state, verdict, facts = _card((folder / "report.html").read_text())
    assert verdict == f"{text[0].upper()}{text[1:]}."
    assert state == ("some" if beat else "none")
    assert facts == {
        "beat chance": f"{beat:,} of {len(features):,}",
        "best Pearson · chance": f"{headline['best_pearson']:.3f} · {headline['chance_pearson']:.3f}",
        "pass in-sample filter": f"{len(ranked):,}",
        "SAEs": "6",
        "sentences": "40",
    }


def test_on_shuffled_labels_the_line_says_no_feature_beats_chance(planted, tmp_path):
    stdout, info, features, (state, verdict, facts) = _analyze(planted.shuffled, tmp_path)
    permutation = info["permutation"]
    assert permutation["best"]["pearson"] < permutation["chance"]["pearson"]
    assert info["headline"]["beat_chance"] == 0 == (features.p_value_fwer <= 0.05).sum()
    assert stdout.startswith(f"saezarr: {_tested(0, info)}; analysed ")
    assert stdout.startswith(f"saezarr: 0 of {len(features):,} features beat chance (FWER 0.05; best Pearson ")
    assert state == "none" and facts["beat chance"] == f"0 of {len(features):,}"


def test_on_planted_labels_the_line_counts_the_features_that_beat_chance(planted, tmp_path):
    stdout, info, features, (state, verdict, facts) = _analyze(planted.cued, tmp_path)
    beat = int((features.p_value_fwer <= 0.05).sum())
    assert beat > 0 and info["headline"]["beat_chance"] == beat
    assert info["permutation"]["best"]["pearson"] > info["permutation"]["chance"]["pearson"]
    assert stdout.startswith(f"saezarr: {_tested(beat, info)}; analysed ")
    assert state == "some" and verdict.startswith(f"{beat:,} of {len(features):,} features beat chance (")


def test_without_a_null_nothing_is_claimed(planted, tmp_path):
    stdout, info, features, (state, verdict, facts) = _analyze(planted.cued, tmp_path, "--permutations", "0")
    passing = int(features.passes_filter.sum())
    assert stdout.startswith(
        "saezarr: no permutation null was computed (0 permutations), so nothing was tested against chance; "
        f"{passing:,} of {len(features):,} features pass the in-sample filter; analysed "
    )
    assert "beat chance" not in stdout
    assert info["headline"]["beat_chance"] is None and info["significant_features"] is None
    assert state == "untested" and facts["beat chance"] == "not tested" and "best Pearson · chance" not in facts


@pytest.mark.parametrize(("permutations", "said"), [("10", True), ("19", False)])
def test_too_few_permutations_to_reach_alpha_are_said(planted, tmp_path, permutations, said):
    stdout, info, features, _ = _analyze(planted.cued, tmp_path, "--permutations", permutations, "--folds", "0")
    line = stdout.splitlines()[0]
    assert ("; with 10 permutations no p-value can be <= 0.05: use 19 or more); " in line) is said
    if said:  # even the planted feature: its smallest possible p-value is 1/11
        assert features.p_value_fwer.min() == 1 / 11 and info["headline"]["beat_chance"] == 0
