"""A build reads every site its SAEs name, in one forward pass, and stores what SAELens encodes from
TransformerLens' activations at that site: `sae.encode` of the `run_with_cache` value, sentence by sentence, BOS
left out. The store records each config's site as its `hook` coordinate."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from tlref import hooked_transformer, site_value

from saezarr.cli import main
from saezarr.models.architectures import ARCHITECTURES
from saezarr.testing.synthetic import DEMO_CSV, random_sae, saelens_cfg, write_architecture_model, write_saelens_sae

pytest.importorskip("sae_lens")
LAYERS, WIDTH, L0 = 3, 64, 8
SENTENCES = 6


def sites_of(model_type: str) -> list[str]:
    """One hook of every kind the model type's table places: at layer 1, hook_embed, and the last layer's output."""
    kinds = ARCHITECTURES[model_type].sites
    hooks = [kind if kind == "hook_embed" else f"blocks.1.{kind}" for kind in kinds]
    return sorted(hooks) + [f"blocks.{LAYERS - 1}.hook_resid_post"]


def built(tmp_path, model, sentences: list[str], names: list[str], capsys, **release) -> xr.Dataset:
    """The store `build` writes of the sentences with the SAEs tmp_path/saes/NAME, each named as its folder (and the
    config file's `release` keys, e.g. model_from_pretrained_kwargs)."""
    entries = [{"path": name, "name": name} for name in names]
    config = tmp_path / "config.json"
    file = {"model": str(model), "sae_repo": str(tmp_path / "saes"), "configs": entries, **release}
    config.write_text(json.dumps(file))
    csv = tmp_path / "few.csv"
    pd.DataFrame({"sentence": sentences, "concept_strength_label": 1}).to_csv(csv, index=False)
    output = tmp_path / "store.zarr"
    code = main(["build", "--input", str(csv), "--output", str(output), "--config", str(config), "--quiet"])
    assert code == 0, capsys.readouterr().err
    return xr.open_zarr(output)


@pytest.mark.parametrize("model_type", ["gemma2", "gpt2", "gpt_neox"])
def test_every_site_stores_what_saelens_encodes_from_transformer_lens(model_type, tmp_path, capsys):
    from sae_lens import SAE
    from transformers import AutoTokenizer

    sentences = pd.read_csv(DEMO_CSV)["sentence"].tolist()
    model = write_architecture_model(tmp_path / "model", sentences[:50], model_type, num_layers=LAYERS)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokens = [tokenizer(s, return_tensors="pt")["input_ids"][0] for s in sentences[:SENTENCES]]
    tl = hooked_transformer(model)
    hooks = sites_of(model_type)
    names, rng = [], np.random.default_rng(0)
    for i, hook in enumerate(hooks):
        x = torch.cat([site_value(tl, t, hook)[1:] for t in tokens]).numpy()
        cfg = saelens_cfg(0, x.shape[1], WIDTH, "jumprelu")
        cfg["metadata"]["hook_name"] = hook
        weights = random_sae(x, WIDTH, L0, rng)
        weights["threshold"] *= np.float32(1.01)  # off the calibration tokens' own pre-activations, where noise flips
        write_saelens_sae(tmp_path / "saes" / f"sae{i}", weights, cfg)
        names.append(f"sae{i}")
    ds = built(tmp_path, model, sentences[:SENTENCES], names, capsys)
    assert list(ds.hook.values) == hooks
    rows, positions = ds.sentence_index.values, ds.token_position.values
    for i, hook in enumerate(hooks):
        sae = SAE.load_from_disk(str(tmp_path / "saes" / f"sae{i}"), device="cpu")
        with torch.no_grad():
            expected = [sae.encode(site_value(tl, t, hook)).numpy() for t in tokens]
        want = np.stack([expected[s][p] for s, p in zip(rows, positions)])
        stored = ds.activations.values[i, :, :WIDTH]
        assert (stored > 0).mean() > 0.02, hook
        np.testing.assert_allclose(stored, want, rtol=1e-4, atol=1e-5 * np.abs(want).max(), err_msg=hook)


def test_centred_head_and_normalised_saes_on_gpt2_store_what_saelens_encodes(tmp_path, capsys):
    """GPT-2 SAEs trained on TransformerLens' center_writing_weights (embedding, resid_pre, attn_out, mlp_out
    centred; hook_z not), one head of hook_z, and a layer_norm-normalised SAE, against SAELens' encode of the centred
    model's activations."""
    from sae_lens import SAE
    from transformers import AutoTokenizer

    sentences = pd.read_csv(DEMO_CSV)["sentence"].tolist()
    model = write_architecture_model(tmp_path / "model", sentences[:50], "gpt2", num_layers=LAYERS)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokens = [tokenizer(s, return_tensors="pt")["input_ids"][0] for s in sentences[:SENTENCES]]
    tl = hooked_transformer(model, {"center_writing_weights": True})
    centring = {"model_from_pretrained_kwargs": {"center_writing_weights": True}}
    saes = {  # name: (hook, head, extra cfg fields)
        "embed": ("hook_embed", None, {}),
        "pre": ("blocks.1.hook_resid_pre", None, {}),
        "attn": ("blocks.1.hook_attn_out", None, {}),
        "mlp": ("blocks.1.hook_mlp_out", None, {}),
        "z": ("blocks.1.attn.hook_z", None, {}),
        "head": ("blocks.1.attn.hook_z", 2, {}),
        "normed": ("blocks.2.hook_resid_post", None, {"normalize_activations": "layer_norm"}),
    }

    def site(hook: str, head: int | None, t: torch.Tensor) -> torch.Tensor:
        value = site_value(tl, t, hook)
        return value if head is None else value.reshape(len(t), tl.cfg.n_heads, -1)[:, head]

    rng = np.random.default_rng(0)
    for name, (hook, head, fields) in saes.items():
        x = torch.cat([site(hook, head, t)[1:] for t in tokens]).numpy()
        cfg = saelens_cfg(0, x.shape[1], WIDTH, "jumprelu", **fields)
        cfg["metadata"] |= {"hook_name": hook, "hook_head_index": head, **centring}
        weights = random_sae(x, WIDTH, L0, rng)
        weights["threshold"] *= np.float32(1.01)
        write_saelens_sae(tmp_path / "saes" / name, weights, cfg)
    ds = built(tmp_path, model, sentences[:SENTENCES], list(saes), capsys)
    rows, positions = ds.sentence_index.values, ds.token_position.values
    for name, (hook, head, _) in saes.items():
        sae = SAE.load_from_disk(str(tmp_path / "saes" / name), device="cpu")
        with torch.no_grad():
            expected = [sae.encode(site(hook, head, t)).numpy() for t in tokens]
        want = np.stack([expected[s][p] for s, p in zip(rows, positions)])
        stored = ds.activations.sel(config=name).values[:, :WIDTH]
        assert (stored > 0).mean() > 0.02, name
        np.testing.assert_allclose(stored, want, rtol=1e-4, atol=1e-5 * np.abs(want).max(), err_msg=name)
    uncentred = hooked_transformer(model)
    assert not np.allclose(
        site_value(uncentred, tokens[0], "blocks.1.hook_resid_pre"), site("blocks.1.hook_resid_pre", None, tokens[0])
    )


def test_saes_trained_without_bos_read_every_token_from_position_0(tmp_path, capsys):
    """SAELens' prepend_bos: false: nothing before a sentence, its first token a fragment at position 0; against
    SAELens' encode of TransformerLens' activations of `to_tokens(prepend_bos=False)`. SAEs that disagree on it are
    refused in one line, in one build and when extending a store."""
    from sae_lens import SAE

    sentences = pd.read_csv(DEMO_CSV)["sentence"].tolist()
    model = write_architecture_model(tmp_path / "model", sentences[:50], "gpt2", num_layers=LAYERS)
    tl = hooked_transformer(model)
    tokens = [tl.to_tokens(s, prepend_bos=False)[0] for s in sentences[:SENTENCES]]
    hook = "blocks.1.hook_resid_post"
    x = torch.cat([site_value(tl, t, hook) for t in tokens]).numpy()
    rng = np.random.default_rng(0)
    for name, prepend in [("nobos", False), ("bos", True)]:
        cfg = saelens_cfg(1, x.shape[1], WIDTH, "jumprelu")
        cfg["metadata"] |= {"hook_name": hook, "prepend_bos": prepend}
        weights = random_sae(x, WIDTH, L0, rng)
        weights["threshold"] *= np.float32(1.01)
        write_saelens_sae(tmp_path / "saes" / name, weights, cfg)
    ds = built(tmp_path, model, sentences[:SENTENCES], ["nobos"], capsys)
    assert ds.attrs["prepend_bos"] is False
    rows, positions = ds.sentence_index.values, ds.token_position.values
    assert (positions == 0).sum() == SENTENCES and len(positions) == sum(len(t) for t in tokens)
    sae = SAE.load_from_disk(str(tmp_path / "saes" / "nobos"), device="cpu")
    with torch.no_grad():
        expected = [sae.encode(site_value(tl, t, hook)).numpy() for t in tokens]
    want = np.stack([expected[s][p] for s, p in zip(rows, positions)])
    stored = ds.activations.values[0, :, :WIDTH]
    assert (stored > 0).mean() > 0.02
    np.testing.assert_allclose(stored, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    before = sorted((p, p.read_bytes()) for p in (tmp_path / "store.zarr").rglob("*") if p.is_file())
    config = tmp_path / "more.json"
    config.write_text(
        json.dumps({"model": str(model), "sae_repo": str(tmp_path / "saes"), "configs": [{"path": "bos"}]})
    )
    code = main(["build", "--output", str(tmp_path / "store.zarr"), "--extend", "--config", str(config), "--quiet"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("saezarr:")]
    assert code == 2 and len(lines) == 1 and "the store's sentences have nothing first" in lines[0], lines
    assert sorted((p, p.read_bytes()) for p in (tmp_path / "store.zarr").rglob("*") if p.is_file()) == before
    entries = [{"path": "nobos"}, {"path": "bos"}]
    config.write_text(json.dumps({"model": str(model), "sae_repo": str(tmp_path / "saes"), "configs": entries}))
    csv = tmp_path / "few.csv"
    code = main(["build", "--input", str(csv), "--output", str(tmp_path / "mixed.zarr"), "--config", str(config)])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("saezarr:")]
    assert code == 2 and len(lines) == 1 and "a store holds one tokenization" in lines[0], lines
    assert not (tmp_path / "mixed.zarr").exists()


def test_a_release_that_says_its_saes_were_centred_is_centred_as_saelens_overrides_the_cfg(tmp_path, capsys):
    """gpt2-small-res-jb's centring comes from SAELens' registry (config_overrides), not its cfg.json: the config
    file's model_from_pretrained_kwargs override the SAE's own."""
    from sae_lens import SAE

    sentences = pd.read_csv(DEMO_CSV)["sentence"].tolist()
    model = write_architecture_model(tmp_path / "model", sentences[:50], "gpt2", num_layers=LAYERS)
    tl = hooked_transformer(model, {"center_writing_weights": True})
    tokens = [tl.to_tokens(s)[0] for s in sentences[:SENTENCES]]
    hook = "blocks.1.hook_resid_pre"
    x = torch.cat([site_value(tl, t, hook)[1:] for t in tokens]).numpy()
    cfg = saelens_cfg(1, x.shape[1], WIDTH, "jumprelu")
    cfg["metadata"]["hook_name"] = hook  # no model_from_pretrained_kwargs of its own
    weights = random_sae(x, WIDTH, L0, np.random.default_rng(0))
    weights["threshold"] *= np.float32(1.01)
    write_saelens_sae(tmp_path / "saes" / "pre", weights, cfg)
    centring = {"center_writing_weights": True}
    ds = built(tmp_path, model, sentences[:SENTENCES], ["pre"], capsys, model_from_pretrained_kwargs=centring)
    sae = SAE.load_from_disk(str(tmp_path / "saes" / "pre"), device="cpu")
    with torch.no_grad():
        expected = [sae.encode(site_value(tl, t, hook)).numpy() for t in tokens]
    want = np.stack([expected[s][p] for s, p in zip(ds.sentence_index.values, ds.token_position.values)])
    stored = ds.activations.values[0, :, :WIDTH]
    assert (stored > 0).mean() > 0.02
    np.testing.assert_allclose(stored, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
