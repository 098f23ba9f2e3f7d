"""Pythia's sites (GPT-NeoX): decoder layers in `.layers`; attention and MLP run in parallel inside each, both
reading the layer's input through norms of their own, so there is no hook_resid_mid."""

from saezarr.models.architectures import ARCHITECTURES, Block, ModuleSite, block_sites

NEOX = Block("attention", "dense", "post_attention_layernorm", "layer", parallel=True)


def _sequential(config) -> str | None:
    """Why a GPT-NeoX config does not fit the parallel table: its blocks run attention, then the MLP."""
    if getattr(config, "use_parallel_residual", True):
        return None
    return (
        "use_parallel_residual is false (attention, then the MLP), but saezarr's GPT-NeoX table places parallel blocks"
    )


ARCHITECTURES.register("gpt_neox", block_sites("layers", ModuleSite("embed_in"), NEOX, _sequential))
