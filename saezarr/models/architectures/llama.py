"""Llama's sites, and those of the models laid out as it is (Mistral, Qwen 2, 2.5 and 3): decoder layers in
`.layers`, attention then MLP, each behind an RMSNorm."""

from saezarr.models.architectures import ARCHITECTURES, Block, ModuleSite, block_sites

LLAMA = Block("self_attn", "o_proj", "post_attention_layernorm", "rms")

for model_type in ("llama", "mistral", "qwen2", "qwen3"):
    ARCHITECTURES.register(model_type, block_sites("layers", ModuleSite("embed_tokens"), LLAMA))
