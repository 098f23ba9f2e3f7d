"""TransformerLens as the reference: a tiny Hugging Face checkpoint loaded into a HookedTransformer under the
official name of the model it stands for, so that TransformerLens applies that model's own conversion (norms,
rotary, parallel attention, soft-capping, sandwich norms) to the tiny weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

# the official name each tiny model type stands for in TransformerLens' table
OFFICIAL = {
    "gpt2": "gpt2",
    "gptj": "EleutherAI/gpt-j-6B",
    "gpt_neox": "EleutherAI/pythia-70m-deduped",
    "llama": "meta-llama/Llama-3.1-8B",
    "mistral": "mistralai/Mistral-7B-v0.1",
    "qwen2": "Qwen/Qwen2.5-0.5B",
    "qwen3": "Qwen/Qwen3-0.6B",
    "gemma": "google/gemma-2b",
    "gemma2": "google/gemma-2-2b",
    "gemma3_text": "google/gemma-3-1b-pt",
}
# TransformerLens reads these model types' configs from its own table by name: their dims come from the tiny model
NAMED_CONFIGS = ("llama", "gemma", "gemma2", "gemma3_text")
# Where TransformerLens' table and transformers disagree on a real checkpoint, the reference takes transformers' side
# and the test says so: Gemma 1's MLP is exact GELU in TransformerLens, the tanh approximation in transformers (about
# 2e-4 of hook_mlp_out on the tiny model, and everything downstream of it)
KNOWN_DIVERGENCES = {"gemma": {"act_fn": "gelu_pytorch_tanh"}}


def _tiny_dims(hf_config) -> dict:
    heads = hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
    return {
        "d_model": hf_config.hidden_size,
        "d_head": head_dim,
        "n_heads": heads,
        "n_key_value_heads": getattr(hf_config, "num_key_value_heads", None),
        "d_mlp": hf_config.intermediate_size,
        "n_layers": hf_config.num_hidden_layers,
        "d_vocab": hf_config.vocab_size,
        "d_vocab_out": hf_config.vocab_size,
        "n_ctx": min(hf_config.max_position_embeddings, 2048),
        "rotary_dim": head_dim,
        "attn_scale": head_dim**0.5,  # Gemma 2 and 3 override it below with their query_pre_attn_scalar
    } | ({"attn_scale": hf_config.query_pre_attn_scalar**0.5} if hasattr(hf_config, "query_pre_attn_scalar") else {})


def hooked_transformer(folder: Path, processing: dict | None = None):
    """The tiny checkpoint at folder as TransformerLens loads the model it stands for (`from_pretrained_no_processing`
    with `processing`, e.g. {"center_writing_weights": True}, as SAELens' model_from_pretrained_kwargs)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens import loading_from_pretrained as loading
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32).eval()
    model_type = hf_model.config.model_type
    official = OFFICIAL[model_type]
    if model_type in NAMED_CONFIGS:
        cfg = loading.get_pretrained_model_config(official, dtype=torch.float32, device="cpu")
        fields = {f.name for f in dataclasses.fields(HookedTransformerConfig) if f.init}
        values = {key: value for key, value in cfg.to_dict().items() if key in fields}
        values |= _tiny_dims(hf_model.config) | KNOWN_DIVERGENCES.get(model_type, {})
        cfg = HookedTransformerConfig(**values)
    else:
        cfg = loading.get_pretrained_model_config(str(folder), dtype=torch.float32, device="cpu")
    state = loading.get_pretrained_state_dict(official, cfg, hf_model=hf_model, dtype=torch.float32)
    model = HookedTransformer(cfg, tokenizer=AutoTokenizer.from_pretrained(folder))
    options = {"fold_ln": False, "center_writing_weights": False, "center_unembed": False}
    options |= {"fold_value_biases": False, "refactor_factored_attn_matrices": False}
    model.load_and_process_state_dict(state, **(options | (processing or {})))
    model.set_use_hook_mlp_in(True)
    return model.eval()


def site_value(model, tokens: torch.Tensor, hook: str) -> torch.Tensor:
    """TransformerLens' value at a hook for one unpadded sentence [seq, width] (hook_z's heads flattened in order);
    `mlp.hook_in`, which HookedTransformer does not hook, is its ln2's normalised input times the gain, plus the bias."""
    _, cache = model.run_with_cache(tokens[None])
    if hook.endswith("mlp.hook_in"):
        layer = int(hook.split(".")[1])
        norm = model.blocks[layer].ln2
        value = cache[f"blocks.{layer}.ln2.hook_normalized"][0] * norm.w + getattr(norm, "b", 0.0)
    else:
        value = cache[hook][0]
    return value.reshape(len(tokens), -1).detach()
