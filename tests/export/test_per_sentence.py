"""export-npz --per-sentence: one file per sentence, with the original pipeline's keys, dtypes and shapes, equal to
the store; a store without residuals is exported without them; foreign files are never overwritten."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from clitools import run_cli

from saezarr import cli

N_SENTENCES = 40


def build(path: Path, demo_config: Path, *options: str) -> Path:
    args = ["build", "--demo", "--config", str(demo_config), "--output", str(path), "--quiet", "--chunk-fragments"]
    assert cli.main([*args, "100", *options]) == 0
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory, demo_config):
    root = tmp_path_factory.mktemp("per-sentence")
    return build(root / "res.zarr", demo_config, "--residuals"), build(root / "plain.zarr", demo_config)


@pytest.fixture(scope="module")
def exported(stores, tmp_path_factory):
    out = tmp_path_factory.mktemp("files")
    result = run_cli("export-npz", stores[0], "--output", out, "--per-sentence")
    assert result.returncode == 0, result.stderr
    assert f"exported {N_SENTENCES} sentences" in result.stdout
    return out


def test_files_have_the_keys_dtypes_and_shapes(stores, exported):
    ds = xr.open_zarr(stores[0])
    names = sorted(p.name for p in exported.glob("*.npz"))
    assert names == [f"sentence_{i:06d}.npz" for i in range(1, N_SENTENCES + 1)]
    n_configs, width, hidden = ds.sizes["config"], ds.sizes["feature"], ds.sizes["hidden"]
    for i in (0, 17, N_SENTENCES - 1):
        here = np.flatnonzero(ds.sentence_index.values == i)
        n = len(here)
        with np.load(exported / f"sentence_{i + 1:06d}.npz") as f:  # no allow_pickle
            shapes = {key: (f[key].dtype, f[key].shape) for key in f.files}
            assert shapes == {
                "sentence": (np.dtype(f"<U{len(str(ds.original_sentence.values[here[0]]))}"), ()),
                "concept_strength_label": (np.dtype("int64"), ()),
                "sentence_index": (np.dtype("int64"), ()),
                "fragments": (f["fragments"].dtype, (n,)),
                "token_positions": (np.dtype("int64"), (n,)),
                "is_final_token": (np.dtype("bool"), (n,)),
                "fragment_lengths": (np.dtype("int64"), (n,)),
                "activations": (np.dtype("float32"), (n_configs, n, width)),
                "hidden_states": (np.dtype("float32"), (n_configs, n, hidden)),
                "embeddings": (np.dtype("float32"), (n, hidden)),
                "layers": (np.dtype("int64"), (n_configs,)),
                "average_l0s": (np.dtype("float64"), (n_configs,)),
                "num_features": (np.dtype("int64"), ()),
                "hidden_dim": (np.dtype("int64"), ()),
            }
            assert f["fragments"].dtype.kind == "U"
            assert int(f["sentence_index"]) == i and str(f["sentence"]) == str(ds.original_sentence.values[here[0]])
            assert int(f["concept_strength_label"]) == int(ds.concept_strength_label.values[here[0]])
            assert f["fragments"].tolist() == [str(t) for t in ds.fragment_text.values[here]]
            np.testing.assert_array_equal(f["token_positions"], ds.token_position.values[here])
            np.testing.assert_array_equal(f["is_final_token"], ds.is_final_token.values[here])
            np.testing.assert_array_equal(f["layers"], ds.layer.values)
            np.testing.assert_array_equal(f["average_l0s"], ds.average_l0.values.astype(float))
            assert int(f["num_features"]) == width and int(f["hidden_dim"]) == hidden
            # the final-token row of every config equals the store; so do all rows
            final = here[ds.is_final_token.values[here]][0]
            np.testing.assert_array_equal(f["activations"][:, -1], ds.activations.values[:, final])
            np.testing.assert_array_equal(f["activations"], ds.activations.values[:, here])
            for c, layer in enumerate(ds.layer.values):
                np.testing.assert_array_equal(
                    f["hidden_states"][c], ds.residuals.sel(residual_layer=layer).values[here]
                )
            np.testing.assert_array_equal(f["embeddings"], ds.embeddings.values[here])


def test_layers_select_configs(stores, tmp_path):
    result = run_cli("export-npz", stores[0], "--output", tmp_path, "--per-sentence", "--layers", "2")
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "sentence_000003.npz") as f:
        assert f["layers"].tolist() == [2, 2]
        assert f["activations"].shape[0] == 2 == f["hidden_states"].shape[0]


def test_a_store_without_residuals_is_exported_without_them_and_says_so_once(stores, tmp_path):
    result = run_cli("export-npz", stores[1], "--output", tmp_path, "--per-sentence")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("keeps no residual stream") == 1
    with np.load(tmp_path / "sentence_000001.npz") as f:
        assert "hidden_states" not in f.files and "embeddings" not in f.files
        assert {"activations", "layers", "average_l0s", "num_features", "hidden_dim"} <= set(f.files)


def test_a_foreign_file_is_never_overwritten(stores, tmp_path):
    foreign = tmp_path / "sentence_000002.npz"
    foreign.write_bytes(b"not saezarr's")
    result = run_cli("export-npz", stores[0], "--output", tmp_path, "--per-sentence", "--overwrite")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "sentence_000002.npz exists and is not a per-sentence file saezarr wrote" in lines[0]
    assert foreign.read_bytes() == b"not saezarr's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sentence_000002.npz"]


def test_a_rerun_skips_up_to_date_files_and_overwrite_rewrites(stores, tmp_path):
    first = run_cli("export-npz", stores[0], "--output", tmp_path, "--per-sentence", "--layers", "5")
    assert first.returncode == 0, first.stderr
    stamp = (tmp_path / "sentence_000001.npz").stat().st_mtime_ns
    again = run_cli("export-npz", stores[0], "--output", tmp_path, "--per-sentence", "--layers", "5")
    assert "nothing to export" in again.stdout
    assert (tmp_path / "sentence_000001.npz").stat().st_mtime_ns == stamp
    forced = run_cli("export-npz", stores[0], "--output", tmp_path, "--per-sentence", "--layers", "5", "--overwrite")
    assert f"exported {N_SENTENCES} sentences" in forced.stdout
