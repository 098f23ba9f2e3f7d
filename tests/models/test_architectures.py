"""Site tables: where each site lives, per model type. A table registered from outside the package (an entry point of
a distribution on PYTHONPATH) makes `build` read BLOOM, whose blocks are in `.h`; without it BLOOM is refused in one
line. The stored latents and residuals equal the model's own hidden states, taken before the final LayerNorm as
TransformerLens takes hook_resid_post."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from clitools import run_cli

from saezarr.cli import main
from saezarr.compat import dtype_kwargs
from saezarr.inputs.configs import SAEConfig
from saezarr.models.architectures import ARCHITECTURES, SiteNotInTable, layer_sites
from saezarr.models.language_model import SiteReader, resolve_model
from saezarr.testing.synthetic import DEMO_CSV, random_sae, write_architecture_model, write_config_file

LAYERS = 3
SAE_LAYERS = (0, LAYERS - 1)  # the last layer's resid_post is before ln_f, which HF's last hidden state is after
WIDTH, L0 = 48, 6
GATE_MARGIN = 1e-5  # entries whose pre-activation is this close to the threshold may flip either way
PLUGIN = """from saezarr.models.architectures import layer_sites

bloom = layer_sites("h")
"""


def hidden_states(model_folder: Path, sentences: list[str], final_norm: bool) -> list[np.ndarray]:
    """Per sentence, HF's `output_hidden_states` [layer + 1, seq, hidden], each sentence run alone and unpadded;
    without `final_norm`, ln_f is the identity, so the last entry is the last block's own output."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    model = AutoModel.from_pretrained(model_folder, attn_implementation="eager", **dtype_kwargs(torch.float32)).eval()
    if not final_norm:
        model.ln_f = torch.nn.Identity()
    out = []
    with torch.inference_mode():
        for sentence in sentences:
            ids = tokenizer(sentence, return_tensors="pt", split_special_tokens=True)["input_ids"]
            assert ids[0, 0] == tokenizer.bos_token_id
            states = model(input_ids=ids, output_hidden_states=True).hidden_states
            out.append(torch.stack(states)[:, 0].numpy())
    return out


@pytest.fixture(scope="module")
def bloom(tmp_path_factory):
    """A tiny BLOOM, JumpReLU SAEs on its first and last layers calibrated on its own hidden states, a config file,
    a CSV, the hidden states with and without ln_f, and a folder holding the site-table plugin."""
    root = tmp_path_factory.mktemp("bloom")
    corpus = pd.read_csv(DEMO_CSV)["sentence"].tolist()
    sentences = corpus[:8]
    model = write_architecture_model(root / "bloom", corpus, "bloom", num_layers=LAYERS)
    states = hidden_states(model, sentences, final_norm=False)
    rng = np.random.default_rng(5)
    configs = [SAEConfig(layer, L0, f"layer_{layer}/width_16k/average_l0_{L0}") for layer in SAE_LAYERS]
    for config in configs:
        x = np.concatenate([s[config.layer + 1, 1:] for s in states])
        (root / "saes" / config.path).mkdir(parents=True)
        np.savez(root / "saes" / config.path / "params.npz", **random_sae(x, WIDTH, L0, rng))
    config = write_config_file(root / "config.json", str(model), str(root / "saes"), configs)
    csv = root / "few.csv"
    csv.write_text("sentence,concept_strength_label\n" + "".join(f'"{s}",{i % 4}\n' for i, s in enumerate(sentences)))
    plugin = root / "plugin"
    (plugin / "toyplugin-0.1.dist-info").mkdir(parents=True)
    (plugin / "toyplugin.py").write_text(PLUGIN)
    (plugin / "toyplugin-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: toyplugin\nVersion: 0.1\n"
    )
    (plugin / "toyplugin-0.1.dist-info" / "entry_points.txt").write_text(
        "[saezarr.architectures]\nbloom = toyplugin:bloom\n"
    )
    return {
        "root": root,
        "model": model,
        "config": config,
        "csv": csv,
        "plugin": plugin,
        "states": states,
        "normed": hidden_states(model, sentences, final_norm=True),
    }


def _build(bloom, name: str, plugin: bool, *extra: str):
    env = {"PYTHONPATH": os.pathsep.join([str(bloom["plugin"]), os.environ.get("PYTHONPATH", "")])} if plugin else None
    output = bloom["root"] / f"{name}.zarr"
    args = ["build", "--input", bloom["csv"], "--output", output, "--config", bloom["config"], "--quiet", *extra]
    return run_cli(*args, env=env), output


def test_without_a_site_table_bloom_is_refused_in_one_line(bloom):
    result, output = _build(bloom, "refused", plugin=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert f"--model {bloom['model']}: unknown model type 'bloom' (known: gemma, gemma2" in lines[0]
    assert "saezarr does not know where its sites are" in lines[0] and "saezarr.architectures" in lines[0]
    assert not output.exists()


def test_a_site_table_from_a_plugin_makes_build_read_bloom_before_its_final_layernorm(bloom):
    result, output = _build(bloom, "read", True, "--residuals", "all", "--chunk-fragments", "32")
    assert result.returncode == 0, result.stderr
    ds = xr.open_zarr(output)
    sentences, positions = ds.sentence_index.values, ds.token_position.values
    states = np.stack([bloom["states"][s][:, p] for s, p in zip(sentences, positions)], axis=1)
    assert ds.residuals.shape == (LAYERS, len(sentences), 32)
    np.testing.assert_allclose(ds.embeddings.values, states[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds.residuals.values, states[1:], rtol=1e-5, atol=1e-5)
    # HF's last hidden state is after ln_f; TransformerLens' (and saezarr's) resid_post of the last layer is before
    normed = np.stack([bloom["normed"][s][-1, p] for s, p in zip(sentences, positions)])
    assert not np.allclose(ds.residuals.values[-1], normed, atol=1e-2)
    for index, layer in enumerate(SAE_LAYERS):
        with np.load(bloom["root"] / "saes" / f"layer_{layer}/width_16k/average_l0_{L0}" / "params.npz") as sae:
            pre = states[layer + 1].astype(np.float64) @ sae["W_enc"] + sae["b_enc"]
            threshold = sae["threshold"]
        expected = np.where(pre > threshold, pre, 0.0)
        clear = np.abs(pre - threshold) >= GATE_MARGIN
        stored = ds.activations.values[index]
        assert clear.mean() > 0.99 and (stored > 0).any()
        np.testing.assert_allclose(stored[clear], expected[clear], rtol=1e-4, atol=1e-5)
        assert np.array_equal(stored[clear] > 0, expected[clear] > 0)


def _config_folder(tmp_path: Path, model_type: str) -> Path:
    """A folder holding a tiny config.json of the model type (no weights)."""
    from transformers import AutoConfig

    dims = dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64, vocab_size=64)
    dims.update(num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    if model_type == "gemma3":  # multimodal: the decoder's dims are its text config's
        config = AutoConfig.for_model(model_type, text_config=dims)
    else:
        config = AutoConfig.for_model(model_type, **dims)
    folder = tmp_path / model_type
    config.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("model_type", list(ARCHITECTURES))
def test_every_built_in_table_places_its_sites_in_its_model_types_skeleton(model_type, tmp_path):
    info = resolve_model(str(_config_folder(tmp_path, model_type)))
    assert info.num_layers == 2 and info.hidden_size == 32


def test_a_table_that_places_a_site_where_the_model_has_no_module_is_refused_in_one_line(bloom, capsys):
    ARCHITECTURES.register("bloom", layer_sites("layers"))
    try:
        code = main(["build", "--input", str(bloom["csv"]), "--output", str(bloom["root"] / "wrong.zarr")]
                    + ["--config", str(bloom["config"]), "--quiet"])  # fmt: skip
    finally:
        ARCHITECTURES.unregister("bloom")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("saezarr:")]
    assert code == 2 and len(lines) == 1, lines
    assert "its site table places hook_resid_pre of layer 0 at layers.0, which BloomModel does not have" in lines[0]
    assert not (bloom["root"] / "wrong.zarr").exists()


def test_a_site_the_table_does_not_place_is_refused_by_the_reader(tiny):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny.model, attn_implementation="eager", **dtype_kwargs(torch.float32)).eval()
    with pytest.raises(
        SiteNotInTable, match="does not place blocks.0.mlp.hook_post .it places attn.hook_z, hook_attn_out, "
    ):
        with SiteReader(model, ["blocks.0.mlp.hook_post"]):
            pass
    assert not model._forward_hooks and not any(m._forward_hooks for m in model.modules())


def test_a_gpt_neox_without_parallel_blocks_is_refused_from_its_config(tmp_path):
    from saezarr.errors import InputError

    folder = _config_folder(tmp_path, "gpt_neox")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "use_parallel_residual": False}))
    with pytest.raises(InputError, match="use_parallel_residual is false .attention, then the MLP.*refused"):
        resolve_model(str(folder))
    (folder / "config.json").write_text(json.dumps({**config, "use_parallel_residual": True}))
    assert resolve_model(str(folder)).model_type == "gpt_neox"
