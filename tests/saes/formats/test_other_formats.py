"""Llama Scope, dictionary_learning / SAE Bench and EleutherAI's sparsify folders give the latents SAELens' own
loaders (`llama_scope`, `dictionary_learning_1`, `sparsify`, reading these folders instead of the hub) give, or, where
saezarr follows sparsify rather than SAELens, sparsify's published encode computed here; refusals are one line
naming the file and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from saestools import assert_latents, describe, encode, offline_saelens, saelens_sae
from safetensors.torch import save_file

from saezarr.errors import SAEFormatError

pytest.importorskip("sae_lens")

D_IN, D_SAE, N = 16, 80, 40


def inputs(seed: int = 1) -> torch.Tensor:
    return torch.randn((N, D_IN), generator=torch.Generator().manual_seed(seed)) * 2


def random(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


# Llama Scope


def llama_scope_folder(hub: Path, dtype: torch.dtype, **hyperparams: object) -> tuple[str, str]:
    repo, folder = "fnlp/Llama3_1-8B-Base-LXR-8x", "Llama3_1-8B-Base-L3R-8x"
    (hub / repo / folder / "checkpoints").mkdir(parents=True)
    state = {
        "encoder.weight": random(D_SAE, D_IN, seed=0, scale=0.3),
        "encoder.bias": random(D_SAE, seed=1, scale=0.1),
        "decoder.weight": random(D_IN, D_SAE, seed=2),
        "decoder.bias": random(D_IN, seed=3),
    }
    save_file({k: v.to(dtype) for k, v in state.items()}, hub / repo / folder / "checkpoints/final.safetensors")
    settings = {"d_model": D_IN, "d_sae": D_SAE, "hook_point_in": "blocks.3.hook_resid_post", "act_fn": "jumprelu"}
    settings.update(jump_relu_threshold=0.02, dataset_average_activation_norm={"in": 1.7, "out": 1.7})
    settings.update(hyperparams)
    (hub / repo / folder / "hyperparams.json").write_text(json.dumps(settings))
    return repo, folder


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("factor", [None, 2.0])
def test_llama_scope_gives_saelens_latents(tmp_path, monkeypatch, dtype, factor):
    from sae_lens.loading import pretrained_sae_loaders as loaders

    repo, folder = llama_scope_folder(tmp_path, dtype)
    offline_saelens(monkeypatch, tmp_path)
    cfg, state, _ = loaders.llama_scope_sae_huggingface_loader(repo, folder, "cpu", False, {"dtype": "float32"})
    reference = saelens_sae(cfg, state)
    # SAE.from_pretrained folds its registry's factor (sqrt(d_model) / the dataset's average norm, as hyperparams)
    reference.fold_activation_norm_scaling_factor(factor or D_IN**0.5 / 1.7)
    config = {} if factor is None else {"norm_scaling_factor": factor}
    layout = describe(tmp_path / repo, folder, **config)
    assert layout.site is not None and layout.site.hook == "blocks.3.hook_resid_post" and layout.b_dec is None
    x = inputs()
    assert_latents(encode(tmp_path / repo, x, folder, **config), reference.encode(x))


@pytest.mark.parametrize(
    "hyperparams, message",
    [
        ({"act_fn": "topk"}, "hyperparams.json: config Llama3_1-8B-Base-L3R-8x: act_fn 'topk' is not implemented"),
        ({"dataset_average_activation_norm": None}, "dataset_average_activation_norm.in must be a positive number"),
        ({"hook_point_in": None}, "hyperparams.json: config Llama3_1-8B-Base-L3R-8x: hook_point_in must name"),
    ],
)
def test_llama_scope_refusals_name_the_file_and_field(tmp_path, hyperparams, message):
    repo, folder = llama_scope_folder(tmp_path, torch.float32, **hyperparams)
    with pytest.raises(SAEFormatError, match=message) as refused:
        describe(tmp_path / repo, folder)
    assert "\n" not in str(refused.value)


# dictionary_learning / SAE Bench


def dictionary(dict_class: str) -> dict[str, torch.Tensor]:
    """A random state dict as dictionary_learning's class saves it."""
    linear = {"encoder.weight": random(D_SAE, D_IN, seed=0, scale=0.3), "decoder.weight": random(D_IN, D_SAE, seed=1)}
    b_enc, b_dec = random(D_SAE, seed=2, scale=0.2), random(D_IN, seed=3, scale=0.5)
    if dict_class == "AutoEncoder":
        return {**linear, "encoder.bias": b_enc, "bias": b_dec}
    if dict_class in ("AutoEncoderTopK", "BatchTopKSAE"):
        return {**linear, "encoder.bias": b_enc, "b_dec": b_dec, "k": torch.tensor(6), "threshold": torch.tensor(0.3)}
    if dict_class == "GatedAutoEncoder":
        gates = {
            "gate_bias": b_enc,
            "mag_bias": random(D_SAE, seed=4, scale=0.2),
            "r_mag": random(D_SAE, seed=5, scale=0.2),
        }
        return {
            "encoder.weight": linear["encoder.weight"],
            "decoder.weight": linear["decoder.weight"],
            "decoder_bias": b_dec,
            **gates,
        }
    W_enc = linear["encoder.weight"].T.contiguous()
    threshold = torch.tensor(0.3) if dict_class == "MatryoshkaBatchTopKSAE" else random(D_SAE, seed=6).abs() * 0.3
    return {
        "W_enc": W_enc,
        "b_enc": b_enc,
        "W_dec": linear["decoder.weight"].T.contiguous(),
        "b_dec": b_dec,
        "threshold": threshold,
    }


def dictionary_folder(hub: Path, dict_class: str, trainer: dict | None = None) -> tuple[str, str]:
    repo, folder = "canrager/lm_sae", f"trainer_{dict_class}"
    (hub / repo / folder).mkdir(parents=True)
    torch.save(dictionary(dict_class), hub / repo / folder / "ae.pt")
    settings = {"dict_class": dict_class, "activation_dim": D_IN, "dict_size": D_SAE, "layer": 3, "k": 6}
    settings.update(lm_name="google/gemma-2-2b", submodule_name="resid_post_layer_3")
    settings.update(trainer or {})
    (hub / repo / folder / "config.json").write_text(json.dumps({"trainer": settings, "buffer": {"ctx_len": 128}}))
    return repo, folder


@pytest.mark.parametrize(
    "dict_class",
    [
        "AutoEncoder",
        "AutoEncoderTopK",
        "GatedAutoEncoder",
        "BatchTopKSAE",
        "MatryoshkaBatchTopKSAE",
        "JumpReluAutoEncoder",
    ],
)
def test_dictionary_learning_gives_saelens_latents(tmp_path, monkeypatch, dict_class):
    from sae_lens.loading import pretrained_sae_loaders as loaders

    repo, folder = dictionary_folder(tmp_path, dict_class)
    offline_saelens(monkeypatch, tmp_path)
    cfg, state, _ = loaders.dictionary_learning_sae_huggingface_loader_1(repo, folder, "cpu", False, None)
    reference = saelens_sae(cfg, state)
    layout = describe(tmp_path / repo, folder)
    assert layout.site is not None and layout.site.hook == "blocks.3.hook_resid_post"
    assert (layout.model_name, layout.context_size) == ("gemma-2-2b", 128)
    x = inputs()
    # gated: SAELens multiplies W_enc by exp(r_mag) before the matmul, saezarr after it (float32 rounding)
    atol = 1e-5 if dict_class == "GatedAutoEncoder" else 1e-6
    assert_latents(encode(tmp_path / repo, x, folder), reference.encode(x), atol=atol)


@pytest.mark.parametrize(
    "trainer, message",
    [
        ({"dict_class": "CrossCoder"}, "config.json: config trainer_AutoEncoder: trainer.dict_class 'CrossCoder'"),
        ({"submodule_name": "attn_out_layer_3"}, "trainer.submodule_name 'attn_out_layer_3': only resid_post"),
        ({"layer": None}, "config.json: config trainer_AutoEncoder: trainer.layer must be a layer's index"),
    ],
)
def test_dictionary_learning_refusals_name_the_file_and_field(tmp_path, trainer, message):
    repo, folder = dictionary_folder(tmp_path, "AutoEncoder", trainer)
    with pytest.raises(SAEFormatError, match=message) as refused:
        describe(tmp_path / repo, folder)
    assert "\n" not in str(refused.value)


def test_an_ae_pt_that_is_not_only_tensors_is_refused_unread(tmp_path):
    repo, folder = dictionary_folder(tmp_path, "AutoEncoder")
    torch.save({"encoder.weight": torch.ones(2, 2), "extra": Path("/")}, tmp_path / repo / folder / "ae.pt")
    with pytest.raises(SAEFormatError, match=r"ae.pt: config trainer_AutoEncoder: not a readable state dict"):
        describe(tmp_path / repo, folder)


# sparsify


def sparsify_folder(root: Path, hookpoint: str, **cfg: object) -> Path:
    folder = root / "EleutherAI/sae-pythia-70m-32k" / hookpoint
    folder.mkdir(parents=True)
    state = {
        "encoder.weight": random(D_SAE, D_IN, seed=0, scale=0.3),
        "encoder.bias": random(D_SAE, seed=1, scale=0.2),
        "W_dec": random(D_SAE, D_IN, seed=2),
        "b_dec": random(D_IN, seed=3, scale=0.5),
    }
    save_file(state, folder / "sae.safetensors")
    settings = {"expansion_factor": 5, "normalize_decoder": True, "num_latents": 0, "k": 7, "multi_topk": False}
    settings.update(d_in=D_IN)
    settings.update(cfg)
    (folder / "cfg.json").write_text(json.dumps(settings))
    return folder


def sparsify_encode(folder: Path, x: torch.Tensor, transcode: bool) -> torch.Tensor:
    """sparsify's SparseCoder.encode: ReLU(encoder(x - b_dec)) (no b_dec for a transcoder), its top k kept."""
    from safetensors.torch import load_file

    state = load_file(folder / "sae.safetensors")
    pre = torch.relu(
        torch.nn.functional.linear(
            x if transcode else x - state["b_dec"], state["encoder.weight"], state["encoder.bias"]
        )
    )
    values, indices = pre.topk(7, dim=-1)
    return torch.zeros_like(pre).scatter_(-1, indices, values)


@pytest.mark.parametrize("normalize_decoder", [False, True])
def test_sparsify_gives_sparsifys_latents_and_saelens_where_they_agree(tmp_path, normalize_decoder):
    from sae_lens.loading.pretrained_sae_loaders import sparsify_disk_loader

    folder = sparsify_folder(tmp_path, "layers.3", normalize_decoder=normalize_decoder, num_latents=D_SAE)
    layout = describe(folder)
    assert layout.site is not None and layout.site.hook == "blocks.3.hook_resid_post" and layout.k == 7
    x = inputs()
    got = encode(folder, x)
    assert_latents(got, sparsify_encode(folder, x, transcode=False))
    if not normalize_decoder:  # SAELens subtracts b_dec only then (apply_b_dec_to_input = not normalize_decoder)
        cfg, state = sparsify_disk_loader(folder, "cpu", {"dtype": "float32"})
        state["W_dec"] = state["W_dec"].T  # the loader transposes sparsify's [num_latents, d_in] W_dec; unused here
        assert_latents(got, saelens_sae(cfg, state).encode(x))


def test_a_sparsify_transcoder_reads_the_mlps_input_without_b_dec(tmp_path):
    folder = sparsify_folder(tmp_path, "layers.3.mlp", transcode=True)
    layout = describe(folder)
    assert layout.site is not None and layout.site.hook == "blocks.3.mlp.hook_in" and layout.b_dec is None
    x = inputs()
    assert_latents(encode(folder, x), sparsify_encode(folder, x, transcode=True))
    assert describe(sparsify_folder(tmp_path / "e", "embed_tokens")).site.hook == "hook_embed"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "hookpoint, cfg, message",
    [
        ("layers.3.mlp", {}, "cfg.json: config layers.3.mlp: hookpoint layers.3.mlp \\(the module's output"),
        ("layers.3.self_attn", {}, "hookpoint layers.3.self_attn"),
        ("layers.3", {"activation": "groupmax"}, "cfg.json: config layers.3: activation 'groupmax' is not implemented"),
        ("layers.3", {"k": 0}, "cfg.json: config layers.3: k must be a positive integer"),
    ],
)
def test_sparsify_refusals_name_the_file_and_field(tmp_path, hookpoint, cfg, message):
    folder = sparsify_folder(tmp_path, hookpoint, **cfg)
    with pytest.raises(SAEFormatError, match=message) as refused:
        describe(folder)
    assert "\n" not in str(refused.value)
