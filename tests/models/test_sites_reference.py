"""Every site of every built-in site table reads what TransformerLens' `run_with_cache` gives at that hook, for a
tiny random model of each architecture loaded under the official name it stands for (tests/tlref.py): GPT-2, GPT-J,
Pythia (GPT-NeoX), Llama 3.1, Mistral, Qwen 2.5 and 3, Gemma 1, 2 and 3. The sentences are read as one right-padded
batch, TransformerLens runs each alone."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from tlref import hooked_transformer, site_value

from saezarr.compat import load_base_model
from saezarr.models.architectures import ARCHITECTURES
from saezarr.models.language_model import SiteReader
from saezarr.testing.synthetic import ARCHITECTURE_FIELDS, DEMO_CSV, write_architecture_model

pytest.importorskip("transformer_lens")
SENTENCES = ["I think that you are right, and we can talk about it later!", "Leave now."]
LAYERS = 2


def every_hook(model_type: str, num_layers: int) -> list[str]:
    """Every site the model type's table places, at every layer."""
    kinds = ARCHITECTURES[model_type].sites
    return sorted(
        kind if kind == "hook_embed" else f"blocks.{layer}.{kind}" for kind in kinds for layer in range(num_layers)
    )


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURE_FIELDS))
def test_every_site_reads_what_transformer_lens_caches(model_type, tmp_path):
    from transformers import AutoTokenizer

    corpus = pd.read_csv(DEMO_CSV)["sentence"].tolist()[:50]
    folder = write_architecture_model(tmp_path / model_type, corpus, model_type, num_layers=LAYERS)
    tokens = [AutoTokenizer.from_pretrained(folder)(s, return_tensors="pt")["input_ids"][0] for s in SENTENCES]
    hooks = every_hook(model_type, LAYERS)
    rows = np.concatenate([np.full(len(t), i) for i, t in enumerate(tokens)])
    positions = np.concatenate([np.arange(len(t)) for t in tokens])
    base = load_base_model(folder, torch.float32, attn_implementation="eager").eval()
    with SiteReader(base, hooks) as reader:
        read = reader.read([([t.numpy() for t in tokens], rows, positions)])
    tl = hooked_transformer(folder)
    for hook in hooks:
        expected = np.concatenate([site_value(tl, t, hook).numpy() for t in tokens])
        got = read[hook].float().numpy()
        scale = np.abs(expected).max()
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * scale, err_msg=f"{model_type} {hook}")
    parallel = tl.cfg.parallel_attn_mlp  # TransformerLens has no hook_resid_mid there, nor does the table
    assert any(hook.endswith("hook_resid_mid") for hook in hooks) is not parallel
