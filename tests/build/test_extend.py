"""build --extend: a store grows by new SAEs and new rows; what it held stays bitwise, the result equals a one-go
build, new SAEs read stored residuals without the model, a stopped extension finishes, bad extensions are refused."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from clitools import run_cli, run_main

import saezarr
from saezarr import cli
from saezarr.analysis.cache.files import fingerprint
from saezarr.build.pipeline import BuildOptions, build
from saezarr.store.format import Store
from saezarr.store.storage import open_storage
from saezarr.testing.synthetic import write_config_file

CHUNK = 32
OLD_SENTENCES = 30


def data_files(store: Path) -> dict[str, str]:
    """sha256 of every shard file of the store's data arrays."""
    return {
        str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
        for name in ("activations", "residuals", "embeddings")
        for p in sorted((store / name).rglob("*"))
        if p.is_file() and p.parent.name != "" and not p.name.startswith(".") and p.name != "zarr.json"
    }


def all_files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def assets(tiny, tmp_path_factory):
    """A copy of the tiny model (so a test may take it away), config files with the first SAEs and with all, an old
    CSV (the first rows) and the whole CSV."""
    root = tmp_path_factory.mktemp("extend-assets")
    model = root / "model"
    shutil.copytree(tiny.model, model)
    configs = tiny.configs
    old_config = write_config_file(root / "old.json", str(model), str(tiny.saes), configs[:4])
    all_config = write_config_file(root / "all.json", str(model), str(tiny.saes), configs)
    table = pd.read_csv(tiny.csv)
    old_csv = root / "old.csv"
    table.iloc[:OLD_SENTENCES].to_csv(old_csv, index=False)
    return dict(model=model, old_config=old_config, all_config=all_config, old_csv=old_csv, csv=tiny.csv, root=root)


def options(input, output, config, **kwargs) -> BuildOptions:
    return BuildOptions(input=input, output=output, config_file=config, quiet=True, chunk_fragments=CHUNK, **kwargs)


@pytest.fixture(scope="module")
def grown(assets, tmp_path_factory):
    """A one-go store of all rows and SAEs, and an old store (first rows, first SAEs) extended by both at once by the
    command line, with its shard hashes before."""
    root = tmp_path_factory.mktemp("extend")
    one_go = root / "one-go.zarr"
    build(options(assets["csv"], one_go, assets["all_config"], residuals="all"))
    extended = root / "extended.zarr"
    build(options(assets["old_csv"], extended, assets["old_config"], residuals="all"))
    old = Store(extended)
    before = data_files(extended)
    old_store_id = old.attrs["store_id"]
    old_fingerprint = fingerprint(old, "final", range(old.n_configs))
    partial = xr.open_zarr(extended).activations.isel(fragment=slice((old.n_fragments // CHUNK) * CHUNK, None)).values
    result = run_main(
        "build", "--input", assets["csv"], "--output", extended, "--config", assets["all_config"], "--extend", "--quiet"
    )
    assert result.returncode == 0, result.stderr
    return dict(
        one_go=one_go,
        extended=extended,
        before=before,
        n_old=old.n_fragments,
        configs_old=old.n_configs,
        store_id=old_store_id,
        fingerprint=old_fingerprint,
        partial=partial,
        stdout=result.stdout,
    )


def test_what_the_store_held_stays_bitwise(grown):
    after = data_files(grown["extended"])
    partial_chunk = grown["n_old"] // CHUNK
    for key, digest in grown["before"].items():
        if key.split("/")[-2] != str(partial_chunk):  # every shard of a full chunk, untouched
            assert after[key] == digest, key
    # the last partial chunk gained rows: its old rows are the old values bit for bit
    ds = xr.open_zarr(grown["extended"])
    start = partial_chunk * CHUNK
    kept = ds.activations.isel(config=slice(0, grown["configs_old"]), fragment=slice(start, grown["n_old"])).values
    np.testing.assert_array_equal(kept, grown["partial"])


def test_the_extended_store_equals_a_one_go_build(grown):
    one, ext = saezarr.open_store(grown["one_go"]), saezarr.open_store(grown["extended"])
    assert ext.sizes == one.sizes
    assert sorted(ext.config.values.tolist()) == sorted(one.config.values.tolist())
    for name in ("fragment_text", "original_sentence", "sentence_index", "token_position", "is_final_token"):
        np.testing.assert_array_equal(ext[name].values, one[name].values)
    for config in one.config.values:
        np.testing.assert_allclose(
            ext.activations.sel(config=config).values, one.activations.sel(config=config).values, atol=1e-4, rtol=1e-4
        )
    np.testing.assert_allclose(ext.residuals.values, one.residuals.values, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(ext.embeddings.values, one.embeddings.values, atol=1e-6)
    assert ext.attrs["n_sentences"] == one.attrs["n_sentences"]
    assert ext.attrs["input_sha256"] == one.attrs["input_sha256"]
    assert ext.attrs["tokens_sha256"] == one.attrs["tokens_sha256"]
    assert not (grown["extended"] / "_saezarr" / "extend.json").exists()


def test_the_grown_store_has_a_new_identity_and_a_new_cache_fingerprint(grown):
    store = Store(grown["extended"])
    assert store.attrs["store_id"] != grown["store_id"] and len(store.attrs["store_id"]) == 32
    assert fingerprint(store, "final", range(grown["configs_old"])) != grown["fingerprint"]


def test_analysis_of_the_extended_store_equals_the_one_go(grown):
    one = saezarr.feature_metrics(saezarr.open_store(grown["one_go"])).compute()
    ext = saezarr.feature_metrics(saezarr.open_store(grown["extended"])).compute()
    for name in one.data_vars:
        for config in one.config.values:
            np.testing.assert_allclose(
                ext[name].sel(config=config).values, one[name].sel(config=config).values, atol=1e-4, equal_nan=True
            )


def test_new_saes_come_from_the_stored_residuals_without_the_model(assets, grown, tmp_path):
    store = tmp_path / "old-rows.zarr"
    build(options(assets["csv"], store, assets["old_config"], residuals="all"))
    before = data_files(store)
    moved = assets["root"] / "model-away"
    assets["model"].rename(moved)  # the model cannot be loaded, nor even resolved
    try:
        result = run_cli("build", "--output", store, "--config", assets["all_config"], "--extend", "--quiet")
    finally:
        moved.rename(assets["model"])
    assert result.returncode == 0, result.stderr
    assert "model passes" in result.stdout
    after = data_files(store)
    assert all(after[key] == digest for key, digest in before.items())
    one, ext = xr.open_zarr(grown["one_go"]), xr.open_zarr(store)
    for config in one.config.values:  # the residuals are the one-go build's, so are the latents
        np.testing.assert_array_equal(ext.activations.sel(config=config).values, one.activations.sel(config=config))


def test_a_stopped_extension_finishes_when_rerun(assets, grown, tmp_path):
    store = tmp_path / "stopped.zarr"
    build(options(assets["old_csv"], store, assets["old_config"], residuals="all"))
    build(options(assets["csv"], store, assets["all_config"], extend=True, max_chunks=2))
    assert (store / "_saezarr" / "extend.json").exists()
    assert not Store(store).done_matrix().all()
    build(options(assets["csv"], store, assets["all_config"], extend=True))
    assert data_files(store) == data_files(grown["extended"])
    assert not (store / "_saezarr" / "extend.json").exists()


def test_an_extension_without_residuals_runs_the_model(assets, grown, tmp_path):
    store = tmp_path / "plain.zarr"
    build(options(assets["old_csv"], store, assets["old_config"]))
    summary = build(options(assets["csv"], store, assets["all_config"], extend=True))
    assert summary.complete and summary.model_passes >= 1
    one, ext = xr.open_zarr(grown["one_go"]), xr.open_zarr(store)
    for config in one.config.values:
        np.testing.assert_allclose(
            ext.activations.sel(config=config).values, one.activations.sel(config=config), atol=1e-4, rtol=1e-4
        )


@pytest.fixture(scope="module")
def refusal_store(assets, tmp_path_factory):
    store = tmp_path_factory.mktemp("refusals") / "old.zarr"
    build(options(assets["old_csv"], store, assets["old_config"]))
    return store


def refused(store: Path, *args, expect: str, capsys=None) -> None:
    """The extension is refused in one line (exit 2) and the store's bytes are unchanged: by a subprocess, or by the
    command line's main in this process (faster) when capsys is given."""
    before = all_files(store)
    argv = ["build", "--output", str(store), "--extend", "--quiet", *map(str, args)]
    if capsys is None:
        result = run_cli(*argv)
        code, stderr = result.returncode, result.stderr
    else:
        capsys.readouterr()
        code, stderr = cli.main(argv), capsys.readouterr().err
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("saezarr: error: ") and expect in lines[0], lines
    assert all_files(store) == before


def test_changed_rows_are_refused(assets, refusal_store, tmp_path, capsys):
    table = pd.read_csv(assets["csv"])
    changed = table.copy()
    changed.loc[3, "sentence"] = "Something else entirely."
    changed.to_csv(tmp_path / "changed.csv", index=False)
    refused(
        refusal_store, "--input", tmp_path / "changed.csv", "--config", assets["old_config"],
        expect="data row 4 differs from the store's sentence 4",
    )  # fmt: skip
    relabeled = table.copy()
    relabeled.loc[0, "concept_strength_label"] = (relabeled.loc[0, "concept_strength_label"] + 1) % 4
    relabeled.to_csv(tmp_path / "relabeled.csv", index=False)
    refused(
        refusal_store, "--input", tmp_path / "relabeled.csv", "--config", assets["old_config"],
        expect="data row 1 differs", capsys=capsys,
    )  # fmt: skip
    swapped = table.iloc[[1, 0, *range(2, len(table))]]
    swapped.to_csv(tmp_path / "swapped.csv", index=False)
    refused(
        refusal_store,
        "--input",
        tmp_path / "swapped.csv",
        "--config",
        assets["old_config"],
        expect="data row 1",
        capsys=capsys,
    )
    table.iloc[:10].to_csv(tmp_path / "fewer.csv", index=False)
    refused(
        refusal_store,
        "--input",
        tmp_path / "fewer.csv",
        "--config",
        assets["old_config"],
        expect="rows were removed",
        capsys=capsys,
    )


def test_other_model_options_and_sae_paths_are_refused(tiny, assets, refusal_store, tmp_path, capsys):
    refused(
        refusal_store, "--input", assets["csv"], "--config", assets["all_config"], "--dtype", "bfloat16",
        expect="built with --dtype float32, not bfloat16", capsys=capsys,
    )  # fmt: skip
    refused(
        refusal_store, "--input", assets["csv"], "--config", assets["all_config"], "--fragments", "word",
        expect="built with --fragments token, not word", capsys=capsys,
    )  # fmt: skip
    entries = json.loads(assets["all_config"].read_text())
    entries["configs"][0]["path"] = entries["configs"][1]["path"]
    other_path = tmp_path / "other-path.json"
    other_path.write_text(json.dumps(entries))
    refused(
        refusal_store,
        "--config",
        other_path,
        expect=f"config {tiny.configs[0].name} is in the store with SAE path",
        capsys=capsys,
    )
    other_model = tmp_path / "other-model"
    shutil.copytree(assets["model"], other_model)
    refused(
        refusal_store, "--input", assets["csv"], "--config", assets["all_config"], "--model", other_model,
        expect="the store was built with model", capsys=capsys,
    )  # fmt: skip
    refused(
        refusal_store, "--input", assets["csv"], "--config", assets["all_config"], "--residuals",
        expect="--residuals is fixed when a store is created", capsys=capsys,
    )  # fmt: skip


def test_another_tokenizer_is_refused(tiny, assets, tmp_path, capsys):
    from saezarr.testing.synthetic import write_tokenizer

    model = tmp_path / "model"
    shutil.copytree(assets["model"], model)
    config = write_config_file(tmp_path / "c.json", str(model), str(tiny.saes), tiny.configs[:2])
    store = tmp_path / "s.zarr"
    build(options(assets["old_csv"], store, config))
    write_tokenizer(model, ["a b c d e f g h i j k l m n o p"], vocab_size=300)  # same model, other tokenizer
    refused(store, "--input", assets["csv"], "--config", config, expect="tokenize differently", capsys=capsys)


def test_a_kill_while_the_store_grows_is_finished_by_rerunning(assets, grown, tmp_path):
    from saezarr.build.extending import plan_extension
    from saezarr.store import growing

    store = tmp_path / "half-grown.zarr"
    build(options(assets["old_csv"], store, assets["old_config"], residuals="all"))
    extension = plan_extension(options(assets["csv"], store, assets["all_config"], extend=True), Store(store, "r+"))
    growth = extension.growth
    # the first steps of grow_store, as a kill after the coordinates were swapped in would leave them
    (store / "_saezarr" / "extend.json").write_text(json.dumps(growth.record()))
    growing._replace_coordinates(open_storage(store), growth, CHUNK, Store(store).shard_width, grown_features=False)
    assert Store(store).attrs["n_sentences"] == OLD_SENTENCES  # not committed yet
    build(options(assets["csv"], store, assets["all_config"], extend=True))
    assert data_files(store) == data_files(grown["extended"])


def test_an_extension_keeping_some_layers_runs_the_model_for_the_others(tiny, assets, grown, tmp_path):
    store = tmp_path / "layer0.zarr"
    first = write_config_file(tmp_path / "first.json", str(assets["model"]), str(tiny.saes), tiny.configs[:2])
    build(options(assets["old_csv"], store, first, residuals=[0]))
    summary = build(options(assets["csv"], store, assets["all_config"], extend=True))
    assert summary.complete and summary.forward_batches > 0
    one, ext = xr.open_zarr(grown["one_go"]), xr.open_zarr(store)
    assert ext.residual_layer.values.tolist() == [0]
    np.testing.assert_allclose(ext.residuals.values[0], one.residuals.sel(residual_layer=0).values, atol=1e-5)
    for config in one.config.values:
        np.testing.assert_allclose(
            ext.activations.sel(config=config).values, one.activations.sel(config=config), atol=1e-4, rtol=1e-4
        )


def test_ctrl_c_while_the_store_grows_says_how_to_finish_and_resume_is_refused(assets, grown, tmp_path, monkeypatch):
    from saezarr.errors import SaezarrError
    from saezarr.store import growing

    store = tmp_path / "interrupted.zarr"
    build(options(assets["old_csv"], store, assets["old_config"], residuals="all"))
    real_set_shape = growing._set_shape

    def ctrl_c_on_the_first_shape(*args):  # Ctrl-C arrives midway: coordinates swapped, shapes not yet
        monkeypatch.setattr(growing, "_set_shape", real_set_shape)
        raise KeyboardInterrupt

    monkeypatch.setattr(growing, "_set_shape", ctrl_c_on_the_first_shape)
    with pytest.raises(SaezarrError) as stopped:
        build(options(assets["csv"], store, assets["all_config"], extend=True))
    assert stopped.value.exit_code == 130
    assert str(stopped.value) == (
        f"interrupted while {store} was growing; rerun the same extend=True command to finish the extension"
    )
    before = all_files(store)
    result = run_main(
        "build", "--input", assets["csv"], "--output", store, "--config", assets["all_config"], "--resume", "--quiet"
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"saezarr: error: --resume {store}: an extension of the store (build --extend) is in progress; rerun that "
        "same --extend command to finish it"
    )
    assert all_files(store) == before
    build(options(assets["csv"], store, assets["all_config"], extend=True))
    assert data_files(store) == data_files(grown["extended"])
