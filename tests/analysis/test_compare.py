"""`saezarr compare`: per-feature scores per concept and specificity, specific vs shared features, emergence by
concept; analyses of other models or SAE sets refused in one line; only folders compare wrote are replaced."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from clitools import run_main


@pytest.fixture(scope="module")
def analyses(planted, tmp_path_factory):
    folder = tmp_path_factory.mktemp("compare")
    out = {}
    for name, store in (("cued", planted.cued), ("shuffled", planted.shuffled)):
        out[name] = folder / f"analysis-{name}"
        result = run_main(
            "analyze",
            store,
            "--output",
            out[name],
            "--quiet",
            "--probe-permutations",
            "5",
            env={"SAEZARR_CACHE": folder / "cache"},
        )
        assert result.returncode == 0, result.stderr
    return out


def _compare(*args):
    return run_main("compare", *args)


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_compare_scores_each_feature_per_concept(analyses, tmp_path):
    result = _compare(analyses["cued"], analyses["shuffled"], "--output", tmp_path / "cmp")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "cmp"
    scores = pd.read_parquet(out / "features.parquet")
    cued = pd.read_parquet(analyses["cued"] / "features.parquet")
    shuffled = pd.read_parquet(analyses["shuffled"] / "features.parquet")
    np.testing.assert_array_equal(scores.pearson_cued, cued.pearson_corr)
    np.testing.assert_array_equal(scores.pearson_shuffled, shuffled.pearson_corr)
    both = np.column_stack([cued.pearson_corr, shuffled.pearson_corr])
    ok = ~np.isnan(both).any(axis=1)
    np.testing.assert_allclose(scores.specificity[ok], np.abs(both[ok, 0] - both[ok, 1]))
    assert (scores.best_concept[ok] == np.where(both[ok, 0] >= both[ok, 1], "cued", "shuffled")).all()
    counted = pd.read_csv(out / "concept_features.csv")
    significant = cued.p_value_fwer < 0.05
    assert len(counted) == significant.sum() > 0  # the shuffled labels have none: every one is specific to cued
    assert (counted.kind == "specific").all() and (counted.concepts == "cued").all()
    info = json.loads((out / "comparison.json").read_text())
    assert [c["concept"] for c in info["concepts"]] == ["cued", "shuffled"] and info["specific"] == len(counted)
    emergence = pd.read_csv(out / "emergence.csv")
    assert emergence.concept.unique().tolist() == ["cued", "shuffled"]
    report = (out / "report.html").read_text()
    assert "Specific and shared features" in report and "Emergence by concept" in report
    assert (out / ".saezarr-compare").is_file()


def test_the_same_concept_twice_is_shared(analyses, tmp_path):
    twin = tmp_path / "twin"
    shutil.copytree(analyses["cued"], twin)
    result = _compare(analyses["cued"], twin, "--output", tmp_path / "cmp")
    assert result.returncode == 0, result.stderr
    counted = pd.read_csv(tmp_path / "cmp" / "concept_features.csv")
    assert len(counted) and (counted.kind == "shared").all() and (counted.specificity == 0).all()


def test_analyses_of_another_model_are_refused_in_one_line(analyses, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(analyses["shuffled"], other)
    info = json.loads((other / "analysis.json").read_text())
    info["model"] = "google/gemma-2-9b"
    (other / "analysis.json").write_text(json.dumps(info))
    result = _compare(analyses["cued"], other, "--output", tmp_path / "cmp")
    assert result.returncode == 2
    assert "compare analyses of one model and one set of SAEs" in result.stderr and "gemma-2-9b" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "cmp").exists()


def test_analyses_of_other_saes_are_refused_in_one_line(analyses, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(analyses["shuffled"], other)
    features = pd.read_parquet(other / "features.parquet")
    features[features.layer == 0].to_parquet(other / "features.parquet", index=False)
    result = _compare(analyses["cued"], other, "--output", tmp_path / "cmp")
    assert result.returncode == 2 and "analyses other SAEs or features" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "cmp").exists()


def test_only_a_folder_compare_wrote_is_replaced(analyses, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    for extra in ([], ["--overwrite"]):
        result = _compare(analyses["cued"], analyses["shuffled"], "--output", mine, *extra)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
        assert _snapshot(mine) == {mine.relative_to(mine) / "notes.txt": b"keep"}
    assert "not written by saezarr compare" in result.stderr
    out = tmp_path / "cmp"
    assert _compare(analyses["cued"], analyses["shuffled"], "--output", out).returncode == 0
    before = _snapshot(out)
    assert _compare(analyses["cued"], analyses["shuffled"], "--output", out).returncode == 2
    assert _snapshot(out) == before
    assert _compare(analyses["shuffled"], analyses["cued"], "--output", out, "--overwrite").returncode == 0
    assert pd.read_csv(out / "emergence.csv").concept.unique().tolist() == ["shuffled", "cued"]


def test_a_folder_that_is_not_an_analysis_is_refused(analyses, tmp_path):
    result = _compare(analyses["cued"], tmp_path, "--output", tmp_path / "cmp")
    assert result.returncode == 2 and "not a saezarr analyze output" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
