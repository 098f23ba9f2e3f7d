"""build --residuals: the residual stream and the first block's input in the store, equal to the model's, resumable."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from clitools import run_cli, run_main

import saezarr
from saezarr.build.pipeline import BuildOptions, build
from saezarr.compat import dtype_kwargs, layer_output
from saezarr.saes.encoder import load_encoder
from saezarr.saes.locate import locate_sae, resolve_sae_repo
from saezarr.testing.synthetic import model_of_width

CHUNK = 64


def shard_hashes(store: Path) -> dict[str, str]:
    """sha256 of every file of a store's data arrays, by relative path."""
    return {
        str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
        for name in ("activations", "residuals", "embeddings")
        for p in sorted((store / name).rglob("*"))
        if p.is_file()
    }


def all_files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def stores(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("residuals")
    base = dict(input=tiny.csv, config_file=tiny.config_file, quiet=True, chunk_fragments=CHUNK)
    everything = root / "all.zarr"
    result = run_main(
        "build", "--input", tiny.csv, "--output", everything, "--config", tiny.config_file, "--quiet",
        "--chunk-fragments", CHUNK, "--residuals",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    some = root / "some.zarr"
    build(BuildOptions(output=some, residuals=[12, 3], **base))
    resumed = root / "resumed.zarr"
    build(BuildOptions(output=resumed, residuals="all", max_chunks=2, **base))
    build(BuildOptions(output=resumed, resume=True, **base))
    return everything, some, resumed


def model_states(tiny, ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """hidden_states of the model at every fragment: [layer + 1, fragment, hidden] (0: the embeddings)."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny.model)
    model = AutoModel.from_pretrained(tiny.model, attn_implementation="eager", **dtype_kwargs(torch.float32)).eval()
    sentences = ds.sentence_index.values
    positions = ds.token_position.values
    texts = [str(ds.original_sentence.values[np.flatnonzero(sentences == s)[0]]) for s in np.unique(sentences)]
    out = []
    last = []
    with torch.inference_mode():
        for s, text in enumerate(texts):
            ids = tokenizer(text, return_tensors="pt", split_special_tokens=True)["input_ids"]
            captured = {}
            layers = model.layers if hasattr(model, "layers") else model.model.layers
            handle = layers[-1].register_forward_hook(lambda m, a, o, captured=captured: captured.setdefault("last", o))
            states = model(input_ids=ids, output_hidden_states=True).hidden_states
            handle.remove()
            here = positions[sentences == s]
            out.append(torch.stack(states)[:, 0, here].numpy())
            last.append(layer_output(captured["last"])[0, here].numpy())
    return np.concatenate(out, axis=1), np.concatenate(last, axis=0)


def test_residuals_are_the_models_resid_post_and_embeddings(tiny, stores):
    everything, _, _ = stores
    ds = xr.open_zarr(everything)  # plain xarray, no saezarr
    assert ds.residuals.dims == ("residual_layer", "fragment", "hidden")
    assert ds.embeddings.dims == ("fragment", "hidden")
    assert ds.residuals.dtype == np.float32 and ds.embeddings.dtype == np.float32
    assert ds.residual_layer.values.tolist() == list(range(26)) and ds.residual_layer.dtype == np.int64
    assert ds.residuals.chunks[1][0] == CHUNK and ds.embeddings.chunks[0][0] == CHUNK
    states, last = model_states(tiny, ds)
    np.testing.assert_allclose(ds.embeddings.values, states[0], rtol=1e-5, atol=1e-5)
    # hidden_states[L + 1] is resid_post of layer L except the last, which the model normalises; hooked there
    np.testing.assert_allclose(ds.residuals.values[:25], states[1:26], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ds.residuals.values[25], last, rtol=1e-4, atol=1e-4)


def test_the_latents_are_the_saes_on_the_stored_residuals(tiny, stores):
    everything, _, _ = stores
    ds = saezarr.open_store(everything)
    for config in tiny.configs[:3]:
        encoder = load_encoder(locate_sae(resolve_sae_repo(str(tiny.saes), config), config, model_of_width(32)), "cpu")
        x = torch.from_numpy(ds.residuals.sel(residual_layer=config.layer).values)
        expected = encoder.encode(x).numpy()
        np.testing.assert_allclose(ds.activations.sel(config=config.name).values, expected, rtol=1e-5, atol=1e-5)


def test_chosen_layers_are_kept_and_open_store_is_lazy(stores):
    everything, some, _ = stores
    ds = saezarr.open_store(some)
    assert ds.residual_layer.values.tolist() == [3, 12]
    assert ds.residuals.chunks is not None  # dask-backed
    full = xr.open_zarr(everything)
    np.testing.assert_array_equal(ds.residuals.sel(residual_layer=12).values, full.residuals.sel(residual_layer=12))
    np.testing.assert_array_equal(ds.embeddings.values, full.embeddings.values)


def test_a_resumed_build_equals_an_uninterrupted_one_bitwise(stores):
    everything, _, resumed = stores
    assert shard_hashes(resumed) == shard_hashes(everything)
    marks = sorted(int(p.name) for p in (resumed / "_saezarr" / "done_residuals").iterdir())
    assert marks == list(range(-(-540 // CHUNK)))


def test_info_shows_the_residuals_with_their_size(stores):
    everything, _, _ = stores
    result = run_cli("info", everything)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("residuals"))
    assert "26 layers" in line and "32 hidden" in line and "float32" in line, line
    as_json = run_cli("info", everything, "--json")
    assert '"residuals"' in as_json.stdout


def test_bad_residual_layers_are_one_line_and_nothing_is_written(tiny, tmp_path):
    out = tmp_path / "bad.zarr"
    result = run_main(
        "build", "--input", tiny.csv, "--output", out, "--config", tiny.config_file, "--residuals", "3,99"
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "saezarr: error: --residuals: layer 99 is not a layer of the model (0-25)"
    ]
    assert not out.exists()


def test_resume_with_other_residual_layers_is_refused_and_the_store_unchanged(tiny, stores, tmp_path):
    _, some, _ = stores
    before = all_files(some)
    result = run_main(
        "build", "--input", tiny.csv, "--output", some, "--config", tiny.config_file, "--resume", "--residuals"
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "keeps the residuals of layers 3,12" in result.stderr
    assert all_files(some) == before


def test_a_local_cluster_build_keeps_the_same_residuals(tiny, stores, tmp_path):
    from saezarr.execution.connect import ClusterOptions

    everything, _, _ = stores
    out = tmp_path / "cluster.zarr"
    summary = build(
        BuildOptions(
            input=tiny.csv,
            output=out,
            config_file=tiny.config_file,
            quiet=True,
            chunk_fragments=CHUNK,
            residuals="all",
            cluster=ClusterOptions(local_workers=2),
        )
    )
    assert summary.complete
    assert shard_hashes(out) == shard_hashes(everything)
