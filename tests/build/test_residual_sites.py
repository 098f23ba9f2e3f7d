"""build --residuals keeps, beside resid_post and the embeddings, every other site its SAEs read at a kept layer:
TransformerLens' activations there, written with each chunk's residual unit (so resumable bitwise), read back for
SAEs added by --extend without the model, grown with the rows an extension adds, shown by info and open_store."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from clitools import run_cli, run_main
from tlref import hooked_transformer, site_value

import saezarr
from saezarr.build.pipeline import BuildOptions, build
from saezarr.execution.connect import ClusterOptions
from saezarr.sites import split_hook
from saezarr.testing.synthetic import DEMO_CSV, random_sae, saelens_cfg, write_architecture_model, write_saelens_sae

pytest.importorskip("transformer_lens")
LAYERS, WIDTH, L0, CHUNK = 3, 64, 8, 16
SENTENCES, OLD_SENTENCES = 6, 4
KEPT = [0, 1]
# name: (hook, head index); the stores are built with FIRST, extensions add the others
SAES = {
    "post": ("blocks.1.hook_resid_post", None),
    "mlp": ("blocks.1.hook_mlp_out", None),
    "head": ("blocks.1.attn.hook_z", 2),
    "embed": ("hook_embed", None),
    "normed": ("blocks.0.ln2.hook_normalized", None),
    "mlp_b": ("blocks.1.hook_mlp_out", None),  # a kept site
    "z": ("blocks.1.attn.hook_z", None),  # a kept site, every head
    "late": ("blocks.2.hook_mlp_out", None),  # layer 2 is not kept: read from the model, and no array gains it
}
FIRST = ["post", "mlp", "head", "embed", "normed"]
# the sites the stores keep beside resid_post: {array: (site kind, layers)}
SITE_ARRAYS = {
    "hook_embed": ("hook_embed", [0]),
    "attn_hook_z": ("attn.hook_z", [1]),
    "hook_mlp_out": ("hook_mlp_out", [1]),
    "ln2_hook_normalized": ("ln2.hook_normalized", [0]),
}
DATA_ARRAYS = ("activations", "residuals", "embeddings", *SITE_ARRAYS)


def chunk_files(store: Path) -> dict[str, str]:
    """sha256 of every chunk file of the store's data arrays, by relative path."""
    return {
        str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
        for name in DATA_ARRAYS
        for p in sorted((store / name).rglob("*"))
        if p.is_file() and p.name != "zarr.json"
    }


def all_files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def arrays_of(store: Path) -> set[str]:
    return {p.parent.name for p in store.glob("*/zarr.json")}


def site(tl, tokens: torch.Tensor, hook: str, head: int | None = None) -> torch.Tensor:
    """TransformerLens' activations [tokens, width] at a hook (one head's columns of attn.hook_z, if given)."""
    value = site_value(tl, tokens, hook)
    return value if head is None else value.reshape(len(tokens), tl.cfg.n_heads, -1)[:, head]


def write_saes(folder: Path, tl, tokens: list[torch.Tensor], saes: dict[str, tuple[str, int | None]]) -> None:
    """One SAELens JumpReLU SAE per entry, calibrated on the sentences' activations at its site (BOS left out)."""
    rng = np.random.default_rng(0)
    for name, (hook, head) in saes.items():
        x = torch.cat([site(tl, t, hook, head)[1:] for t in tokens]).numpy()
        cfg = saelens_cfg(0, x.shape[1], WIDTH, "jumprelu")
        cfg["metadata"] |= {"hook_name": hook, "hook_head_index": head}
        weights = random_sae(x, WIDTH, L0, rng)
        weights["threshold"] *= np.float32(1.01)
        write_saelens_sae(folder / name, weights, cfg)


def config_file(path: Path, model: Path, names: list[str]) -> Path:
    entries = [{"path": name, "name": name} for name in names]
    path.write_text(json.dumps({"model": str(model), "sae_repo": str(path.parent / "saes"), "configs": entries}))
    return path


def csv_of(path: Path, sentences: list[str]) -> Path:
    pd.DataFrame({"sentence": sentences, "concept_strength_label": 1}).to_csv(path, index=False)
    return path


def options(input, output, config, **kwargs) -> BuildOptions:
    return BuildOptions(input=input, output=output, config_file=config, quiet=True, chunk_fragments=CHUNK, **kwargs)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """A tiny GPT-2, its TransformerLens twin, the SAEs, and the stores: one go (every SAE), old stores (FIRST) of
    every row and of the first rows, and one stopped after two chunks then resumed."""
    root = tmp_path_factory.mktemp("residual-sites")
    sentences = pd.read_csv(DEMO_CSV)["sentence"].tolist()
    model = write_architecture_model(root / "model", sentences[:50], "gpt2", num_layers=LAYERS)
    tl = hooked_transformer(model)
    tokens = [tl.to_tokens(s)[0] for s in sentences[:SENTENCES]]
    write_saes(root / "saes", tl, tokens, SAES)
    every = config_file(root / "all.json", model, list(SAES))
    first = config_file(root / "first.json", model, FIRST)
    csv = csv_of(root / "all.csv", sentences[:SENTENCES])
    old_csv = csv_of(root / "old.csv", sentences[:OLD_SENTENCES])
    one_go = root / "one-go.zarr"
    build(options(csv, one_go, every, residuals=KEPT))
    old_all, old_rows, resumed = root / "old-all.zarr", root / "old-rows.zarr", root / "resumed.zarr"
    build(options(csv, old_all, first, residuals=KEPT))
    build(options(old_csv, old_rows, first, residuals=KEPT))
    build(options(csv, resumed, every, residuals=KEPT, max_chunks=2))
    assert not (resumed / "_saezarr" / "done_residuals" / "2").exists()
    build(options(csv, resumed, every, residuals=KEPT, resume=True))
    return dict(
        root=root, model=model, tl=tl, tokens=tokens, every=every, csv=csv, one_go=one_go, old_all=old_all,
        old_rows=old_rows, resumed=resumed,
    )  # fmt: skip


def at_fragments(ds: xr.Dataset, per_sentence: list[np.ndarray]) -> np.ndarray:
    """Per-sentence activations [tokens, width] taken at the store's fragments."""
    return np.stack([per_sentence[s][p] for s, p in zip(ds.sentence_index.values, ds.token_position.values)])


def test_each_kept_site_holds_transformer_lens_activations(gpt2):
    ds = xr.open_zarr(gpt2["one_go"])  # plain xarray
    assert arrays_of(gpt2["one_go"]) >= set(DATA_ARRAYS)
    for name, (kind, layers) in SITE_ARRAYS.items():
        assert ds[name].dims == (f"{name}_layer", "fragment", "hidden"), name
        assert ds[name].dtype == np.float32 and ds[name].chunks[1][0] == CHUNK
        assert ds[f"{name}_layer"].values.tolist() == layers and ds[f"{name}_layer"].dtype == np.int64
        for layer in layers:
            hook = kind if kind == "hook_embed" else f"blocks.{layer}.{kind}"
            want = at_fragments(ds, [site(gpt2["tl"], t, hook).numpy() for t in gpt2["tokens"]])
            stored = ds[name].sel({f"{name}_layer": layer}).values
            np.testing.assert_allclose(stored, want, rtol=1e-4, atol=1e-5 * np.abs(want).max(), err_msg=hook)
    assert ds.residual_layer.values.tolist() == KEPT


def test_the_latents_are_the_saes_on_the_stored_sites(gpt2):
    """Every SAE of a kept site encodes what the store holds there: an extension reading them gives the same."""
    sae_lens = pytest.importorskip("sae_lens")
    ds = saezarr.open_store(gpt2["one_go"])
    for name in ("mlp", "head", "embed", "normed"):
        hook, head = SAES[name]
        layer, kind = split_hook(hook)
        array = kind.replace(".", "_")
        x = torch.from_numpy(ds[array].sel({f"{array}_layer": layer or 0}).values)
        if head is not None:
            x = x.reshape(len(x), gpt2["tl"].cfg.n_heads, -1)[:, head]
        sae = sae_lens.SAE.load_from_disk(str(gpt2["root"] / "saes" / name), device="cpu")
        with torch.no_grad():
            want = sae.encode(x).numpy()
        stored = ds.activations.sel(config=name).values[:, :WIDTH]
        np.testing.assert_allclose(stored, want, rtol=1e-4, atol=1e-5 * np.abs(want).max(), err_msg=name)


def test_a_resumed_build_equals_an_uninterrupted_one_bitwise(gpt2):
    assert chunk_files(gpt2["resumed"]) == chunk_files(gpt2["one_go"])
    n_chunks = -(-xr.open_zarr(gpt2["one_go"]).sizes["fragment"] // CHUNK)
    marks = sorted(int(p.name) for p in (gpt2["resumed"] / "_saezarr" / "done_residuals").iterdir())
    assert marks == list(range(n_chunks))


def test_new_saes_of_kept_sites_are_encoded_from_the_store_without_the_model(gpt2):
    store = gpt2["old_all"]
    before = chunk_files(store)
    kept = config_file(gpt2["root"] / "kept.json", gpt2["model"], [n for n in SAES if n != "late"])
    moved = gpt2["root"] / "model-away"
    gpt2["model"].rename(moved)  # the model can be neither loaded nor resolved
    try:
        summary = build(BuildOptions(output=store, config_file=kept, extend=True, quiet=True))
    finally:
        moved.rename(gpt2["model"])
    assert summary.complete and summary.forward_batches == 0
    after = chunk_files(store)
    assert all(after[key] == digest for key, digest in before.items())
    one, ext = xr.open_zarr(gpt2["one_go"]), xr.open_zarr(store)
    for name in ("mlp_b", "z", *FIRST):
        np.testing.assert_array_equal(ext.activations.sel(config=name).values, one.activations.sel(config=name))


def test_an_extension_by_rows_grows_and_fills_the_site_arrays(gpt2):
    store = gpt2["old_rows"]
    arrays = arrays_of(store)
    summary = build(BuildOptions(input=gpt2["csv"], output=store, config_file=gpt2["every"], extend=True, quiet=True))
    assert summary.complete and summary.forward_batches > 0
    assert arrays_of(store) == arrays == arrays_of(gpt2["one_go"])  # late's site is not kept: no array for it
    one, ext = xr.open_zarr(gpt2["one_go"]), xr.open_zarr(store)
    for name in ("residuals", "embeddings", *SITE_ARRAYS):
        np.testing.assert_array_equal(ext[name].values, one[name].values, err_msg=name)
    for name in SAES:
        np.testing.assert_array_equal(ext.activations.sel(config=name).values, one.activations.sel(config=name))


def test_resume_with_other_residual_layers_is_one_line_and_the_store_unchanged(gpt2):
    store = gpt2["one_go"]
    before = all_files(store)
    result = run_main(
        "build", "--input", gpt2["csv"], "--output", store, "--config", gpt2["every"], "--resume", "--residuals",
        "--chunk-fragments", CHUNK,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "keeps the residuals of layers 0,1 and " in lines[0], lines
    assert "hook_mlp_out of layers 1" in lines[0], lines
    assert all_files(store) == before


def test_info_and_open_store_show_the_kept_sites(gpt2):
    result = run_cli("info", gpt2["one_go"])
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("residuals"))
    assert "2 layers (0,1) + embeddings + hook_embed (0) + attn.hook_z (1)" in line, line
    assert "+ hook_mlp_out (1) + ln2.hook_normalized (0), 32 hidden" in line, line
    as_json = json.loads(run_cli("info", gpt2["one_go"], "--json").stdout)
    assert {"kind": "hook_mlp_out", "layers": [1], "width": 32} in as_json["residuals"]["sites"]
    ds = saezarr.open_store(gpt2["one_go"])
    assert ds.hook_mlp_out.chunks is not None  # dask-backed
    assert ds.hook_mlp_out_layer.values.tolist() == [1]


def test_a_store_of_resid_post_saes_keeps_no_other_site(gpt2, tmp_path):
    out = tmp_path / "post.zarr"
    build(options(gpt2["csv"], out, config_file(gpt2["root"] / "post.json", gpt2["model"], ["post"]), residuals="all"))
    assert not arrays_of(out) & set(SITE_ARRAYS)
    assert "residuals" in arrays_of(out) and "embeddings" in arrays_of(out)
    info = json.loads(run_cli("info", out, "--json").stdout)
    assert info["residuals"]["sites"] == []


def test_a_local_cluster_build_keeps_the_same_sites(gpt2, tmp_path):
    out = tmp_path / "cluster.zarr"
    summary = build(options(gpt2["csv"], out, gpt2["every"], residuals=KEPT, cluster=ClusterOptions(local_workers=2)))
    assert summary.complete
    assert chunk_files(out) == chunk_files(gpt2["one_go"])


def test_gemma2_sites_wider_than_hidden_are_stored_at_their_width(tmp_path):
    """Gemma 2 with head_dim × heads (64) twice the hidden size: attn.hook_z gets a width dimension of its own."""
    sentences = pd.read_csv(DEMO_CSV)["sentence"].tolist()
    model = write_architecture_model(tmp_path / "model", sentences[:50], "gemma2", num_layers=2, head_dim=16)
    tl = hooked_transformer(model)
    tokens = [tl.to_tokens(s)[0] for s in sentences[:SENTENCES]]
    saes = {"z": ("blocks.1.attn.hook_z", None), "transcoder": ("blocks.0.mlp.hook_in", None)}
    write_saes(tmp_path / "saes", tl, tokens, saes)
    out = tmp_path / "gemma.zarr"
    csv, config = csv_of(tmp_path / "s.csv", sentences[:SENTENCES]), config_file(tmp_path / "c.json", model, list(saes))
    build(options(csv, out, config, residuals="all"))
    ds = xr.open_zarr(out)
    assert ds.attn_hook_z.dims == ("attn_hook_z_layer", "fragment", "attn_hook_z_width")
    assert ds.sizes["attn_hook_z_width"] == 64 and ds.sizes["hidden"] == 32
    assert ds.mlp_hook_in.dims == ("mlp_hook_in_layer", "fragment", "hidden")
    for name, (hook, _) in saes.items():
        array = "attn_hook_z" if name == "z" else "mlp_hook_in"
        want = at_fragments(ds, [site(tl, t, hook).numpy() for t in tokens])
        stored = ds[array].isel({f"{array}_layer": 0}).values
        np.testing.assert_allclose(stored, want, rtol=1e-4, atol=1e-5 * np.abs(want).max(), err_msg=hook)
