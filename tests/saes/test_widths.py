"""SAEs of several widths in one store: a wider (and a narrower) SAE added to a store by --extend from its stored
residuals, without the model; built in one go the same; analysed, exported and summarised per SAE width."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from clitools import run_cli

import saezarr
from saezarr.analysis.run import AnalyzeOptions, analyze
from saezarr.build.pipeline import BuildOptions, build
from saezarr.inputs.configs import SAEConfig
from saezarr.store.format import Store
from saezarr.testing.synthetic import write_config_file, write_saes

CHUNK = 32
TINY_WIDTH = 128  # the tiny fixture's SAE width (tests/conftest.py), checked when the first store is built
WIDE, NARROW = 2 * TINY_WIDTH, TINY_WIDTH // 2
OTHER_WIDTHS = (
    (SAEConfig(12, 9, f"layer_12/width_{WIDE}/average_l0_9"), WIDE),
    (SAEConfig(25, 9, f"layer_25/width_{NARROW}/average_l0_9"), NARROW),
)
ANALYSIS = dict(quiet=True, min_pearson=0.1, min_tpr=0.1, max_fpr=0.5, permutations=5, folds=2, probe_permutations=2)


def shard_digests(store: Path) -> dict[str, str]:
    return {
        str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((store / "activations" / "c").rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def widths(tiny, tmp_path_factory):
    """SAEs of the tiny store's width and of two others in one SAE folder; a store of the first, extended by the others
    from its residuals with the model gone, and a store of all built in one go."""
    root = tmp_path_factory.mktemp("widths")
    saes = root / "saes"
    shutil.copytree(tiny.saes, saes)
    for config, width in OTHER_WIDTHS:
        write_saes(saes, tiny.model, [config], list(tiny.sentences), width=width, seed=width)
    model = root / "model"
    shutil.copytree(tiny.model, model)
    first = tiny.configs[:2]
    together = (*first, *(config for config, _ in OTHER_WIDTHS))
    old_config = write_config_file(root / "old.json", str(model), str(saes), first)
    all_config = write_config_file(root / "all.json", str(model), str(saes), together)
    one_go = root / "one-go.zarr"
    build(BuildOptions(tiny.csv, one_go, all_config, quiet=True, chunk_fragments=CHUNK))
    extended = root / "extended.zarr"
    build(BuildOptions(tiny.csv, extended, old_config, quiet=True, chunk_fragments=CHUNK, residuals="all"))
    assert Store(extended).width == TINY_WIDTH
    before = shard_digests(extended)
    model.rename(root / "model-away")  # the model can be neither loaded nor resolved
    try:
        result = run_cli("build", "--output", extended, "--config", all_config, "--extend", "--quiet")
    finally:
        (root / "model-away").rename(model)
    assert result.returncode == 0, result.stderr
    return dict(root=root, one_go=one_go, extended=extended, before=before, names=[c.name for c in together])


def test_an_extension_adds_saes_of_other_widths_from_the_stored_residuals(widths):
    after = shard_digests(widths["extended"])
    assert all(after[key] == digest for key, digest in widths["before"].items())  # what it held stays bitwise
    ds = saezarr.open_store(widths["extended"])
    assert ds.sizes["feature"] == WIDE
    assert ds.width.values.tolist() == [TINY_WIDTH, TINY_WIDTH, WIDE, NARROW]
    assert Store(widths["extended"]).shard_width == TINY_WIDTH  # the store's shards keep their width
    for name, width in zip(widths["names"], ds.width.values):
        values = ds.activations.sel(config=name).values
        assert not np.isnan(values[:, :width]).any() and np.isnan(values[:, width:]).all()
        assert (values[:, :width] > 0).any()


def test_the_extended_store_equals_one_built_in_one_go(widths):
    one, ext = xr.open_zarr(widths["one_go"]), xr.open_zarr(widths["extended"])
    assert one.activations.shape == ext.activations.shape
    assert one.width.values.tolist() == ext.width.values.tolist()
    for name in widths["names"]:
        np.testing.assert_allclose(
            ext.activations.sel(config=name).values, one.activations.sel(config=name).values, atol=1e-4, rtol=1e-4
        )


def test_a_unit_is_done_only_with_every_shard_of_its_sae(widths, tmp_path):
    copy = tmp_path / "copy.zarr"
    shutil.copytree(widths["extended"], copy)
    store = Store(copy)
    wide = widths["names"].index(OTHER_WIDTHS[0][0].name)
    files = store.shard_files(wide, 0)
    assert len(files) == WIDE // TINY_WIDTH and len(store.shard_files(0, 0)) == 1
    files[-1].unlink()
    assert not store.done_matrix()[wide, 0] and store.done_matrix()[wide, 1:].all()


def test_analysis_ranks_each_sae_within_its_width_and_equals_the_one_go(widths, tmp_path):
    outputs = {}
    for kind in ("one_go", "extended"):
        analyze(AnalyzeOptions(widths[kind], tmp_path / kind, cache=tmp_path / f"cache-{kind}", **ANALYSIS))
        outputs[kind] = pd.read_parquet(tmp_path / kind / "features.parquet")
    features = outputs["extended"]
    counts = features.groupby("config").size().to_dict()
    assert counts == dict(zip(widths["names"], [TINY_WIDTH, TINY_WIDTH, WIDE, NARROW]))
    largest = features.groupby("config").feature_id.max().to_dict()
    assert largest == {name: width - 1 for name, width in counts.items()}
    one = outputs["one_go"].set_index(["config", "feature_id"]).sort_index()
    ext = features.set_index(["config", "feature_id"]).sort_index()
    numeric = [c for c in one.columns if one[c].dtype.kind == "f"]
    np.testing.assert_allclose(ext[numeric].to_numpy(), one[numeric].to_numpy(), atol=1e-4, equal_nan=True)
    ranked = pd.read_csv(tmp_path / "extended" / "ranked_features.csv")
    assert (ranked.feature_id < ranked.config.map(counts)).all()


def test_per_config_export_holds_each_sae_at_its_width(widths, tmp_path):
    out = tmp_path / "npz"
    result = run_cli("export-npz", widths["extended"], "--output", out)
    assert result.returncode == 0, result.stderr
    ds = xr.open_zarr(widths["extended"])
    for name, width in zip(widths["names"], ds.width.values):
        with np.load(out / f"{name}_activations.npz") as npz:
            assert npz["activations"].shape == (ds.sizes["fragment"], width)
            assert int(npz["num_features"]) == width
            np.testing.assert_array_equal(npz["activations"], ds.activations.sel(config=name).values[:, :width])


def test_per_sentence_export_of_several_widths_is_refused_and_writes_nothing(widths, tmp_path):
    out = tmp_path / "sentences"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = run_cli("export-npz", widths["extended"], "--output", out, "--per-sentence")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"saezarr: error: export-npz --per-sentence {widths['extended']}: the selected configs have SAEs of different "
        f"widths, {NARROW} (layer_25_l0_9), {TINY_WIDTH} (layer_0_l0_6), {WIDE} (layer_12_l0_9); a sentence's file "
        "holds one width: select configs of one width with --configs or --layers"
    )
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    one_width = run_cli(
        "export-npz", widths["extended"], "--output", out, "--per-sentence", "--configs", OTHER_WIDTHS[0][0].name
    )
    assert one_width.returncode == 0, one_width.stderr
    with np.load(out / "sentence_000001.npz") as npz:
        assert npz["activations"].shape[0] == 1 and npz["activations"].shape[2] == WIDE
        assert int(npz["num_features"]) == WIDE


def test_info_shows_each_sae_width(widths):
    result = run_cli("info", widths["extended"])
    assert result.returncode == 0, result.stderr
    assert f"{WIDE} features (SAE widths {NARROW}, {TINY_WIDTH}, {WIDE}; NaN past a narrower SAE's width)" in (
        result.stdout
    )
    as_json = json.loads(run_cli("info", widths["extended"], "--json").stdout)
    assert [c["width"] for c in as_json["configs"]] == [TINY_WIDTH, TINY_WIDTH, WIDE, NARROW]


def test_emergence_from_python_scores_each_sae_within_its_width(widths):
    scores = {
        kind: saezarr.emergence(saezarr.open_store(widths[kind]), folds=2, permutations=2)
        for kind in ("one_go", "extended")
    }
    best = scores["extended"]["best_feature_heldout_spearman"].sel(layer=[0, 12, 25]).values
    assert np.isfinite(best).all()
    for name in [name for name in scores["one_go"].data_vars if not name.startswith("probe")]:  # residuals: one only
        extended = scores["extended"][name].sel(layer=scores["one_go"].layer).values  # it has every layer's residuals
        np.testing.assert_allclose(extended, scores["one_go"][name].values, atol=1e-6)
