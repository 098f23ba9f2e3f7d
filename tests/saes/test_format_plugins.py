"""An SAE format and an activation function from outside the package, registered through entry points, run
through the real `build` command: the toy format's SAEs give the latents of the same weights in SAELens' format,
the toy activation is applied wherever an SAE names it, and refusals list what is registered."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from clitools import run_cli
from plugintools import with_plugins, write_plugin

from saezarr.saes.formats import formats_for
from saezarr.testing.synthetic import calibration_residuals, random_sae, saelens_cfg, write_saelens_sae

LAYER, D_MODEL, WIDTH = 12, 32, 128  # the tiny model's hidden size
HOOK = f"blocks.{LAYER}.hook_resid_post"

TOYPLUGIN = '''
"""A toy SAE format (toy.json + toy.npz holding `encoder` and `bias`) and a capped ReLU."""

import json

from saezarr.saes.activations import Activation
from saezarr.saes.description import SAEDescription
from saezarr.saes.formats import SAEFormat
from saezarr.sites import Site


def describe(config, fetch, repo):
    settings_file = fetch("toy.json", False)
    if settings_file is None:
        return None
    settings = json.loads(settings_file.read_text())
    site = Site(settings["hook"], f"hook in {settings_file}")
    weights = fetch("toy.npz", True)
    return SAEDescription("toy", weights, settings["activation"], "encoder", "bias", layer=site.layer, site=site)


def capped_relu(pre, bounds):
    return pre.masked_fill_(pre <= 0, 0.0).clamp_(max=1.0)


toy_format = SAEFormat("toy", describe, "toy.json", "toy.json + toy.npz", can_open=lambda path: path.endswith(".toy"))
capped = Activation("capped_relu", capped_relu)
'''
ENTRY_POINTS = {"sae_formats": {"toy": "toyplugin:toy_format"}, "activations": {"capped_relu": "toyplugin:capped"}}


def write_toy_sae(folder: Path, weights: dict[str, np.ndarray], activation: str) -> None:
    """One SAE in the toy format."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "toy.npz", encoder=weights["W_enc"], bias=weights["b_enc"])
    (folder / "toy.json").write_text(json.dumps({"hook": HOOK, "activation": activation}))


def write_config(path: Path, model: Path, saes: Path, folders: dict[str, str]) -> Path:
    """A config file of one SAE per {name: folder}."""
    entries = [{"path": folder, "name": name} for name, folder in folders.items()]
    path.write_text(json.dumps({"model": str(model), "sae_repo": str(saes), "configs": entries}))
    return path


@pytest.fixture(scope="module")
def plugged(tiny, tmp_path_factory) -> dict:
    """The toy plugin, one ReLU SAE's weights in SAELens' and the toy format (ReLU and capped), and a store built
    from them with the plugin on PYTHONPATH."""
    root = tmp_path_factory.mktemp("plugins")
    env = with_plugins(write_plugin(root / "plugins", "toyplugin", TOYPLUGIN, ENTRY_POINTS))
    x = calibration_residuals(tiny.model, [LAYER], tiny.sentences)[LAYER]
    relu = {k: v for k, v in random_sae(x, WIDTH, 30, np.random.default_rng(7)).items() if k != "threshold"}
    saes = root / "saes"
    write_saelens_sae(saes / "saelens", relu, saelens_cfg(LAYER, D_MODEL, WIDTH, "standard"))
    write_saelens_sae(saes / "saelens_capped", relu, saelens_cfg(LAYER, D_MODEL, WIDTH, "capped_relu"))
    write_toy_sae(saes / "relu.toy", relu, "relu")
    write_toy_sae(saes / "capped", relu, "capped_relu")
    write_saelens_sae(saes / "claimed.toy", relu, saelens_cfg(LAYER, D_MODEL, WIDTH, "standard"))
    write_toy_sae(saes / "claimed.toy", relu, "capped_relu")  # the folder's name claims the toy format: read first
    folders = {n: n for n in ("saelens", "saelens_capped", "relu.toy", "capped", "claimed.toy")}
    config = write_config(root / "config.json", tiny.model, saes, folders)
    store = root / "store.zarr"
    built = run_cli("build", "--input", tiny.csv, "--output", store, "--config", config, "--quiet", env=env)
    assert built.returncode == 0, built.stderr
    group = zarr.open_group(store, mode="r")
    names = [str(name) for name in group["config"][:]]
    latents = {name: group["activations"][i] for i, name in enumerate(names)}
    architectures = dict(zip(names, (str(a) for a in group["architecture"][:]), strict=True))
    return {"root": root, "env": env, "saes": saes, "tiny": tiny, "latents": latents, "architectures": architectures}


def test_a_toy_format_from_outside_gives_the_latents_of_the_same_weights_in_saelens_format(plugged):
    latents = plugged["latents"]
    assert plugged["architectures"]["relu.toy"] == "relu"
    assert (latents["saelens"] > 0).any() and (latents["saelens"] == 0).any()
    np.testing.assert_array_equal(latents["relu.toy"], latents["saelens"])


def test_a_toy_activation_from_outside_is_applied_in_any_format(plugged):
    latents = plugged["latents"]
    capped = np.minimum(latents["saelens"], np.float32(1.0))
    assert (latents["saelens"] > 1).any()  # the cap changes some latents
    for name in ("capped", "saelens_capped", "claimed.toy"):
        assert plugged["architectures"][name] == "capped_relu"
        np.testing.assert_array_equal(latents[name], capped)


@pytest.mark.parametrize(
    ("folder", "message"),
    [
        ("gelu.toy", "architecture 'gelu' is not implemented (capped_relu, gated, jumprelu, log_jumprelu, relu, topk)"),
        (
            "empty",
            "(looked for cfg.json + sae.safetensors, cfg.json + sae_weights.safetensors, params.safetensors, params.npz, "
            "hyperparams.json + checkpoints/final.safetensors, config.json + sae_weights.safetensors, ae.pt + "
            "config.json, layer{L}.sae.pt, layer_{L}.safetensors, {model}-SAE-l{L}.pt (encoder.*), "
            "{model}-SAE-l{L}.pt(h) (encoder_linear.*), {name}.pt + {name}_cfg.json, toy.json + toy.npz, "
            "conf.yaml + latest_ckpt.safetensors, W_enc_{L}.safetensors + W_dec_{L}.safetensors)",
        ),
    ],
)
def test_refusals_list_the_registered_formats_and_activations(plugged, folder, message):
    saes, tiny, root = plugged["saes"], plugged["tiny"], plugged["root"]
    if folder == "gelu.toy":
        write_toy_sae(
            saes / folder, {"W_enc": np.zeros((D_MODEL, 4), np.float32), "b_enc": np.zeros(4, np.float32)}, "gelu"
        )
    else:
        (saes / folder).mkdir()
    config = write_config(root / f"{folder}.json", tiny.model, saes, {"bad": folder})
    store = root / f"{folder}.zarr"
    env = plugged["env"]
    refused = run_cli("build", "--input", tiny.csv, "--output", store, "--config", config, "--quiet", env=env)
    lines = [line for line in refused.stderr.splitlines() if line.startswith("saezarr:")]
    assert refused.returncode == 2 and len(lines) == 1 and message in lines[0], refused.stderr
    assert not store.exists()


BY_PRIORITY = [
    "sparsify",
    "saelens",
    "gemma_scope_2",
    "gemma_scope",
    "llama_scope",
    "llama_scope_r1_distill",
    "dictionary_learning",
    "qwen_scope",
    "mwhanna_transcoder",
    "deepseek_r1",
    "goodfire",
    "connor_rob_hook_z",
    "temporal",
    "mntss_clt_layer_transcoder",
]


def claimed_first(*claimed: str) -> list[str]:
    """The formats in the order they are tried where the folder's name claims `claimed`."""
    return [*claimed, *(f for f in BY_PRIORITY if f not in claimed)]


@pytest.mark.parametrize(
    ("path", "order"),
    [
        ("anything", [*BY_PRIORITY]),
        ("resid_post/layer_3_width_16k_l0_small", claimed_first("gemma_scope_2")),
        ("layer_3/width_16k/average_l0_59", claimed_first("gemma_scope")),
        ("EleutherAI/sae-pythia-70m/layers.3", [*BY_PRIORITY]),  # sparsify: already first
        ("Llama3_1-8B-Base-L3R-8x", claimed_first("llama_scope")),
        ("800M-Slimpajama-0-OpenR1-Math-220k/L3R", claimed_first("llama_scope_r1_distill")),
        ("layer3.sae.pt", claimed_first("qwen_scope")),
        ("layer_3.safetensors", claimed_first("mwhanna_transcoder")),
        ("DeepSeek-R1-Distill-Llama-8B-SAE-l19.pt", claimed_first("deepseek_r1", "goodfire")),
        ("gpt2-small_L3_Hcat_z_lr1.20e-03_v9.pt", claimed_first("connor_rob_hook_z")),
        ("3", claimed_first("mntss_clt_layer_transcoder")),
    ],
)
def test_the_built_in_formats_are_tried_by_priority_after_the_one_the_folders_name_claims(path, order):
    assert [sae_format.name for sae_format in formats_for(path)] == order
