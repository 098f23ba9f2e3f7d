"""analyze groups by layer and site: SAEs of two sites on one layer are two emergence rows, never pooled; the
residual probe stands beside resid_post SAEs alone; features.parquet and the lazy API say each row's site. A store
of one site keeps today's tables (no site column)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import saezarr
from saezarr.analysis.emergence import columns
from saezarr.cli import main
from saezarr.testing.synthetic import calibration_residuals, random_sae, saelens_cfg, write_saelens_sae

SITES = {"res0": "blocks.0.hook_resid_post", "mlp0": "blocks.0.hook_mlp_out", "res12": "blocks.12.hook_resid_post"}


@pytest.fixture(scope="module")
def two_sites(tiny, tmp_path_factory):
    """A store of resid_post and mlp_out SAEs (layer 0 has both), with the residual stream of layers 0 and 12, and
    its analysis."""
    root = tmp_path_factory.mktemp("sites")
    x = calibration_residuals(tiny.model, [0, 12], list(tiny.sentences))
    rng = np.random.default_rng(2)
    entries = []
    for name, hook in SITES.items():
        cfg = saelens_cfg(0, 32, 48, "jumprelu")
        cfg["metadata"]["hook_name"] = hook
        write_saelens_sae(root / "saes" / name, random_sae(x[12 if "12" in name else 0], 48, 8, rng), cfg)
        entries.append({"path": name, "name": name, "average_l0": 8})
    config = root / "config.json"
    config.write_text(json.dumps({"model": str(tiny.model), "sae_repo": str(root / "saes"), "configs": entries}))
    store = root / "store.zarr"
    build = ["build", "--input", str(tiny.csv), "--output", str(store), "--config", str(config), "--quiet"]
    assert main([*build, "--residuals", "0,12"]) == 0
    output = root / "analysis"
    analyze = ["analyze", str(store), "--output", str(output), "--quiet", "--permutations", "20", "--folds", "3"]
    assert main(analyze) == 0
    return store, output


def test_emergence_has_a_row_per_layer_and_site(two_sites):
    store, output = two_sites
    table = pd.read_csv(output / "emergence.csv")
    assert list(table.columns) == ["site", *columns()]
    assert list(zip(table.layer, table.site)) == [(0, "hook_mlp_out"), (0, "hook_resid_post"), (12, "hook_resid_post")]
    probe = table.set_index(["layer", "site"])["probe_heldout_spearman"]
    assert np.isnan(probe[(0, "hook_mlp_out")]) and np.isfinite(probe[(0, "hook_resid_post")])
    lazy = saezarr.emergence(saezarr.open_store(store), folds=3, permutations=20)
    assert set(lazy.sizes) == {"site", "layer"}
    stored = table.set_index(["site", "layer"])["best_feature_heldout_spearman"]
    for (site, layer), value in stored.items():
        np.testing.assert_allclose(lazy.best_feature_heldout_spearman.sel(site=site, layer=layer), value, rtol=1e-9)
    asked = saezarr.emergence(saezarr.open_store(store), folds=3, permutations=20, layers=[0, 5])
    assert asked.layer.values.tolist() == [0, 5]  # a layer with neither SAEs nor residuals: a row of nothing
    assert np.isnan(asked.best_feature_heldout_spearman.sel(layer=5).values).all()
    analysis = saezarr.Analysis(output)
    assert set(analysis.emergence.sizes) == {"site", "layer"}
    analysis.plot_emergence()  # resid_post's curves, mlp_out's best feature dashed
    assert (output / "report.html").read_text().count("emergence") > 0


def test_features_say_their_site_and_a_one_site_store_keeps_its_columns(two_sites, tiny, tmp_path):
    _, output = two_sites
    features = pd.read_parquet(output / "features.parquet")
    sites = features.groupby("config")["site"].first().to_dict()
    assert sites == {name: hook.rsplit(".", 1)[-1] for name, hook in SITES.items()}
    single = tmp_path / "single"
    store = tmp_path / "single.zarr"
    build = ["build", "--input", str(tiny.csv), "--output", str(store), "--config", str(tiny.config_file), "--quiet"]
    assert main(build) == 0
    assert (
        main(["analyze", str(store), "--output", str(single), "--quiet", "--permutations", "20", "--folds", "3"]) == 0
    )
    assert "site" not in pd.read_parquet(single / "features.parquet").columns
    assert list(pd.read_csv(single / "emergence.csv").columns) == columns()
