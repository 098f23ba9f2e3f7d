"""Gemma Scope 1 (every family: res, embedding, att, mlp, transcoders) and Gemma Scope 2 (resid_post, attn_out,
mlp_out, transcoder, plain and affine) folders give the latents SAELens' own loaders (`gemma_2`,
`gemma_2_transcoder`, `gemma_3`, reading these folders instead of the hub) give, and name the sites SAELens names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from saestools import assert_latents, describe, encode, offline_saelens, saelens_sae

from saezarr.errors import SAEFormatError
from saezarr.testing.synthetic import write_gemma_scope_2_sae

pytest.importorskip("sae_lens")

D_MODEL, D_SAE, N, HEADS = 24, 96, 40, 4
FOLDER = "layer_3/width_16k/average_l0_20"


def weights(d_in: int, d_out: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Random JumpReLU arrays, thresholds about where features fire."""
    rng = np.random.default_rng(seed)
    d_out = d_out or d_in
    return {
        "W_enc": (rng.standard_normal((d_in, D_SAE)) / np.sqrt(d_in)).astype(np.float32),
        "W_dec": rng.standard_normal((D_SAE, d_out)).astype(np.float32),
        "b_enc": rng.normal(0, 0.2, D_SAE).astype(np.float32),
        "b_dec": rng.normal(0, 0.5, d_out).astype(np.float32),
        "threshold": np.abs(rng.normal(0.4, 0.3, D_SAE)).astype(np.float32),
    }


def inputs(d_in: int, seed: int = 1) -> torch.Tensor:
    return torch.randn((N, d_in), generator=torch.Generator().manual_seed(seed)) * 2


@pytest.mark.parametrize(
    "family, folder, site",
    [
        ("res", FOLDER, "blocks.3.hook_resid_post"),
        ("res", "embedding/width_4k/average_l0_20", "hook_embed"),
        ("att", FOLDER, "blocks.3.attn.hook_z"),
        ("mlp", FOLDER, "blocks.3.hook_mlp_out"),
        ("transcoders", FOLDER, "blocks.3.ln2.hook_normalized"),
    ],
)
def test_gemma_scope_1_gives_saelens_latents(tmp_path, monkeypatch, family, folder, site):
    from sae_lens.loading import pretrained_sae_loaders as loaders

    repo = f"google/gemma-scope-2b-pt-{family}"
    d_in = HEADS * 8 if family == "att" else D_MODEL
    (tmp_path / repo / folder).mkdir(parents=True)
    np.savez(tmp_path / repo / folder / "params.npz", **weights(d_in))
    offline_saelens(monkeypatch, tmp_path)
    overrides = {"d_in": d_in, "d_sae": D_SAE, "device": "cpu"}  # SAELens fixes them by the model's and id's names
    if family == "transcoders":
        overrides["d_out"] = D_MODEL
        cfg, state, _ = loaders.gemma_2_transcoder_huggingface_loader(repo, folder, "cpu", False, overrides)
    else:
        cfg, state, _ = loaders.gemma_2_sae_huggingface_loader(repo, folder, "cpu", False, overrides)
    reference = saelens_sae(cfg, state)
    layout = describe(tmp_path / repo, folder)
    assert layout.site is not None and layout.site.hook == site == cfg["hook_name"] and layout.b_dec is None
    x = inputs(d_in)
    want = reference.encode(x.view(N, HEADS, -1) if family == "att" else x)  # SAELens reshapes hook_z by heads
    assert_latents(encode(tmp_path / repo, x, folder), want)


GEMMA_SCOPE_2 = [
    ("resid_post", "blocks.3.hook_resid_post", None),
    ("resid_post_all", "blocks.3.hook_resid_post", "model.layers.3.output"),
    ("attn_out", "blocks.3.attn.hook_z", "model.layers.3.self_attn.o_proj.input"),
    ("mlp_out_all", "blocks.3.hook_mlp_out", "model.layers.3.post_feedforward_layernorm.output"),
    ("transcoder", "blocks.3.mlp.hook_in", None),
    ("transcoder_all", "blocks.3.mlp.hook_in", "model.layers.3.pre_feedforward_layernorm.output"),
]
AFFINE = [(prefix, site, hf_hook, True) for prefix, site, hf_hook in GEMMA_SCOPE_2 if prefix.startswith("transcoder")]


@pytest.mark.parametrize("prefix, site, hf_hook, affine", [(*case, False) for case in GEMMA_SCOPE_2] + AFFINE)
def test_gemma_scope_2_gives_saelens_latents(tmp_path, monkeypatch, prefix, site, hf_hook, affine):
    from sae_lens.loading import pretrained_sae_loaders as loaders

    transcoder = prefix.startswith("transcoder")
    repo = "google/gemma-scope-2-270m-pt"
    folder = f"{prefix}/layer_3_width_16k_l0_small" + ("_affine" if affine else "")
    d_in = HEADS * 8 if prefix == "attn_out" else D_MODEL
    arrays = weights(d_in, d_out=D_MODEL + 4 if transcoder else None)
    if affine:
        arrays["affine_skip_connection"] = np.ones((d_in, D_MODEL + 4), dtype=np.float32)
    settings = {"architecture": "jump_relu", "model_name": "gemma-v3-270m-pt"}
    if hf_hook:
        settings["hf_hook_point_in"] = hf_hook
    if transcoder:
        settings["affine_connection"] = affine
    write_gemma_scope_2_sae(tmp_path / repo / folder, arrays, settings)
    offline_saelens(monkeypatch, tmp_path)
    cfg, state, _ = loaders.gemma_3_sae_huggingface_loader(repo, folder, "cpu", False, None)
    reference = saelens_sae(cfg, state)
    layout = describe(tmp_path / repo, folder)
    assert layout.site is not None and layout.site.hook == site and layout.b_dec is None
    x = inputs(d_in)
    assert_latents(encode(tmp_path / repo, x, folder), reference.encode(x))


def test_gemma_scope_2_refuses_what_is_not_implemented_in_one_line(tmp_path):
    repo = tmp_path / "gemma-scope-2-270m-pt"
    write_gemma_scope_2_sae(repo / "resid_post/layer_3_width_16k_l0_small", weights(D_MODEL), {"architecture": "topk"})
    with pytest.raises(SAEFormatError, match=r"config.json: config layer_3_width_16k_l0_small: architecture 'topk'"):
        describe(repo, "resid_post/layer_3_width_16k_l0_small")
    (repo / "clt/width_262k_l0_medium").mkdir(parents=True)
    with pytest.raises(SAEFormatError, match=r"clt/width_262k_l0_medium: .*cross-layer transcoder \(clt/\)"):
        describe(repo, "clt/width_262k_l0_medium")


def test_gemma_scope_1_embedding_input_is_divided_by_sqrt_d_in(tmp_path: Path):
    repo = tmp_path / "gemma-scope-2b-pt-res"
    (repo / "embedding/width_4k/average_l0_20").mkdir(parents=True)
    np.savez(repo / "embedding/width_4k/average_l0_20/params.npz", **weights(D_MODEL))
    assert describe(repo, "embedding/width_4k/average_l0_20").input_scale == pytest.approx(1 / np.sqrt(D_MODEL))
