"""Gemma's sites. Gemma 1 is laid out as Llama; Gemma 2 and 3 wrap attention and MLP in sandwich norms, so
TransformerLens' hook_attn_out and hook_mlp_out are the outputs of the norms after them, and the MLP reads through
`pre_feedforward_layernorm`. A multimodal Gemma 3 (4B-27B, `Gemma3Model`) keeps its decoder layers in its language
model's. hook_embed is the first layer's input: the embedding times √d, which transformers 4.x applies outside the
embedding module and 5.x inside it."""

from saezarr.compat import gemma3_layers
from saezarr.models.architectures import ARCHITECTURES, Block, ModuleSite, block_sites

GEMMA = Block("self_attn", "o_proj", "post_attention_layernorm", "rms")
SANDWICH = Block(
    "self_attn",
    "o_proj",
    "pre_feedforward_layernorm",
    "rms",
    attn_out="post_attention_layernorm",
    mlp_out="post_feedforward_layernorm",
)


def _sites(layers: str, block: Block):
    return block_sites(layers, ModuleSite(f"{layers}.0", "input"), block)


ARCHITECTURES.register("gemma", _sites("layers", GEMMA))
for model_type in ("gemma2", "gemma3_text"):
    ARCHITECTURES.register(model_type, _sites("layers", SANDWICH))
ARCHITECTURES.register("gemma3", _sites(gemma3_layers(), SANDWICH))
