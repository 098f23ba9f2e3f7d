"""`python -m saezarr analyze`: the legacy file layouts, Neuronpedia links, the cache, and every bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import zarr
from analyzetools import SOURCES, build_store, csv_without, dead_pid, strip_neuronpedia
from clitools import run_cli

import saezarr
from saezarr.analysis.outputs import LEGACY_COLUMNS

LOOSE = ("--min-pearson", "0.1", "--min-tpr", "0.1", "--max-fpr", "0.5")  # the tiny random SAEs pass these


@pytest.fixture(scope="module")
def store(linked_store_chunk7):
    """`saezarr build` of the tiny model (its SAEs' Neuronpedia sources named) and the demo CSV in chunks of 7
    fragments (tests/conftest.py): read only, a test that changes it copies it."""
    return linked_store_chunk7


def analyze(store, output, *args, cache):
    return run_cli("analyze", store, "--output", output, "--quiet", *args, env={"SAEZARR_CACHE": str(cache)})


@pytest.fixture(scope="module")
def analysed(store, tmp_path_factory):
    folder = tmp_path_factory.mktemp("analysed")
    result = analyze(store, folder / "out", *LOOSE, "--top-n", "4", "--examples-per-label", "2", cache=folder / "cache")
    assert result.returncode == 0, result.stderr
    return folder / "out", folder / "cache", result


def test_outputs_have_the_legacy_layout(analysed, store):
    out, _, result = analysed
    assert sorted(p.name for p in out.iterdir()) == [
        "analysis.json",
        "emergence.csv",
        "feature_examples.json",
        "features.parquet",
        "heldout.csv",
        "plots",
        "ranked_features.csv",
        "report.html",
    ]
    assert "cached activations and metrics reused" not in result.stdout
    features = pd.read_parquet(out / "features.parquet")
    assert len(features) == 6 * 128
    assert list(features.columns[:4]) == ["config", "layer", "average_l0", "feature_id"]
    assert features.config.dtype == object or pd.api.types.is_string_dtype(features.config.dtype)  # not categorical
    assert not isinstance(features.config.dtype, pd.CategoricalDtype)
    assert [str(features[c].dtype) for c in ("layer", "average_l0", "feature_id", "passes_filter")] == [
        "int64",
        "int64",
        "int64",
        "bool",
    ]
    assert features.groupby("config", sort=False).feature_id.apply(list).map(lambda ids: ids == list(range(128))).all()
    metrics = saezarr.feature_metrics(saezarr.open_store(store)).compute()
    np.testing.assert_array_equal(features.pearson_corr.to_numpy(), metrics.pearson_corr.values.ravel())
    ranked = pd.read_csv(out / "ranked_features.csv", keep_default_na=False)
    assert (
        tuple(ranked.columns[: len(LEGACY_COLUMNS)]) == LEGACY_COLUMNS
        and ranked.columns[len(LEGACY_COLUMNS)] == "config"
    )
    passing = features[features.passes_filter]
    assert len(ranked) == len(passing) > 4
    assert ranked["rank"].tolist() == list(range(1, len(ranked) + 1))
    assert (np.diff(ranked.interpretability_score) <= 0).all()
    assert (ranked.pearson_corr >= 0.1).all() and (ranked.tpr >= 0.1).all() and (ranked.fpr <= 0.5).all()
    assert ranked.monotonic.all()
    examples = json.loads((out / "feature_examples.json").read_text())
    assert len(examples) == 4
    for (key, entry), row in zip(examples.items(), ranked.head(4).itertuples()):
        assert key == f"layer_{row.layer}_l0_{float(row.average_l0)}_feature_{row.feature_id}"
        assert list(entry)[:10] == [
            "rank",
            "layer",
            "average_l0",
            "feature_id",
            "neuronpedia_url",
            "interpretability_score",
            "pearson_correlation",
            "tpr",
            "fpr",
            "config",
        ]
        assert entry["pearson_correlation"] == pytest.approx(row.pearson_corr)
        assert sorted(entry["examples_by_label"]) == ["0", "1", "2", "3"]
        for _label, picks in entry["examples_by_label"].items():
            assert len(picks) == 2
            assert picks[0]["activation"] >= picks[1]["activation"]
            for pick in picks:
                text = "".join(token["text"] for token in pick["tokens"])
                assert text.strip() == pick["sentence"].strip()
                assert max(t["activation"] for t in pick["tokens"]) >= 0
                assert pick["tokens"][-1]["activation"] == pytest.approx(pick["activation"])  # final pool = last token
    info = json.loads((out / "analysis.json").read_text())
    assert info["counts"] == {
        "configs": 6,
        "features": 768,
        "sentences": 40,
        "sentences_by_label": {"0": 10, "1": 10, "2": 10, "3": 10},
        "passing": len(ranked),
    }
    assert info["pool"] == "final" and info["thresholds"] == {"min_pearson": 0.1, "min_tpr": 0.1, "max_fpr": 0.5}
    assert info["token_shading"] is True
    assert info["notes"] == [
        "4 of 6 SAEs have no published Neuronpedia source, so their features have no link "
        "(layer_0_l0_6, layer_0_l0_20, layer_25_l0_6, layer_25_l0_20)"
    ]


def test_examples_are_the_top_sentences_by_pooled_activation(analysed, store):
    out, _, _ = analysed
    ds = saezarr.open_store(store)
    final = ds.isel(fragment=np.flatnonzero(ds.is_final_token.values))
    examples = json.loads((out / "feature_examples.json").read_text())
    for entry in examples.values():
        values = final.activations.sel(config=entry["config"], feature=entry["feature_id"]).values
        for label, picks in entry["examples_by_label"].items():
            mine = np.sort(values[final.concept_strength_label.values == int(label)])[::-1][:2]
            assert [p["activation"] for p in picks] == pytest.approx(mine.tolist())


def test_links_point_at_the_exact_sae_or_nowhere(analysed):
    features = pd.read_parquet(analysed[0] / "features.parquet")
    for config, group in features.groupby("config"):
        source = SOURCES.get(config)
        expected = [f"https://www.neuronpedia.org/{source}/{f}" if source else "" for f in group.feature_id]
        assert group.neuronpedia_url.tolist() == expected
    # the canonical and the published variant of layer 12 never share a page
    urls = features[features.layer == 12].groupby("config").neuronpedia_url.first()
    assert urls["layer_12_l0_6"].endswith("12-res-16k/0") and urls["layer_12_l0_20"].endswith("12-res-16k__l0-20/0")


def test_rerun_with_other_thresholds_reuses_the_cache(analysed, store, tmp_path):
    out, cache, _ = analysed

    def cached_data() -> dict:  # the activations and metrics (the plots folder may gain another plot, resampling
        # another threshold's held-out choices)
        return {
            p: p.stat().st_mtime_ns
            for p in cache.rglob("*")
            if p.is_file() and "plots" not in p.parts and "resampling" not in p.parts
        }

    before = cached_data()
    assert any(p.name == "metrics.npy" for p in before)
    result = analyze(
        store, tmp_path / "again", "--min-pearson", "0.3", "--top-n", "2", "--examples-per-label", "1", cache=cache
    )
    assert result.returncode == 0, result.stderr
    assert "cached activations and metrics reused" in result.stdout
    assert cached_data() == before
    ranked = pd.read_csv(tmp_path / "again" / "ranked_features.csv")
    assert (ranked.pearson_corr >= 0.3).all() and len(
        json.loads((tmp_path / "again" / "feature_examples.json").read_text())
    ) == min(2, len(ranked))
    first = pd.read_parquet(out / "features.parquet")
    second = pd.read_parquet(tmp_path / "again" / "features.parquet")
    pd.testing.assert_frame_equal(first.drop(columns="passes_filter"), second.drop(columns="passes_filter"))


def test_a_rerun_with_other_thresholds_takes_its_overview_plot_from_the_cache(analysed, store, tmp_path):
    # the map shows nothing that depends on the thresholds: a re-run need not import matplotlib to draw it again
    out, cache, _ = analysed
    others = ("--min-pearson", "0.25", "--min-tpr", "0.2", "--max-fpr", "0.4")
    for name, thresholds in (("other", others), ("strict", ("--min-pearson", "0.99"))):  # strict: nothing passes
        argv = ["analyze", str(store), "--output", str(tmp_path / name), "--quiet", *thresholds, "--top-n", "1"]
        code = (
            f"import sys, saezarr.cli; code = saezarr.cli.main({argv!r}); "
            "sys.exit(code or (3 if 'matplotlib' in sys.modules else 0))"
        )
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={**os.environ, "SAEZARR_CACHE": str(cache)},
        )
        assert result.returncode == 0, result.stderr  # 3: matplotlib was imported to draw the plot again
        assert (tmp_path / name / "plots" / "overview.png").read_bytes() == (
            out / "plots" / "overview.png"
        ).read_bytes()


def test_a_changed_store_or_other_pool_is_not_served_from_the_cache(tiny, tmp_path):
    store = build_store(tmp_path, tiny.config_file, tiny.csv, "--configs", "layer_0_l0_6", "--fragments", "word")
    cache = tmp_path / "cache"
    assert analyze(store, tmp_path / "a", cache=cache).returncode == 0
    result = analyze(store, tmp_path / "b", "--pool", "max", cache=cache)
    assert result.returncode == 0 and "reused" not in result.stdout
    shard = next(p for p in (store / "activations").rglob("*") if p.is_file() and p.name != "zarr.json")
    shard.touch()
    result = analyze(store, tmp_path / "c", cache=cache)
    assert result.returncode == 0 and "reused" not in result.stdout
    assert len([p for p in (cache / "analysis").iterdir() if p.name != ".leases"]) == 3


def test_max_pool_and_final_fragment_store(tiny, tmp_path):
    store = build_store(tmp_path, tiny.config_file, tiny.csv, "--configs", "layer_25_l0_20", "--fragments", "final")
    result = analyze(store, tmp_path / "out", "--pool", "max", *LOOSE, cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    info = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert info["fragments"] == "final" and info["token_shading"] is False and info["pool"] == "max"
    for entry in json.loads((tmp_path / "out" / "feature_examples.json").read_text()).values():
        assert all(p["tokens"] is None for picks in entry["examples_by_label"].values() for p in picks)


def test_missing_label_is_said_once_and_nothing_passes(tiny, tmp_path):
    store = build_store(
        tmp_path, tiny.config_file, csv_without(tmp_path, 3), "--configs", "layer_12_l0_6", "--fragments", "final"
    )
    result = analyze(store, tmp_path / "out", *LOOSE, cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if "label-3" in line]
    assert len(notes) == 1 and "pearson_corr" in notes[0] and "NaN" in notes[0]
    assert pd.read_csv(tmp_path / "out" / "ranked_features.csv").empty
    assert json.loads((tmp_path / "out" / "feature_examples.json").read_text()) == {}
    assert json.loads((tmp_path / "out" / "analysis.json").read_text())["notes"][0] == notes[0].split("note: ", 1)[1]


def test_a_store_from_before_links_says_why_they_are_empty(store, tmp_path):
    old = tmp_path / "old.zarr"
    shutil.copytree(store, old)
    strip_neuronpedia(old)
    result = analyze(old, tmp_path / "out", "--configs", "layer_12_l0_6", cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert (pd.read_parquet(tmp_path / "out" / "features.parquet").neuronpedia_url == "").all()
    notes = json.loads((tmp_path / "out" / "analysis.json").read_text())["notes"]
    assert len(notes) == 1 and "built before" in notes[0] and result.stderr.count("built before") == 1


@pytest.fixture
def unfinished(store, tmp_path):
    copy = tmp_path / "unfinished.zarr"
    shutil.copytree(store, copy)
    (copy / "_saezarr" / "done" / "layer_0_l0_6" / "2").unlink()
    return copy


def test_allow_partial_analyses_the_finished_configs(unfinished, tmp_path):
    result = analyze(unfinished, tmp_path / "out", "--allow-partial", cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    features = pd.read_parquet(tmp_path / "out" / "features.parquet")
    assert "layer_0_l0_6" not in set(features.config) and features.config.nunique() == 5


def test_overwrite_replaces_an_existing_output(analysed, store, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(analysed[0], out)  # an earlier analysis: analyze wrote it, so --overwrite may replace it
    result = analyze(store, out, "--overwrite", "--configs", "layer_25_l0_6", cache=analysed[1])
    assert result.returncode == 0, result.stderr
    assert set(pd.read_parquet(out / "features.parquet").config) == {"layer_25_l0_6"}


BAD = [
    (lambda s, t: [t], "not a saezarr store"),
    (lambda s, t: [s, "--configs", "layer_12_l0_7"], "--configs: the store has no config 'layer_12_l0_7'"),
    (lambda s, t: [s, "--layers", "5"], "--layers: the store has no config on layer 5"),
    (lambda s, t: [s, "--min-pearson", "1.5"], "--min-pearson: expected a number from -1 to 1, got 1.5"),
    (lambda s, t: [s, "--min-tpr", "-0.1"], "--min-tpr: expected a number from 0 to 1, got -0.1"),
    (lambda s, t: [s, "--max-fpr", "nan"], "--max-fpr: expected a number from 0 to 1, got nan"),
    (lambda s, t: [s, "--top-n", "0"], "--top-n: expected a positive integer, got '0'"),
    (lambda s, t: [s, "--examples-per-label", "-2"], "--examples-per-label: expected a positive integer"),
    (lambda s, t: [s, "--pool", "median"], "argument --pool: invalid choice: 'median'"),
]


@pytest.mark.parametrize("args, message", BAD)
def test_bad_input_is_one_line_and_writes_nothing(store, tmp_path, args, message):
    (tmp_path / "plain").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_cli(
        "analyze",
        *args(store, tmp_path / "plain"),
        "--output",
        tmp_path / "out",
        env={"SAEZARR_CACHE": str(tmp_path / "cache")},
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_unfinished_configs_are_named_with_done_and_total(unfinished, tmp_path):
    result = analyze(unfinished, tmp_path / "out", cache=tmp_path / "cache")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    total = -(-zarr.open_array(unfinished / "activations").shape[1] // 7)
    assert f"unfinished for layer_0_l0_6 ({total - 1}/{total} chunks)" in result.stderr, result.stderr
    assert "--allow-partial" in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("damage", ["truncated", "bit flip"])
def test_a_damaged_shard_is_one_line_and_leaves_outputs_and_cache_alone(store, tmp_path, damage):
    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(store, damaged)
    names = json.loads((damaged / "zarr.json").read_text())["attributes"]["configs"]
    shard = damaged / "activations" / "c" / "1" / "2" / "0"  # config 1, fragment chunk 2
    data = bytearray(shard.read_bytes())
    if damage == "truncated":
        data = data[:40]
    else:
        data[10] ^= 0xFF  # inside the first inner chunk: its zstd checksum no longer matches
    shard.write_bytes(bytes(data))
    out = tmp_path / "out"
    result = analyze(damaged, out, cache=tmp_path / "cache")
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"{damaged}: cannot read chunk 2 of {names[1]} (ShardDamaged: " in result.stderr
    assert "the store may be damaged; rebuild it with `saezarr build ... --overwrite`" in result.stderr
    assert not out.exists()
    assert [p.name for p in (tmp_path / "cache" / "analysis").iterdir() if p.name != ".leases"] == []  # no entry
    assert shard.read_bytes() == bytes(data)  # the store is only read


def test_existing_output_without_overwrite_is_left_alone(store, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    result = analyze(store, out, cache=tmp_path / "cache")
    assert result.returncode == 2 and f"--output {out}: already exists; use --overwrite" in result.stderr
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and (out / "mine.txt").read_text() == "keep"


def test_bundled_config_file_names_each_published_sae_exactly():
    from saezarr.cli import DEFAULT_CONFIG
    from saezarr.inputs.configs import load_config_file

    configs = load_config_file(DEFAULT_CONFIG).configs
    linked = [c for c in configs if c.neuronpedia]
    assert len(configs) == 135 and len(linked) == 38
    canonical = [c for c in linked if c.neuronpedia == f"gemma-2-2b/{c.layer}-gemmascope-res-16k"]
    variants = [c for c in linked if c.neuronpedia == f"gemma-2-2b/{c.layer}-gemmascope-res-16k__l0-{c.average_l0}"]
    assert sorted(c.layer for c in canonical) == list(range(26)) and len(canonical) + len(variants) == 38
    assert {c.layer for c in variants} == {5, 12, 19}


@pytest.mark.parametrize("value", [5, "", ["a"]])
def test_a_bad_neuronpedia_field_is_one_line(tmp_path, tiny, value):
    from saezarr.errors import SaezarrError
    from saezarr.inputs.configs import load_config_file

    data = json.loads(tiny.config_file.read_text())
    data["configs"][1]["neuronpedia"] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SaezarrError, match=r"configs\[1\]: 'neuronpedia' must be a Neuronpedia source string or null"):
        load_config_file(path)


def test_a_killed_runs_staging_folder_is_removed_and_a_live_ones_kept(analysed, store, tmp_path):
    out = tmp_path / "out"
    gone = dead_pid()
    stale = tmp_path / f".out.{gone}.abc123.analyzing"
    live = tmp_path / f".out.{os.getpid()}.def456.analyzing"
    other = tmp_path / f".out.zarr.{gone}.ghi789.analyzing"  # another output's staging: never ours to delete
    for folder in (stale, live, other):
        folder.mkdir()
        (folder / "features.parquet").write_text("half-written")
    result = analyze(store, out, "--configs", "layer_25_l0_6", cache=analysed[1])
    assert result.returncode == 0, result.stderr
    assert not stale.exists() and live.is_dir() and other.is_dir()
    assert (out / "report.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", live.name, other.name])


def test_a_rerun_starts_features_parquet_before_importing_pandas_and_needs_no_zarr(analysed, store, tmp_path):
    # pandas' import (0.2 s) then overlaps the parquet writer's thread, a re-run's critical path; the coordinates and
    # texts come from the cache's memo, the store's layout from its zarr.json, the shown features' per-token
    # activations from the cache entry: a re-run showing the same features never imports zarr (0.1 s)
    _, cache, _ = analysed
    argv = [
        "analyze",
        str(store),
        "--output",
        str(tmp_path / "again"),
        "--quiet",
        *LOOSE,
        "--top-n",
        "4",
        "--examples-per-label",
        "2",
    ]
    code = (
        "import sys, pyarrow.parquet as pq, saezarr.cli\n"
        "write, seen = pq.write_table, []\n"
        "imported = lambda: sorted(m for m in ('pandas', 'zarr', 'numcodecs') if m in sys.modules)\n"
        "pq.write_table = lambda *a, **k: (seen.append(imported()), write(*a, **k))[1]\n"
        f"code = saezarr.cli.main({argv!r})\n"
        "print(seen, imported(), file=sys.stderr)\n"
        "sys.exit(code or (3 if seen != [[]] or 'zarr' in sys.modules else 0))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "SAEZARR_CACHE": str(cache)}
    )
    assert result.returncode == 0, result.stderr  # 3: imported too soon, or zarr at all (stderr: which)
    first = pd.read_parquet(analysed[0] / "features.parquet")
    again = pd.read_parquet(tmp_path / "again" / "features.parquet")
    pd.testing.assert_frame_equal(first, again)
    for name in ("feature_examples.json", "ranked_features.csv"):
        assert (tmp_path / "again" / name).read_bytes() == (analysed[0] / name).read_bytes()
