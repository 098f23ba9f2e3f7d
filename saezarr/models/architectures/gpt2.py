"""GPT-2's and GPT-J's sites: decoder layers in `.h`. GPT-2's hook_embed is the token embedding alone (the positions
are added before the first layer, whose input is hook_resid_pre); GPT-J runs attention and MLP in parallel through
one LayerNorm, `ln_1`, which TransformerLens ties to its ln2."""

from saezarr.models.architectures import ARCHITECTURES, Block, ModuleSite, block_sites

GPT2 = Block("attn", "c_proj", "ln_2", "layer")
GPTJ = Block("attn", "out_proj", "ln_1", "layer", parallel=True)

ARCHITECTURES.register("gpt2", block_sites("h", ModuleSite("wte"), GPT2))
ARCHITECTURES.register("gptj", block_sites("h", ModuleSite("wte"), GPTJ))
