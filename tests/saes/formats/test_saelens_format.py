"""SAELens' format, before version 6 and from 6 on, every architecture saezarr encodes: folders that SAELens writes
(`save_model`, `save_inference_model`) or that its pre-6.0 cfg layout describes, read by saezarr and by SAELens
(`SAE.load_from_disk`), give the same latents of the same inputs; what is not implemented is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from saestools import assert_latents, describe, encode, encoder

from saezarr.errors import SAEFormatError

sae_lens = pytest.importorskip("sae_lens")
from sae_lens import SAE  # noqa: E402

D_IN, D_SAE, N = 16, 64, 40
HOOK = "blocks.2.hook_resid_post"


def randomised(sae, seed: int = 0):
    """The SAE with every parameter and buffer random (thresholds positive, about where features fire)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(sae.named_parameters()) + list(sae.named_buffers()):
            random = torch.randn(tensor.shape, generator=generator, dtype=torch.float64).to(tensor.dtype)
            scale = 0.3 if name in ("b_dec", "b_enc", "b_gate", "b_mag", "r_mag") else 1.0
            tensor.copy_(random.abs() * 0.5 if "threshold" in name else random * scale)
    return sae


def inputs(d_in: int = D_IN, seed: int = 1) -> torch.Tensor:
    return torch.randn((N, d_in), generator=torch.Generator().manual_seed(seed)) * 2


def saved(folder: Path, architecture: str, **fields) -> tuple[Path, object]:
    """An SAE SAELens builds from a 6.x cfg dict, with random weights, saved in its own format."""
    metadata = {"hook_name": fields.pop("hook_name", HOOK), **fields.pop("metadata", {})}
    cfg = {"architecture": architecture, "d_in": D_IN, "d_sae": D_SAE, "metadata": metadata, **fields}
    sae = randomised(SAE.from_dict(cfg)).eval()
    sae.save_model(folder)
    return folder, SAE.load_from_disk(folder)


@pytest.mark.parametrize(
    "architecture, fields",
    [
        ("standard", {"apply_b_dec_to_input": True}),
        ("standard", {"apply_b_dec_to_input": False}),
        ("jumprelu", {"apply_b_dec_to_input": True}),
        ("jumprelu", {"apply_b_dec_to_input": False}),
        ("topk", {"k": 5}),
        ("topk", {"k": 5, "rescale_acts_by_decoder_norm": True, "apply_b_dec_to_input": True}),
        ("gated", {"apply_b_dec_to_input": True}),
        ("transcoder", {"apply_b_dec_to_input": False, "d_out": 24}),
        ("skip_transcoder", {"apply_b_dec_to_input": False, "d_out": 24}),
        ("jumprelu_transcoder", {"apply_b_dec_to_input": False, "d_out": 24}),
        ("standard", {"normalize_activations": "layer_norm", "apply_b_dec_to_input": True}),
        ("jumprelu", {"normalize_activations": "constant_norm_rescale", "apply_b_dec_to_input": True}),
    ],
)
def test_a_saelens_6_folder_gives_saelens_latents(tmp_path, architecture, fields):
    folder, reference = saved(tmp_path / "sae", architecture, **fields)
    x = inputs()
    assert_latents(encode(folder, x), reference.encode(x))


@pytest.mark.parametrize("fold", [False, True])
def test_expected_average_only_in_scales_by_the_config_entrys_factor_as_from_pretrained_folds_it(tmp_path, fold):
    folder, reference = saved(tmp_path / "sae", "jumprelu", normalize_activations="expected_average_only_in")
    reference.fold_activation_norm_scaling_factor(2.5)  # what SAE.from_pretrained does with the registry's factor
    if fold:  # before SAELens 6 the same was a boolean
        cfg = json.loads((folder / "cfg.json").read_text())
        cfg.update(normalize_activations=True, hook_point=HOOK, sae_lens_version="3.12.0")
        del cfg["metadata"]
        (folder / "cfg.json").write_text(json.dumps(cfg))
    x = inputs()
    assert_latents(encode(folder, x, norm_scaling_factor=2.5), reference.encode(x))
    with pytest.raises(SAEFormatError, match=r"cfg.json: config sae: normalize_activations .* norm_scaling_factor"):
        describe(folder)


@pytest.mark.parametrize("architecture", ["batchtopk", "matryoshka_batchtopk"])
@pytest.mark.parametrize("rescale", [True, False])
def test_a_batchtopk_checkpoint_gives_the_latents_of_its_saved_inference_form(tmp_path, architecture, rescale):
    from sae_lens.saes import (
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )

    if architecture == "batchtopk":
        config = BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=4, rescale_acts_by_decoder_norm=rescale)
        training = BatchTopKTrainingSAE(config)
    else:
        config = MatryoshkaBatchTopKTrainingSAEConfig(
            d_in=D_IN, d_sae=D_SAE, k=4, matryoshka_widths=[16, D_SAE], rescale_acts_by_decoder_norm=rescale
        )
        training = MatryoshkaBatchTopKTrainingSAE(config)
    training.cfg.metadata.hook_name = HOOK
    randomised(training)
    training.topk_threshold.fill_(0.7)
    training.save_model(tmp_path / "checkpoint")
    training.save_inference_model(tmp_path / "inference")
    reference = SAE.load_from_disk(tmp_path / "inference")
    assert reference.cfg.architecture() == "jumprelu"
    x = inputs()
    assert_latents(encode(tmp_path / "checkpoint", x), reference.encode(x))
    assert_latents(encode(tmp_path / "inference", x), reference.encode(x))


def pre_6_folder(folder: Path, weights: dict[str, torch.Tensor], **fields) -> Path:
    """A folder in SAELens' layout before version 6: every field at the top level, hook_point."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file({key: value.contiguous() for key, value in weights.items()}, folder / "sae_weights.safetensors")
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu", "hook_point": HOOK, "hook_point_layer": 2}
    cfg.update(sae_lens_version="3.12.0", model_name="gpt2-small", **fields)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def random_weights(seed: int = 2, d_in: int = D_IN) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shapes = {"W_enc": (d_in, D_SAE), "W_dec": (D_SAE, d_in), "b_enc": (D_SAE,), "b_dec": (d_in,)}
    return {key: torch.randn(shape, generator=generator) * 0.5 for key, shape in shapes.items()}


@pytest.mark.parametrize(
    "fields",
    [
        {},  # standard, relu, apply_b_dec_to_input defaulting to true
        {"activation_fn_str": "relu", "apply_b_dec_to_input": False},
        {"activation_fn_str": "topk", "activation_fn_kwargs": {"k": 6}},
        {"normalize_activations": False, "architecture": "standard"},
    ],
)
def test_a_pre_6_folder_gives_saelens_latents(tmp_path, fields):
    folder = pre_6_folder(tmp_path / "sae", random_weights(), **fields)
    reference = SAE.load_from_disk(folder)
    x = inputs()
    assert_latents(encode(folder, x), reference.encode(x))


@pytest.mark.parametrize("old", [False, True])
def test_a_head_index_reads_that_heads_columns_of_hook_z(tmp_path, old):
    heads, head = 4, 2
    hook = "blocks.3.attn.hook_z"
    if old:
        folder = pre_6_folder(tmp_path / "sae", random_weights(), hook_point=hook, hook_point_head_index=head)
        reference = SAE.load_from_disk(folder)
    else:
        folder, reference = saved(tmp_path / "sae", "standard", hook_name=hook, metadata={"hook_head_index": head})
    layout = describe(folder)
    assert layout.head_index == head and layout.site is not None and layout.site.hook == hook
    z = inputs(heads * D_IN)  # attn.hook_z as it arrives: [n, heads * d_head], head by head
    want = reference.encode(z.view(N, heads, D_IN)[:, head : head + 1]).reshape(N, D_SAE)  # hook_z reshaping
    assert_latents(encoder(layout).encode(z).numpy(), want)


def test_centred_input_is_the_input_less_its_mean_before_b_dec(tmp_path):
    from saestools import centred

    folder, reference = saved(tmp_path / "sae", "standard", apply_b_dec_to_input=True)
    x = inputs()
    got = encoder(centred(describe(folder))).encode(x).numpy()
    assert_latents(got, reference.encode(x - x.mean(dim=-1, keepdim=True)))


def test_wide_topk_and_gated_saes_give_the_same_latents_in_tiles(tmp_path):
    global D_SAE
    wide, D_SAE = 2500, D_SAE
    try:
        D_SAE = wide
        for architecture, fields in (("topk", {"k": 9, "rescale_acts_by_decoder_norm": True}), ("gated", {})):
            folder, reference = saved(tmp_path / architecture, architecture, **fields)
            x = inputs()
            layout = describe(folder)
            whole = encoder(layout)
            tiled = encoder(layout, budget=whole.sae.encoder_bytes // 2)
            assert tiled.tiled
            # gated: SAELens computes x @ (W_enc * exp(r_mag)) + b_mag, saezarr (x @ W_enc) * exp(r_mag) + b_mag: the
            # float32 rounding of pre-activations of ~10 (a few 1e-6) shows where b_mag nearly cancels them
            atol = 1e-5 if architecture == "gated" else 1e-6
            assert_latents(tiled.encode(x).numpy(), reference.encode(x), atol=atol)
            np.testing.assert_allclose(tiled.encode(x).numpy(), whole.encode(x).numpy(), rtol=1e-6, atol=1e-6)
    finally:
        D_SAE = 64


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"architecture": "abstopk"}, "cfg.json: config sae: architecture 'abstopk' is not implemented"),
        ({"normalize_activations": "covariance_whitening"}, "normalize_activations 'covariance_whitening' is not"),
        ({"hook_point_head_index": 1}, "hook_head_index 1 of blocks.2.hook_resid_post: one head is read only of"),
        ({"activation_fn_str": "tanh-relu"}, "cfg.json: config sae: activation_fn 'tanh-relu' is not implemented"),
    ],
)
def test_what_is_not_implemented_is_refused_in_one_line_naming_the_file_and_field(tmp_path, fields, message):
    folder = pre_6_folder(tmp_path / "sae", random_weights(), **fields)
    with pytest.raises(SAEFormatError, match=message) as refused:
        describe(folder)
    assert "\n" not in str(refused.value)
