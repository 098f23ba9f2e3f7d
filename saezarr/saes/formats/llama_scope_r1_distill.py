"""Llama Scope R1 Distill (`fnlp/Llama-Scope-R1-Distill`): `config.json` + `sae_weights.safetensors` in folders
`{data}/L{L}R`.

As SAELens' `llama_scope_r1_distill` loader reads them: JumpReLU with the thresholds exp(`log_jumprelu_threshold`)
(`log_jumprelu`), `encoder.weight` [d_sae, d_in] (an nn.Linear's), `encoder.bias`, b_dec never on the input, and the
input times the norm scaling factor SAELens' registry gives (`normalize_activations: expected_average_only_in`,
folded into W_enc by `SAE.from_pretrained`); width d_model x expansion_factor. The site is config.json's
`hook_point_in`. SAELens' config names meta-llama/Llama-3.1-8B as the model, though the SAEs were trained on
DeepSeek-R1-Distill-Llama-8B (its registry's model): no model is checked here.
"""

from __future__ import annotations

import re

from saezarr.inputs.configs import SAEConfig
from saezarr.saes.description import Fetch, SAEDescription
from saezarr.saes.formats import SAEFormat, read_settings, register_format
from saezarr.saes.formats.llama_scope import jumprelu_site, number
from saezarr.saes.formats.saelens import normalisation

CONFIG = "config.json"
WEIGHTS = "sae_weights.safetensors"
FIELDS = ("hook_point_in", "expansion_factor")  # config.json's fields that say the layout
FOLDER = re.compile(r"(?:^|/)L\d+R$")
NORMALISATION = {"normalize_activations": "expected_average_only_in"}  # what SAELens' loader says


def matches(path: str) -> bool:
    """True if the folder is named as Llama Scope R1 Distill names its SAEs."""
    return FOLDER.search(path) is not None


def describe(config: SAEConfig, fetch: Fetch, repo: str) -> SAEDescription | None:
    """The SAE's layout if its folder holds a config.json with hook_point_in and expansion_factor."""
    found = read_settings(config, fetch, CONFIG)
    if found is None or not all(name in found[0] for name in FIELDS):
        return None
    settings, path = found
    where = f"{path}: config {config.name}"
    site = jumprelu_site(settings, path, where)
    d_in = int(number(settings, "d_model", where))
    d_sae = d_in * int(number(settings, "expansion_factor", where))
    scaling = normalisation(NORMALISATION, config, where)
    weights = fetch(WEIGHTS, True)
    assert weights is not None  # required: fetch raises rather than return None
    return SAEDescription(
        "llama_scope_r1_distill",
        weights,
        "log_jumprelu",
        "encoder.weight",
        "encoder.bias",
        W_enc_transposed=True,
        vectors=(("log_threshold", "log_jumprelu_threshold"),),
        layer=site.layer,
        d_in=d_in,
        d_sae=d_sae,
        site=site,
        **scaling,
    )


FORMAT = register_format(
    SAEFormat("llama_scope_r1_distill", describe, CONFIG, f"{CONFIG} + {WEIGHTS}", priority=45, can_open=matches)
)
