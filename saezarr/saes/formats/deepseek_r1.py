"""qresearch's DeepSeek R1 Distill SAE (`qresearch/DeepSeek-R1-Distill-Llama-8B-SAE-l19`): one
`{model}-SAE-l{L}.pt` state dict of nn.Linear layers (`encoder.*`, `decoder.*`), no settings file.

As SAELens' `deepseek_r1` loader reads it: a ReLU SAE, `encoder.weight` [d_sae, d_in] (SAELens transposes it),
`encoder.bias`, b_dec never on the input, no normalisation, the residual stream after the layer the file's name
gives (`l{L}`), trained on {model} with a context of 1024 tokens. SAELens encodes in bfloat16 (its config's dtype);
saezarr in float32. Goodfire's files are named alike and hold `encoder_linear.*`: the state dict's keys tell them
apart (`describe_linear`).
"""

from __future__ import annotations

import re

from saezarr.inputs.configs import SAEConfig
from saezarr.saes.description import Fetch, SAEDescription
from saezarr.saes.formats import ITSELF, LayerFiles, SAEFormat, arrays_of, register_format, sae_file
from saezarr.sites import RESID_POST

FILE = re.compile(r"(?:^|/)([^/]+)-SAE-l(?P<layer>\d+)\.pth?$")  # {model}-SAE-l{layer}.pt (Goodfire's also .pth)
ENCODER = "encoder"  # the nn.Linear whose weight and bias are W_enc and b_enc
CONTEXT_SIZE = 1024  # what SAELens' deepseek_r1 config says
NAMES = LayerFiles(FILE, RESID_POST)


def describe_linear(
    layout: str, config: SAEConfig, fetch: Fetch, encoder: str, context_size: int | None
) -> SAEDescription | None:
    """A `{model}-SAE-l{L}.pt` whose encoder is the nn.Linear `encoder` (None if its state dict has none): ReLU of
    `x @ encoder.weight.T + encoder.bias`, b_dec not subtracted, read at the residual stream after layer L."""
    found = sae_file(config, fetch, FILE)
    if found is None or f"{encoder}.weight" not in arrays_of(found[0], config):
        return None
    weights, name = found
    site = NAMES.site(config.path)
    assert site is not None  # sae_file matched FILE
    return SAEDescription(
        layout,
        weights,
        "relu",
        f"{encoder}.weight",
        f"{encoder}.bias",
        W_enc_transposed=True,
        layer=site.layer,
        site=site,
        model_name=name.group(1),
        context_size=context_size,
    )


def describe(config: SAEConfig, fetch: Fetch, repo: str) -> SAEDescription | None:
    """The SAE's layout if its path is a `{model}-SAE-l{L}.pt` holding `encoder.weight`."""
    return describe_linear("deepseek_r1", config, fetch, ENCODER, CONTEXT_SIZE)


FORMAT = register_format(
    SAEFormat(
        "deepseek_r1",
        describe,
        ITSELF,
        "{model}-SAE-l{L}.pt (encoder.*)",
        priority=62,
        can_open=NAMES.matches,
        from_path=NAMES.from_path,
        site_from_path=NAMES.site,
    )
)
