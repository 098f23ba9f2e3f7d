"""Each SAE's site comes from what its source says; a site saezarr does not read, or a training it does not
reproduce, is refused in one line before the model loads, and nothing is written. What holds builds as before."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import saezarr
from saezarr.cli import main
from saezarr.errors import SaezarrError
from saezarr.hub import Source
from saezarr.inputs.configs import SAEConfig
from saezarr.models.language_model import ModelInfo
from saezarr.models.names import names_model
from saezarr.saes.locate import locate_sae
from saezarr.sites import Site, hf_hook_site
from saezarr.testing.synthetic import (
    calibration_residuals,
    random_sae,
    saelens_cfg,
    write_gemma_scope_2_sae,
    write_saelens_sae,
)


def _snapshot(root: Path) -> list[tuple[Path, bytes]]:
    return sorted((p, p.read_bytes()) for p in root.rglob("*") if p.is_file())


def _csv(folder: Path, sentences, n: int = 6) -> Path:
    lines = ["sentence,concept_strength_label"] + [f'"{s}",{i % 4}' for i, s in enumerate(sentences[:n])]
    path = folder / "few.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _build(root: Path, csv: Path, model: str, sae_repo: str, entries: list[dict], name: str, capsys):
    """Run `saezarr build` on a config file of `entries`; return (exit code, saezarr's stderr lines, output)."""
    config = root / f"{name}.json"
    config.write_text(json.dumps({"model": model, "sae_repo": sae_repo, "configs": entries}))
    output = root / f"{name}.zarr"
    code = main(["build", "--input", str(csv), "--output", str(output), "--config", str(config), "--quiet"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("saezarr:")]
    return code, lines, output


@pytest.fixture(scope="module")
def sites(tiny, tmp_path_factory):
    """SAEs of one layer-0 JumpReLU SAE's weights, in every naming and settings case the tests need."""
    root = tmp_path_factory.mktemp("sites")
    x = calibration_residuals(tiny.model, [0, 3], list(tiny.sentences))
    rng = np.random.default_rng(3)
    weights = random_sae(x[0], 48, 6, rng)
    for family in ("mlp", "att", "transcoders", "res"):  # Gemma Scope 1 repositories, named as published
        folder = root / f"gemma-scope-2b-pt-{family}" / "layer_0/width_16k/average_l0_6"
        folder.mkdir(parents=True)
        np.savez(folder / "params.npz", **weights)
    embedding = root / "gemma-scope-2b-pt-res/embedding/width_4k/average_l0_6"
    embedding.mkdir(parents=True)
    np.savez(embedding / "params.npz", **weights)
    for prefix in ("mlp_out_all", "attn_out", "transcoder_all", "resid_post_all"):  # Gemma Scope 2 prefixes
        write_gemma_scope_2_sae(root / "gs2" / prefix / "layer_0_width_16k_l0_small", weights)
    hooks = {"mlp": "model.layers.0.post_feedforward_layernorm.output", "resid": "model.layers.0.output"}
    hooks |= {"down": "model.layers.0.mlp.down_proj.output", "act": "model.layers.0.mlp.act_fn.output"}
    for name, hook in hooks.items():
        write_gemma_scope_2_sae(
            root / f"gs2-{name}" / "layer_0_width_16k_l0_small",
            weights,
            {"architecture": "jump_relu", "hf_hook_point_in": hook},
        )
    plain = saelens_cfg(0, 32, 48, "jumprelu")
    write_saelens_sae(root / "plain" / "sae", weights, plain)
    kwargs = {"center_writing_weights": True, "fold_ln": True, "center_unembed": True}
    holding = {**plain, "metadata": {**plain["metadata"], "model_name": "model", "context_size": 1024}}
    holding["metadata"].update(prepend_bos=True, model_from_pretrained_kwargs=kwargs)
    write_saelens_sae(root / "holding" / "sae", weights, holding)
    csv = _csv(root, tiny.sentences)
    return root, csv


@pytest.mark.parametrize(
    "repo, path, site",
    [
        ("gemma-scope-2b-pt-mlp", "layer_0/width_16k/average_l0_6", "blocks.0.hook_mlp_out"),
        ("gemma-scope-2b-pt-att", "layer_0/width_16k/average_l0_6", "blocks.0.attn.hook_z"),
        ("gemma-scope-2b-pt-transcoders", "layer_0/width_16k/average_l0_6", "blocks.0.ln2.hook_normalized"),
        ("gemma-scope-2b-pt-res", "embedding/width_4k/average_l0_6", "hook_embed"),
        ("gs2", "mlp_out_all/layer_0_width_16k_l0_small", "blocks.0.hook_mlp_out"),
        ("gs2", "attn_out/layer_0_width_16k_l0_small", "blocks.0.attn.hook_z"),
        ("gs2", "transcoder_all/layer_0_width_16k_l0_small", "blocks.0.mlp.hook_in"),
        ("gs2-mlp", "layer_0_width_16k_l0_small", "blocks.0.hook_mlp_out"),
    ],
)
def test_each_gemma_scope_family_reads_the_site_its_name_or_config_says(
    tiny, sites, repo, path, site, tmp_path, capsys
):
    root, csv = sites
    code, lines, output = _build(tmp_path, csv, str(tiny.model), str(root / repo), [{"path": path}], "read", capsys)
    assert code == 0 and not lines, lines
    store = saezarr.open_store(output)
    assert list(store.hook.values) == [site] and int(store.layer.values[0]) == 0
    assert np.isfinite(store.activations.values).all()  # the values, site by site: tests/build/test_build_sites.py


@pytest.mark.parametrize(
    "repo, entry, message",
    [
        (
            "plain",
            {"path": "sae", "hook": "blocks.0.mlp.hook_post"},
            "reads blocks.0.mlp.hook_post (the config file's hook), a site saezarr does not read",
        ),
        ("gs2-down", {"path": "layer_0_width_16k_l0_small"}, "reads model.layers.0.mlp.down_proj.output"),
        ("gs2-act", {"path": "layer_0_width_16k_l0_small"}, "reads model.layers.0.mlp.act_fn.output"),
    ],
)
def test_a_site_saezarr_does_not_read_is_refused_in_one_line_before_the_model_loads(
    tiny, sites, repo, entry, message, tmp_path, capsys
):
    root, csv = sites
    before = _snapshot(root)
    code, lines, output = _build(tmp_path, csv, str(tiny.model), str(root / repo), [entry], "refused", capsys)
    assert code == 2 and len(lines) == 1 and message in lines[0], lines
    assert not output.exists()
    assert _snapshot(root) == before


def test_a_site_the_models_architecture_lacks_is_refused_naming_both(tmp_path, capsys):
    from saezarr.testing.synthetic import write_architecture_model

    sentences = ["one two three", "four five six"]
    model = write_architecture_model(tmp_path / "pythia", sentences, "gpt_neox")
    rng = np.random.default_rng(0)
    weights = random_sae(rng.standard_normal((50, 32)).astype(np.float32), 16, 4, rng)
    cfg = saelens_cfg(0, 32, 16, "jumprelu")
    cfg["metadata"]["hook_name"] = "blocks.0.hook_resid_mid"
    write_saelens_sae(tmp_path / "saes" / "mid", weights, cfg)
    csv = _csv(tmp_path, sentences)
    code, lines, output = _build(tmp_path, csv, str(model), str(tmp_path / "saes"), [{"path": "mid"}], "mid", capsys)
    assert code == 2 and len(lines) == 1, lines
    assert (
        "the SAE reads blocks.0.hook_resid_mid, but gpt_neox models: the model's site table does not place" in lines[0]
    )
    assert not output.exists()


def test_every_reading_of_the_residual_stream_gives_the_same_store_and_no_note(tiny, sites, capsys):
    root, csv = sites
    built = {}
    for repo, path in [
        ("gemma-scope-2b-pt-res", "layer_0/width_16k/average_l0_6"),
        ("gs2", "resid_post_all/layer_0_width_16k_l0_small"),
        ("gs2-resid", "layer_0_width_16k_l0_small"),
        ("plain", "sae"),
        ("holding", "sae"),  # model_name, context_size, prepend_bos and centring (a no-op on RMSNorm) all hold
    ]:
        entry = {"path": path, "layer": 0, "name": "sae"}
        code, lines, output = _build(root, csv, str(tiny.model), str(root / repo), [entry], f"ok-{repo}", capsys)
        assert code == 0 and not [line for line in lines if "note" in line], lines
        built[repo] = saezarr.open_store(output).activations.values
    first = built.pop("gemma-scope-2b-pt-res")
    assert np.abs(first).sum() > 0
    for values in built.values():
        np.testing.assert_array_equal(values, first)


def test_a_site_nothing_says_is_read_as_resid_post_with_a_note_unless_the_entry_says_it(tiny, tmp_path, capsys):
    csv = _csv(tmp_path, tiny.sentences)
    entry = {"path": tiny.configs[0].path}
    code, lines, _ = _build(tmp_path, csv, str(tiny.model), str(tiny.saes), [entry], "unsaid", capsys)
    notes = [line for line in lines if line.startswith("saezarr: note:")]
    assert code == 0 and len(notes) == 1, lines
    assert "nothing says which site the SAE reads" in notes[0] and "blocks.0.hook_resid_post" in notes[0]
    said = {**entry, "hook": "blocks.0.hook_resid_post"}
    code, lines, _ = _build(tmp_path, csv, str(tiny.model), str(tiny.saes), [said], "said", capsys)
    assert code == 0 and not [line for line in lines if "note" in line], lines


def _without_bos(model: Path) -> None:
    """Make the model's tokenizer one with no BOS token (as Qwen's): none named, none put before a sentence."""
    settings = json.loads((model / "tokenizer_config.json").read_text())
    settings.update(bos_token=None, add_bos_token=False)
    (model / "tokenizer_config.json").write_text(json.dumps(settings))
    tokenizer = json.loads((model / "tokenizer.json").read_text())
    tokenizer["post_processor"] = None
    (model / "tokenizer.json").write_text(json.dumps(tokenizer))


def test_a_tokenizer_without_bos_gets_eos_first_as_transformer_lens_puts_it(tmp_path, capsys):
    pytest.importorskip("transformer_lens")
    from tlref import hooked_transformer

    from saezarr.testing.synthetic import DEMO_CSV, write_architecture_model

    sentences = pd.read_csv(DEMO_CSV)["sentence"].tolist()[:6]
    model = write_architecture_model(tmp_path / "qwen3", sentences, "qwen3")
    _without_bos(model)
    rng = np.random.default_rng(0)
    cfg = saelens_cfg(1, 32, 16, "jumprelu")
    write_saelens_sae(
        tmp_path / "saes" / "sae", random_sae(rng.standard_normal((50, 32)).astype(np.float32), 16, 4, rng), cfg
    )
    csv = _csv(tmp_path, sentences)
    code, lines, output = _build(tmp_path, csv, str(model), str(tmp_path / "saes"), [{"path": "sae"}], "nobos", capsys)
    assert code == 0, lines
    code = main(["build", "--output", str(tmp_path / "res.zarr"), "--input", str(csv), "--quiet", "--residuals", "1"]
                + ["--config", str(tmp_path / "nobos.json")])  # fmt: skip
    assert code == 0
    stored = saezarr.open_store(tmp_path / "res.zarr")
    tl = hooked_transformer(model)
    assert tl.tokenizer.bos_token_id == tl.tokenizer.eos_token_id == 1  # TransformerLens' own fallback
    for row, sentence in enumerate(sentences):
        # TransformerLens puts its BOS (here EOS) first as text; this Gemma-like tokenizer would then drop the first
        # word's '▁' (Qwen's byte-level one does not change), so the reference runs on EOS + the sentence's own ids
        ids = tl.tokenizer(sentence)["input_ids"]
        tokens = torch.tensor([tl.tokenizer.bos_token_id, *ids])
        _, cache = tl.run_with_cache(tokens[None])
        expected = cache["blocks.1.hook_resid_post"][0].detach().numpy()
        mine = stored.isel(fragment=np.flatnonzero(stored.sentence_index.values == row))
        np.testing.assert_allclose(
            mine.residuals.sel(residual_layer=1).values, expected[mine.token_position.values], rtol=1e-4, atol=1e-5
        )


def test_a_model_whose_tokenizer_has_neither_bos_nor_eos_is_refused(tiny, tmp_path, capsys):
    model = tmp_path / "no-bos-model"
    shutil.copytree(tiny.model, model)
    _without_bos(model)
    settings = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**settings, "eos_token": None}))
    csv = _csv(tmp_path, tiny.sentences)
    before = _snapshot(tmp_path)
    entry = {"path": tiny.configs[0].path, "hook": "blocks.0.hook_resid_post"}
    code, lines, output = _build(tmp_path, csv, str(model), str(tiny.saes), [entry], "nobos", capsys)
    assert code == 2 and len(lines) == 1 and "its tokenizer has neither a BOS nor an EOS token" in lines[0], lines
    assert not output.exists()
    assert all(path.read_bytes() == data for path, data in before)


def test_centred_residuals_are_centred_on_a_layernorm_model_only(sites):
    root, _ = sites
    holding = Source(str(root / "holding"), "local", root / "holding")
    model = Source(str(root / "model"), "local", root / "model")
    layer_norm = ModelInfo(model, num_layers=1, hidden_size=32, max_tokens=None, rms_norm=False)
    assert locate_sae(holding, SAEConfig(0, None, "sae"), layer_norm).layout.centred
    rms = ModelInfo(model, num_layers=1, hidden_size=32, max_tokens=None, rms_norm=True)
    located = locate_sae(holding, SAEConfig(0, None, "sae"), rms)
    assert located.config.hook == "blocks.0.hook_resid_post" and not located.layout.centred
    unknown = ModelInfo(model, num_layers=1, hidden_size=32, max_tokens=None, rms_norm=None)
    with pytest.raises(SaezarrError, match="center_writing_weights, which saezarr cannot tell applies"):
        locate_sae(holding, SAEConfig(0, None, "sae"), unknown)


def test_model_names_are_compared_as_transformer_lens_names_them(tmp_path):
    hub = Source("google/gemma-2-2b", "abc", None)
    assert names_model("gemma-2-2b", hub) and names_model("google/gemma-2-2b", hub)
    assert not names_model("gemma-2-2b-it", hub) and not names_model("gemma-2-9b", hub)
    assert names_model("gpt2-small", Source("gpt2", "abc", None))
    cached = tmp_path / "models--EleutherAI--pythia-70m-deduped" / "snapshots" / ("0" * 40)
    assert names_model("pythia-70m-deduped", Source(str(cached), "local", cached))
    assert not names_model("pythia-160m", Source(str(cached), "local", cached))


def test_hugging_face_module_hooks_name_their_sites():
    expected = {
        "model.layers.4.output": "blocks.4.hook_resid_post",
        "model.language_model.layers.4": "blocks.4.hook_resid_post",
        "model.layers.4.self_attn.o_proj.input": "blocks.4.attn.hook_z",
        "model.layers.4.post_attention_layernorm.output": "blocks.4.hook_attn_out",
        "model.layers.4.pre_feedforward_layernorm.output": "blocks.4.mlp.hook_in",
        "model.layers.4.post_feedforward_layernorm.output": "blocks.4.hook_mlp_out",
        "model.layers.4.mlp.down_proj.output": "model.layers.4.mlp.down_proj.output",  # unknown: refused
    }
    for hook, site in expected.items():
        assert hf_hook_site(hook, "x").hook == site
    assert Site("blocks.4.hook_resid_post", "x").is_read and Site("hook_embed", "x").is_read
    assert not Site("blocks.4.mlp.hook_post", "x").is_read and not Site("blocks.4.hook_embed", "x").is_read


@pytest.mark.parametrize("residuals", [False, True])
def test_extending_a_store_with_an_sae_of_another_site_equals_building_it_alone(
    tiny, sites, residuals, tmp_path, capsys
):
    """With the residual stream kept too (resid_post only), the new site is read from the model all the same."""
    root, csv = sites
    repo = str(root / "gs2")  # one repository holds both sites' SAEs
    res = [{"path": "resid_post_all/layer_0_width_16k_l0_small", "name": "res"}]
    mlp = [{"path": "mlp_out_all/layer_0_width_16k_l0_small", "name": "mlp"}]
    if residuals:
        config = tmp_path / "store.json"
        config.write_text(json.dumps({"model": str(tiny.model), "sae_repo": repo, "configs": res}))
        store = tmp_path / "store.zarr"
        args = ["build", "--input", str(csv), "--output", str(store), "--config", str(config), "--quiet"]
        code = main([*args, "--residuals", "0"])
    else:
        code, _, store = _build(tmp_path, csv, str(tiny.model), repo, res, "store", capsys)
    assert code == 0
    config = tmp_path / "more.json"
    config.write_text(json.dumps({"model": str(tiny.model), "sae_repo": repo, "configs": mlp}))
    code = main(["build", "--output", str(store), "--extend", "--config", str(config), "--quiet"])
    assert code == 0, capsys.readouterr().err
    code, _, alone = _build(tmp_path, csv, str(tiny.model), repo, mlp, "alone", capsys)
    grown, fresh = saezarr.open_store(store), saezarr.open_store(alone)
    assert list(grown.hook.values) == ["blocks.0.hook_resid_post", "blocks.0.hook_mlp_out"]
    np.testing.assert_array_equal(
        grown.activations.sel(config="mlp").values, fresh.activations.sel(config="mlp").values
    )


def test_a_model_type_without_a_site_table_is_refused_before_its_weights(tiny, tmp_path, capsys):
    from transformers import BloomConfig

    model = tmp_path / "bloom-like"
    BloomConfig(n_layer=2, hidden_size=32, n_head=2, vocab_size=512, bos_token_id=0, eos_token_id=0).save_pretrained(
        model
    )
    csv = _csv(tmp_path, tiny.sentences)
    before = _snapshot(tmp_path)
    entry = {"path": tiny.configs[0].path, "hook": "blocks.0.hook_resid_post"}
    code, lines, output = _build(tmp_path, csv, str(model), str(tiny.saes), [entry], "bloom", capsys)
    assert code == 2 and len(lines) == 1, lines
    assert f"--model {model}: unknown model type 'bloom' (known: gemma, gemma2" in lines[0]
    assert "saezarr does not know where its sites are" in lines[0]
    assert not output.exists() and all(path.read_bytes() == data for path, data in before)


def test_a_selection_never_looks_at_the_saes_it_leaves_out(tiny, sites, tmp_path, capsys):
    root, csv = sites
    entries = [
        {"path": "sae", "layer": 0, "name": "kept"},
        {"path": "sae", "layer": 1, "name": "left", "hook": "blocks.1.mlp.hook_post"},  # refused if looked at
    ]
    config = tmp_path / "two.json"
    config.write_text(json.dumps({"model": str(tiny.model), "sae_repo": str(root / "plain"), "configs": entries}))
    output = tmp_path / "two.zarr"
    args = ["build", "--input", str(csv), "--config", str(config), "--quiet", "--output"]
    assert main([*args, str(output), "--layers", "0"]) == 0
    assert list(saezarr.open_store(output).config.values) == ["kept"]
    assert main([*args, str(tmp_path / "named.zarr"), "--configs", "kept"]) == 0
    assert main([*args, str(tmp_path / "all.zarr")]) == 2
    assert "blocks.1.mlp.hook_post" in capsys.readouterr().err
