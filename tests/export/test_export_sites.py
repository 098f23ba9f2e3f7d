"""export-npz names each configuration's file by its layer and site: the legacy name for resid_post, the site's kind
after the layer for any other, so that two sites of one layer never collide."""

from __future__ import annotations

import json

import numpy as np

import saezarr
from saezarr.cli import main
from saezarr.testing.synthetic import random_sae, saelens_cfg, write_saelens_sae


def test_two_sites_of_one_layer_export_to_two_files(tiny, tmp_path):
    rng = np.random.default_rng(0)
    weights = random_sae(rng.standard_normal((50, 32)).astype(np.float32), 16, 4, rng)
    entries = []
    for name, hook in [
        ("res", "blocks.0.hook_resid_post"),
        ("mlp", "blocks.0.hook_mlp_out"),
        ("z", "blocks.0.attn.hook_z"),
    ]:
        cfg = saelens_cfg(0, 32, 16, "jumprelu")
        cfg["metadata"]["hook_name"] = hook
        write_saelens_sae(tmp_path / "saes" / name, weights, cfg)
        entries.append({"path": name, "name": name, "average_l0": 4})
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model": str(tiny.model), "sae_repo": str(tmp_path / "saes"), "configs": entries}))
    store = tmp_path / "store.zarr"
    args = ["build", "--input", str(tiny.csv), "--output", str(store), "--config", str(config), "--quiet"]
    assert main(args) == 0
    summary = saezarr.export_npz(store, tmp_path / "npz")
    names = sorted(path.name for path in (tmp_path / "npz").iterdir())
    expected = ["layer_0_attn-hook_z_l0_4_activations.npz", "layer_0_hook_mlp_out_l0_4_activations.npz"]
    assert names == sorted([*expected, "layer_0_l0_4_activations.npz"]) and len(summary.written) == 3
    opened = saezarr.open_store(store)
    for name, file in zip(["z", "mlp", "res"], [*expected, "layer_0_l0_4_activations.npz"]):
        with np.load(tmp_path / "npz" / file, allow_pickle=False) as npz:
            np.testing.assert_array_equal(npz["activations"], opened.activations.sel(config=name).values)
