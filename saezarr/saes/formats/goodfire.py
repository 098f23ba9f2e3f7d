"""Goodfire's Llama SAEs (`Goodfire/Llama-3.1-8B-Instruct-SAE-l19`, `Goodfire/Llama-3.3-70B-Instruct-SAE-l50`): one
`{model}-SAE-l{L}.pt(h)` state dict of nn.Linear layers (`encoder_linear.*`, `decoder_linear.*`), no settings file.

As SAELens' `goodfire` loader reads them: a ReLU SAE, `encoder_linear.weight` [d_sae, d_in] (SAELens transposes it),
`encoder_linear.bias`, b_dec never on the input (`apply_b_dec_to_input: false`), no normalisation, the residual
stream after the layer the file's name gives (SAELens' table says blocks.19 and blocks.50.hook_resid_post for its two
repositories), trained on {model}. The files are named as deepseek_r1's are; their keys tell them apart.
"""

from __future__ import annotations

from saezarr.inputs.configs import SAEConfig
from saezarr.saes.description import Fetch, SAEDescription
from saezarr.saes.formats import ITSELF, SAEFormat, register_format
from saezarr.saes.formats.deepseek_r1 import NAMES, describe_linear

ENCODER = "encoder_linear"  # the nn.Linear whose weight and bias are W_enc and b_enc


def describe(config: SAEConfig, fetch: Fetch, repo: str) -> SAEDescription | None:
    """The SAE's layout if its path is a `{model}-SAE-l{L}.pt(h)` holding `encoder_linear.weight`."""
    return describe_linear("goodfire", config, fetch, ENCODER, None)


FORMAT = register_format(
    SAEFormat(
        "goodfire",
        describe,
        ITSELF,
        "{model}-SAE-l{L}.pt(h) (encoder_linear.*)",
        priority=63,
        can_open=NAMES.matches,
        from_path=NAMES.from_path,
        site_from_path=NAMES.site,
    )
)
