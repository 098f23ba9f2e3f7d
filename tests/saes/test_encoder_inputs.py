"""The encoder's input preparation and weight layouts beyond the published formulas' plain case: one head of
attn.hook_z, centring, SAELens' normalisations, a folded scale, JumpReLU's ReLU, and W_enc stored [d_sae, d_in]
in bfloat16, whole and in tiles."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from saestools import assert_latents, describe, encoder
from safetensors.torch import save_file

from saezarr.errors import SAEFormatError
from saezarr.saes.normalise import NORMALISATIONS

D_IN, N = 8, 30


def relu_folder(folder: Path, width: int, dtype: torch.dtype = torch.float32, **cfg: object) -> Path:
    """A sparsify-layout TopK SAE (k 5): W_enc stored [d_sae, d_in], b_dec subtracted."""
    generator = torch.Generator().manual_seed(0)
    folder.mkdir(parents=True)
    state = {
        "encoder.weight": torch.randn(width, D_IN, generator=generator).to(dtype),
        "encoder.bias": (torch.randn(width, generator=generator) * 0.2).to(dtype),
        "b_dec": (torch.randn(D_IN, generator=generator) * 0.5).to(dtype),
    }
    save_file(state, folder / "sae.safetensors")
    (folder / "cfg.json").write_text(json.dumps({"d_in": D_IN, "num_latents": width, "k": 5, **cfg}))
    return folder


def test_a_bfloat16_transposed_w_enc_gives_the_same_latents_whole_and_in_tiles(tmp_path):
    folder = relu_folder(tmp_path / "layers.2", 2500, torch.bfloat16)
    layout = describe(folder)
    assert layout.W_enc_transposed
    whole = encoder(layout)
    tiled = encoder(layout, budget=whole.sae.encoder_bytes // 3)
    assert tiled.tiled and not whole.tiled
    x = torch.randn(N, D_IN, generator=torch.Generator().manual_seed(1))
    from safetensors.torch import load_file

    state = {k: v.float() for k, v in load_file(folder / "sae.safetensors").items()}
    pre = torch.relu((x - state["b_dec"]) @ state["encoder.weight"].T + state["encoder.bias"])
    values, indices = pre.topk(5, dim=-1)
    want = torch.zeros_like(pre).scatter_(-1, indices, values)
    assert_latents(whole.encode(x).numpy(), want)
    assert_latents(tiled.encode(x).numpy(), want)


def test_one_head_is_its_columns_and_a_site_of_other_width_is_refused(tmp_path):
    layout = describe(relu_folder(tmp_path / "layers.2", 40))
    head = dataclasses.replace(layout, head_index=2)
    z = torch.randn(N, 4 * D_IN, generator=torch.Generator().manual_seed(1))
    want = encoder(layout).encode(z[:, 2 * D_IN : 3 * D_IN]).numpy()
    np.testing.assert_array_equal(encoder(head).encode(z).numpy(), want)
    with pytest.raises(SAEFormatError, match="hook_head_index 2 of heads of 8 columns, but the site has 20 columns"):
        encoder(head).encode(z[:, :20])


@pytest.mark.parametrize("normalise", ["layer_norm", "constant_norm_rescale"])
def test_normalisations_are_saelens_run_time_functions(normalise):
    from sae_lens import SAE

    sae = SAE.from_dict({"architecture": "standard", "d_in": D_IN, "d_sae": 4, "normalize_activations": normalise})
    x = torch.randn(N, D_IN, generator=torch.Generator().manual_seed(2)) * 3
    torch.testing.assert_close(
        NORMALISATIONS[normalise](x, D_IN), sae.run_time_activation_norm_fn_in(x), rtol=0, atol=0
    )


def test_centring_scaling_and_b_dec_come_in_that_order(tmp_path):
    layout = describe(relu_folder(tmp_path / "layers.2", 40))
    x = torch.randn(N, D_IN, generator=torch.Generator().manual_seed(3))
    prepared = encoder(dataclasses.replace(layout, centred=True, input_scale=2.0)).prepare(x)
    b_dec = encoder(layout).b_dec
    assert b_dec is not None
    torch.testing.assert_close(prepared, (x - x.mean(dim=-1, keepdim=True)) * 2.0 - b_dec)


def test_jumprelu_keeps_only_positive_values_above_the_threshold():
    from saezarr.saes.activations import ACTIVATIONS, Bounds

    pre = torch.tensor([[-0.5, -0.1, 0.0, 0.2, 0.7]])
    threshold = torch.tensor([-1.0, -0.2, -0.2, 0.3, 0.3])
    got = ACTIVATIONS["jumprelu"].activate(pre.clone(), Bounds(threshold))
    want = torch.relu(pre) * (pre > threshold)  # SAELens' JumpReLUSAE.encode
    assert torch.equal(got, want) and not torch.signbit(got).any()
