"""Qwen Scope, Michael Hanna's Qwen 3 transcoders, Llama Scope R1 Distill, Connor and Rob's hook_z SAEs, qresearch's
DeepSeek R1 and Goodfire's SAEs give the latents SAELens' own loaders give (reading these files instead of the hub);
temporal SAEs and cross-layer transcoders are refused in one line naming the file and the field."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from saestools import assert_latents, describe, encode, offline_saelens, saelens_sae
from safetensors.torch import save_file

from saezarr.errors import SAEFormatError
from saezarr.saes import locate
from saezarr.saes.formats import SAE_FORMATS

pytest.importorskip("sae_lens")

D_IN, D_SAE, N = 16, 80, 40
LAYER, D_MODEL = 12, 32  # the tiny model's layer and hidden size


def inputs(seed: int = 1) -> torch.Tensor:
    return torch.randn((N, D_IN), generator=torch.Generator().manual_seed(seed)) * 2


def random(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


def loader(name: str):
    from sae_lens.loading import pretrained_sae_loaders as loaders

    return loaders.NAMED_PRETRAINED_SAE_LOADERS[name]


def reference(name: str, repo: str, path: str, overrides: dict | None = None, factor: float | None = None):
    """The SAE SAELens' loader `name` builds from the hub's (here: the local) files, its norm scaling factor folded
    as SAE.from_pretrained folds its registry's."""
    cfg, state, _ = loader(name)(repo, path, "cpu", False, overrides)
    sae = saelens_sae(cfg, state)
    if factor is not None:
        sae.fold_activation_norm_scaling_factor(factor)
    return sae


def refused(folder: Path, path: str, message: str, **config: object) -> None:
    with pytest.raises(SAEFormatError, match=message) as error:
        describe(folder, path, **config)
    assert "\n" not in str(error.value)


# Qwen Scope

QWEN = "Qwen/SAE-Res-Qwen3-1.7B-Base-W1K-L0_6"  # 1024 features, k = 6


def qwen_scope_folder(hub: Path, repo: str = QWEN) -> str:
    (hub / repo).mkdir(parents=True)
    width = 1024
    state = {
        "W_enc": random(width, D_IN, seed=0, scale=0.3),
        "W_dec": random(D_IN, width, seed=1),
        "b_enc": random(width, seed=2, scale=0.1),
        "b_dec": random(D_IN, seed=3, scale=0.5),
    }
    torch.save(state, hub / repo / "layer3.sae.pt")
    return "layer3.sae.pt"


def test_qwen_scope_gives_saelens_latents(tmp_path, monkeypatch):
    path = qwen_scope_folder(tmp_path)
    offline_saelens(monkeypatch, tmp_path)
    sae = reference("qwen_scope", QWEN, path, {"d_in": D_IN})
    layout = describe(tmp_path / QWEN, path)
    assert layout.site is not None and layout.site.hook == "blocks.3.hook_resid_post" and layout.b_dec is None
    assert (layout.k, layout.model_name, layout.context_size) == (6, "Qwen3-1.7B-Base", 1024)
    x = inputs()
    assert_latents(encode(tmp_path / QWEN, x, path), sae.encode(x))


def test_a_qwen_scope_file_in_a_repository_not_so_named_is_refused(tmp_path):
    path = qwen_scope_folder(tmp_path, "saes")
    refused(tmp_path / "saes", path, r"layer3.sae.pt: config layer3.sae.pt: the repository's name .* does not say k")


# Michael Hanna's Qwen 3 transcoders

MWHANNA = "mwhanna/qwen3-0.6b-transcoders-lowl0"


def mwhanna_folder(hub: Path, settings: dict | None = None) -> str:
    (hub / MWHANNA).mkdir(parents=True)
    state = {
        "W_enc": random(D_SAE, D_IN, seed=0, scale=0.3),
        "b_enc": random(D_SAE, seed=1, scale=0.2),
        "W_dec": random(D_SAE, D_IN, seed=2),
        "b_dec": random(D_IN, seed=3, scale=0.5),
    }
    save_file(state, hub / MWHANNA / "layer_3.safetensors")
    wandb = {"d_model": {"value": D_IN}, "d_feature": {"value": D_SAE}, "batch_size": {"value": 4096}}
    (hub / MWHANNA / "wandb-config.yaml").write_text(yaml.safe_dump(wandb))
    config = {"model_name": "Qwen/Qwen3-0.6B", "model_kind": "transcoder_set", "feature_input_hook": "mlp.hook_in"}
    config.update(settings or {})
    (hub / MWHANNA / "config.yaml").write_text(yaml.safe_dump(config))
    return "layer_3.safetensors"


def test_mwhanna_transcoders_give_saelens_latents(tmp_path, monkeypatch):
    path = mwhanna_folder(tmp_path)
    offline_saelens(monkeypatch, tmp_path)
    sae = reference("mwhanna_transcoder", MWHANNA, path)
    layout = describe(tmp_path / MWHANNA, path)
    assert layout.site is not None and layout.site.hook == "blocks.3.mlp.hook_in" and layout.b_dec is None
    assert layout.model_name == "Qwen/Qwen3-0.6B" and sae.cfg.metadata.hook_name == "blocks.3.mlp.hook_in"
    x = inputs()
    assert_latents(encode(tmp_path / MWHANNA, x, path), sae.encode(x))


def test_a_mwhanna_transcoder_whose_config_reads_another_hook_is_refused(tmp_path):
    path = mwhanna_folder(tmp_path, {"feature_input_hook": "hook_resid_mid"})
    refused(tmp_path / MWHANNA, path, r"config.yaml: config layer_3.safetensors: feature_input_hook 'hook_resid_mid'")


# Llama Scope R1 Distill

R1 = "fnlp/Llama-Scope-R1-Distill"
R1_FOLDER = "800M-Slimpajama-0-OpenR1-Math-220k/L3R"


def r1_distill_folder(hub: Path, **settings: object) -> str:
    (hub / R1 / R1_FOLDER).mkdir(parents=True)
    state = {
        "encoder.weight": random(D_SAE, D_IN, seed=0, scale=0.3),
        "encoder.bias": random(D_SAE, seed=1, scale=0.1),
        "decoder.weight": random(D_IN, D_SAE, seed=2),
        "decoder.bias": random(D_IN, seed=3),
        "log_jumprelu_threshold": random(D_SAE, seed=4, scale=0.5) - 1.0,
    }
    save_file(state, hub / R1 / R1_FOLDER / "sae_weights.safetensors")
    config = {"d_model": D_IN, "expansion_factor": D_SAE // D_IN, "act_fn": "jumprelu"}
    config.update(hook_point_in="blocks.3.hook_resid_post", hook_point_out="blocks.3.hook_resid_post")
    config.update(settings)
    (hub / R1 / R1_FOLDER / "config.json").write_text(json.dumps(config))
    return R1_FOLDER


def test_llama_scope_r1_distill_gives_saelens_latents(tmp_path, monkeypatch):
    path = r1_distill_folder(tmp_path)
    offline_saelens(monkeypatch, tmp_path)
    sae = reference("llama_scope_r1_distill", R1, path, factor=2.5)
    layout = describe(tmp_path / R1, path, norm_scaling_factor=2.5)
    assert layout.site is not None and layout.site.hook == "blocks.3.hook_resid_post" and layout.b_dec is None
    x = inputs()
    assert_latents(encode(tmp_path / R1, x, path, norm_scaling_factor=2.5), sae.encode(x))


@pytest.mark.parametrize(
    "settings, config, message",
    [
        ({}, {}, r"L3R/config.json: config L3R: normalize_activations 'expected_average_only_in' needs the config"),
        ({"act_fn": "topk"}, {"norm_scaling_factor": 2.5}, r"L3R/config.json: config L3R: act_fn 'topk' is not"),
        ({"expansion_factor": 0}, {"norm_scaling_factor": 2.5}, r"config L3R: expansion_factor must be a positive"),
    ],
)
def test_llama_scope_r1_distill_refusals_name_the_file_and_field(tmp_path, settings, config, message):
    path = r1_distill_folder(tmp_path, **settings)
    refused(tmp_path / R1, path, message, **config)


# Connor Kissane and Rob Krzyzanowski's hook_z SAEs

HOOK_Z = "ckkissane/attn-saes-gpt2-small-all-layers"
HOOK_Z_FILE = "gpt2-small_L3_Hcat_z_lr1.20e-03_l11.80e+00_ds24576_v9"
HEADS = 4


def hook_z_folder(hub: Path, act_name: str = "blocks.3.attn.hook_z") -> str:
    (hub / HOOK_Z).mkdir(parents=True)
    state = {
        "W_enc": random(D_IN, D_SAE, seed=0, scale=0.3),
        "W_dec": random(D_SAE, D_IN, seed=1),
        "b_enc": random(D_SAE, seed=2, scale=0.2),
        "b_dec": random(D_IN, seed=3, scale=0.5),
    }
    torch.save(state, hub / HOOK_Z / f"{HOOK_Z_FILE}.pt")
    config = {"act_size": D_IN, "dict_size": D_SAE, "act_name": act_name, "l1_coeff": 1.8, "seq_len": 128}
    (hub / HOOK_Z / f"{HOOK_Z_FILE}_cfg.json").write_text(json.dumps(config))
    return f"{HOOK_Z_FILE}.pt"


def test_connor_rob_hook_z_saes_give_saelens_latents(tmp_path, monkeypatch):
    path = hook_z_folder(tmp_path)
    offline_saelens(monkeypatch, tmp_path)
    sae = reference("connor_rob_hook_z", HOOK_Z, path)
    layout = describe(tmp_path / HOOK_Z, path)
    assert layout.site is not None and layout.site.hook == "blocks.3.attn.hook_z" and layout.b_dec == "b_dec"
    assert (layout.model_name, layout.context_size, layout.head_index) == ("gpt2-small", 128, None)
    z = inputs()  # attn.hook_z as saezarr reads it: [n, heads * d_head], head by head
    assert_latents(encode(tmp_path / HOOK_Z, z, path), sae.encode(z.view(N, HEADS, D_IN // HEADS)))


def test_a_hook_z_sae_whose_cfg_names_another_site_is_refused(tmp_path):
    path = hook_z_folder(tmp_path, act_name="blocks.3.hook_resid_pre")
    message = f"{HOOK_Z_FILE}_cfg.json: config {HOOK_Z_FILE}.pt: act_name 'blocks.3.hook_resid_pre': SAELens flattens"
    refused(tmp_path / HOOK_Z, path, re.escape(message))


# qresearch's DeepSeek R1 and Goodfire's SAEs: .pt state dicts of nn.Linear layers, named alike


def linear_folder(hub: Path, repo: str, filename: str, prefix: str, dtype: torch.dtype) -> str:
    (hub / repo).mkdir(parents=True)
    state = {
        f"{prefix}.weight": random(D_SAE, D_IN, seed=0, scale=0.3),
        f"{prefix}.bias": random(D_SAE, seed=1, scale=0.2),
        f"{prefix.replace('encoder', 'decoder')}.weight": random(D_IN, D_SAE, seed=2),
        f"{prefix.replace('encoder', 'decoder')}.bias": random(D_IN, seed=3, scale=0.5),
    }
    torch.save({key: value.to(dtype) for key, value in state.items()}, hub / repo / filename)
    return filename


@pytest.mark.parametrize(
    "loader_name, repo, filename, prefix",
    [
        (
            "deepseek_r1",
            "qresearch/DeepSeek-R1-Distill-Llama-8B-SAE-l19",
            "DeepSeek-R1-Distill-Llama-8B-SAE-l19.pt",
            "encoder",
        ),
        ("goodfire", "Goodfire/Llama-3.1-8B-Instruct-SAE-l19", "Llama-3.1-8B-Instruct-SAE-l19.pth", "encoder_linear"),
        ("goodfire", "Goodfire/Llama-3.3-70B-Instruct-SAE-l50", "Llama-3.3-70B-Instruct-SAE-l50.pt", "encoder_linear"),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_deepseek_r1_and_goodfire_saes_give_saelens_latents(
    tmp_path, monkeypatch, loader_name, repo, filename, prefix, dtype
):
    path = linear_folder(tmp_path, repo, filename, prefix, dtype)
    offline_saelens(monkeypatch, tmp_path)
    sae = reference(loader_name, repo, path, {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32"})
    layout = describe(tmp_path / repo, path)
    assert layout.layout == loader_name and layout.b_dec is None
    assert layout.site is not None and layout.site.hook == sae.cfg.metadata.hook_name
    assert layout.model_name == filename.split("-SAE-")[0]
    x = inputs()
    assert_latents(encode(tmp_path / repo, x, path), sae.encode(x))


# refused: temporal SAEs and cross-layer transcoders


def test_a_temporal_sae_is_refused(tmp_path):
    folder = tmp_path / "canrager/temporalSAEs/gemma-2-2B/layer_12/temporal"
    folder.mkdir(parents=True)
    conf = {"llm": {"dimin": D_IN}, "sae": {"exp_factor": 4, "n_heads": 2, "n_attn_layers": 1, "scaling_factor": 1.0}}
    (folder / "conf.yaml").write_text(yaml.safe_dump(conf))
    save_file({"D": random(D_SAE, D_IN, seed=0), "b": random(D_IN, seed=1)}, folder / "latest_ckpt.safetensors")
    refused(
        tmp_path / "canrager/temporalSAEs",
        "gemma-2-2B/layer_12/temporal",
        r"temporal/conf.yaml: config temporal: sae.n_attn_layers 1: a temporal SAE's latents depend on the earlier",
    )


def test_a_cross_layer_transcoders_layer_is_refused(tmp_path):
    repo = tmp_path / "mntss/clt-gemma-2-2b-2.5M"
    repo.mkdir(parents=True)
    (repo / "config.yaml").write_text(yaml.safe_dump({"model_kind": "cross_layer_transcoder"}))
    save_file({"W_enc_3": random(D_SAE, D_IN, seed=0), "b_enc_3": random(D_SAE, seed=1)}, repo / "W_enc_3.safetensors")
    refused(repo, "3", r"W_enc_3.safetensors: config 3: W_dec_3 decodes layer 3's features into every later layer")


# SAEs that are one file: their files are fetched beside them, and the hub is probed for the file itself


def test_a_file_sae_fetches_its_files_from_the_folder_that_holds_it():
    assert locate.in_repo("layer3.sae.pt", ".") == "layer3.sae.pt"
    assert locate.in_repo("sub/layer_3.safetensors", "../config.yaml") == "sub/config.yaml"
    assert locate.in_repo("a/b", "cfg.json") == "a/b/cfg.json"
    with pytest.raises(SAEFormatError, match="outside its repository"):
        locate.in_repo("layer3.sae.pt", "../../x")
    assert locate._markers("layer3.sae.pt")[0] == "layer3.sae.pt"  # the format its name says first
    assert "." not in locate._markers(".") and "cfg.json" in locate._markers(".")


@pytest.mark.parametrize(
    "repo, path, fetched",
    [
        (QWEN, "layer3.sae.pt", [(None, "layer3.sae.pt")]),
        (MWHANNA, "layer_3.safetensors", [(None, "layer_3.safetensors"), (None, "config.yaml")]),
    ],
)
def test_a_hub_file_sae_downloads_its_file_and_the_files_beside_it(tmp_path, monkeypatch, repo, path, fetched):
    (qwen_scope_folder if repo == QWEN else mwhanna_folder)(tmp_path)
    got = []

    def download(repo, filename, option_name, revision=None, subfolder=None):
        got.append((subfolder, filename))
        return tmp_path / repo / (subfolder or "") / filename

    monkeypatch.setattr(locate, "download", download)
    layout = locate.read_description(locate.Source(repo, "main", None), locate.SAEConfig(3, None, path))
    assert layout.site is not None and layout.site.layer == 3 and got == fetched


def test_every_new_format_is_registered():
    new = {"qwen_scope", "mwhanna_transcoder", "llama_scope_r1_distill", "connor_rob_hook_z", "deepseek_r1"}
    assert new | {"goodfire", "temporal", "mntss_clt_layer_transcoder"} <= set(SAE_FORMATS)


# through the real build: one-file SAEs give the latents of the same weights in SAELens' format


def one_file_saes(folder: Path, weights: dict[str, np.ndarray], model: str) -> dict[str, str]:
    """The same weights as SAELens folders and as the one-file formats: {config name: path}."""
    from saezarr.testing.synthetic import saelens_cfg, write_saelens_sae

    tensors = {key: torch.from_numpy(value) for key, value in weights.items() if key != "threshold"}
    linear = {"weight": tensors["W_enc"].T.contiguous(), "bias": tensors["b_enc"]}
    width = tensors["W_enc"].shape[1]
    mlp_in = {"sae_lens_version": "6.12.1", "hook_name": f"blocks.{LAYER}.mlp.hook_in"}
    relu = {key: value for key, value in weights.items() if key != "threshold"}
    write_saelens_sae(folder / "relu", relu, saelens_cfg(LAYER, D_MODEL, width, "standard"))
    write_saelens_sae(folder / "topk", relu, saelens_cfg(LAYER, D_MODEL, width, "topk", k=5))
    write_saelens_sae(folder / "transcoder", relu, saelens_cfg(LAYER, D_MODEL, width, "transcoder", metadata=mlp_in))
    torch.save({f"encoder.{key}": value for key, value in linear.items()}, folder / f"{model}-SAE-l{LAYER}.pt")
    (folder / "goodfire").mkdir()
    torch.save({f"encoder_linear.{k}": v for k, v in linear.items()}, folder / f"goodfire/{model}-SAE-l{LAYER}.pth")
    torch.save({"W_enc": linear["weight"], "b_enc": linear["bias"]}, folder / f"layer{LAYER}.sae.pt")
    save_file({"W_enc": linear["weight"], "b_enc": linear["bias"]}, folder / f"layer_{LAYER}.safetensors")
    return {
        "relu": "relu",
        "topk": "topk",
        "transcoder": "transcoder",
        "deepseek": f"{model}-SAE-l{LAYER}.pt",
        "goodfire": f"goodfire/{model}-SAE-l{LAYER}.pth",
        "qwen": f"layer{LAYER}.sae.pt",
        "mwhanna": f"layer_{LAYER}.safetensors",
    }


def test_one_file_saes_build_the_latents_of_the_same_weights_in_saelens_format(tiny, tmp_path):
    import zarr
    from clitools import run_main

    from saezarr.testing.synthetic import calibration_residuals, random_sae

    x = calibration_residuals(tiny.model, [LAYER], tiny.sentences)[LAYER]
    weights = random_sae(x, 1024, 30, np.random.default_rng(7))
    saes = tmp_path / "SAE-Res-model-W1K-L0_5"  # Qwen Scope's k: the repository's name
    paths = one_file_saes(saes, weights, tiny.model.name)
    entries = [{"path": path, "name": name} for name, path in paths.items()]
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model": str(tiny.model), "sae_repo": str(saes), "configs": entries}))
    store = tmp_path / "store.zarr"
    built = run_main("build", "--input", tiny.csv, "--output", store, "--config", config, "--quiet")
    assert built.returncode == 0, built.stderr
    group = zarr.open_group(store, mode="r")
    latents = {str(name): group["activations"][i] for i, name in enumerate(group["config"][:])}
    for name in ("relu", "topk", "transcoder"):
        assert (latents[name] > 0).any() and (latents[name] == 0).any()
    for name, same in (("deepseek", "relu"), ("goodfire", "relu"), ("qwen", "topk"), ("mwhanna", "transcoder")):
        np.testing.assert_array_equal(latents[name], latents[same])
