"""The Python API: `saezarr.open_store`, plain `xr.open_zarr`, and USAGE.md's worked examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from clitools import REPO, run_main

import saezarr
from saezarr.errors import SaezarrError

DEMO_STORE = "saezarr-demo.zarr"


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory, demo_config) -> Path:
    """A folder holding the demo store, made as USAGE.md says (`python -m saezarr build --demo`)."""
    folder = tmp_path_factory.mktemp("usage")
    result = run_main("build", "--demo", "--config", demo_config, "--quiet", cwd=folder)
    assert result.returncode == 0, result.stderr
    assert (folder / DEMO_STORE).is_dir()
    return folder


@pytest.fixture(scope="module")
def raw(demo_folder) -> dict[str, np.ndarray]:
    """The store's arrays, read with zarr alone."""
    group = zarr.open_group(demo_folder / DEMO_STORE, mode="r")
    return {name: group[name][:] for name in group.array_keys()}


def analysis_blocks() -> list[str]:
    """The ```python blocks of USAGE.md's "Analysis with xarray" section."""
    text = (REPO / "USAGE.md").read_text(encoding="utf-8")
    section = text.split("\n## Analysis with xarray\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def run_block(index: int, folder: Path, monkeypatch) -> dict:
    """Execute one example in a fresh namespace with the demo store's folder as working directory."""
    blocks = analysis_blocks()
    assert len(blocks) == 3
    monkeypatch.chdir(folder)
    namespace: dict = {"__name__": "__usage__"}
    exec(compile(blocks[index], f"USAGE.md example {index + 1}", "exec"), namespace)
    return namespace


def config_activations(raw: dict, config: str) -> np.ndarray:
    return raw["activations"][list(raw["config"]).index(config)]


def test_example_mean_activation_per_label(demo_folder, raw, monkeypatch, capsys):
    namespace = run_block(0, demo_folder, monkeypatch)
    column = config_activations(raw, "layer_2_l0_24")[:, 3]
    labels = raw["concept_strength_label"]
    result = namespace["mean_per_label"]
    assert list(result.concept_strength_label.values) == sorted(set(labels.tolist()))
    expected = [column[labels == label].mean() for label in result.concept_strength_label.values]
    np.testing.assert_allclose(result.values, expected, rtol=1e-6)
    assert capsys.readouterr().out.strip()


def test_example_top_10_fragments(demo_folder, raw, monkeypatch):
    namespace = run_block(1, demo_folder, monkeypatch)
    column = config_activations(raw, "layer_2_l0_24")[:, 3]
    top = np.argsort(-column, kind="stable")[:10]
    result = namespace["top10"]
    np.testing.assert_array_equal(result.values, column[top])
    assert sorted(zip(result.values, result.fragment_text.values.tolist())) == sorted(
        zip(column[top], raw["fragment_text"][top].tolist())
    )


def test_example_feature_frequency_stays_lazy(demo_folder, raw, monkeypatch):
    namespace = run_block(2, demo_folder, monkeypatch)
    acts = namespace["acts"]
    assert isinstance(acts.data, da.Array) and acts.data.numblocks[0] > 1
    expected = (config_activations(raw, "layer_2_l0_24") > 0).mean(axis=0)
    np.testing.assert_allclose(namespace["frequency"].values, expected)


def test_open_store_is_lazy_with_in_memory_coordinates(demo_folder, raw):
    ds = saezarr.open_store(demo_folder / DEMO_STORE)
    assert isinstance(ds.activations.data, da.Array)
    assert all(isinstance(ds[name].data, np.ndarray) for name in ds.coords)
    assert ds.config.dtype.kind == "U" and ds.sae_path.dtype.kind == "U"
    assert ds.attrs["configs"] == list(ds.config.values)
    one = ds.sel(config="layer_2_l0_24")
    np.testing.assert_array_equal(one.activations.values, config_activations(raw, "layer_2_l0_24"))
    assert int(one.layer) == 2 and int(one.average_l0) == 24


def test_where_on_final_tokens_drops_the_other_fragments(demo_folder, raw):
    ds = saezarr.open_store(demo_folder / DEMO_STORE)
    final = ds.where(ds.is_final_token, drop=True)
    mask = raw["is_final_token"]
    assert final.sizes["fragment"] == mask.sum() == len(np.unique(raw["sentence_index"]))
    np.testing.assert_array_equal(final.sentence_index.values, raw["sentence_index"][mask])
    np.testing.assert_array_equal(final.activations.values, raw["activations"][:, mask])


def test_plain_open_zarr_has_the_same_variables_and_coordinates(demo_folder):
    ours = saezarr.open_store(demo_folder / DEMO_STORE)
    plain = xr.open_zarr(demo_folder / DEMO_STORE)
    assert set(plain.data_vars) == set(ours.data_vars) == {"activations"}
    assert set(plain.coords) == set(ours.coords)
    assert plain.activations.dims == ours.activations.dims
    for name in ours.coords:
        assert ours[name].dims == plain[name].dims, name
        assert ours[name].values.tolist() == plain[name].values.tolist(), name
    np.testing.assert_array_equal(
        plain.activations.sel(config="layer_5_l0_8").values, ours.activations.sel(config="layer_5_l0_8").values
    )


@pytest.mark.parametrize("name", ["missing.zarr", "plain-folder", "plain.zarr"])
def test_open_store_refuses_what_is_not_a_saezarr_store(tmp_path, name):
    (tmp_path / "plain-folder").mkdir()
    zarr.open_group(tmp_path / "plain.zarr", mode="w").create_array("x", shape=(2,), dtype="f4")
    with pytest.raises(SaezarrError, match=re.escape(str(tmp_path / name))):
        saezarr.open_store(tmp_path / name)
