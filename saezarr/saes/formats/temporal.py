"""Temporal SAEs (`canrager/temporalSAEs`: `{model}/layer_{L}/temporal`): `conf.yaml` + `latest_ckpt.safetensors`,
refused.

SAELens' `temporal` loader reads them as its TemporalSAE, whose latents are the input's code less what attention
layers (conf.yaml's `sae.n_attn_layers`) predict from the earlier tokens' codes: a token's latents depend on the
tokens before it, which saezarr's encoder (`act(x @ W_enc + b_enc)`, one token at a time) cannot express.
"""

from __future__ import annotations

from saezarr.errors import SAEFormatError
from saezarr.inputs.configs import SAEConfig
from saezarr.saes.description import Fetch, SAEDescription
from saezarr.saes.formats import SAEFormat, register_format
from saezarr.saes.formats.mwhanna_transcoder import read_yaml

CONFIG = "conf.yaml"
WEIGHTS = "latest_ckpt.safetensors"


def describe(config: SAEConfig, fetch: Fetch, repo: str) -> SAEDescription | None:
    """None unless the folder holds a temporal SAE's conf.yaml (an `sae` mapping with n_attn_layers); refused if
    it does."""
    path = fetch(CONFIG, False)
    if path is None:
        return None
    sae = read_yaml(path, config).get("sae")
    if not isinstance(sae, dict) or "n_attn_layers" not in sae:
        return None
    raise SAEFormatError(
        f"{path}: config {config.name}: sae.n_attn_layers {sae['n_attn_layers']!r}: a temporal SAE's latents depend on "
        "the earlier tokens' (attention over their codes), which an encoder of one token at a time cannot give; not "
        "implemented"
    )


FORMAT = register_format(SAEFormat("temporal", describe, CONFIG, f"{CONFIG} + {WEIGHTS}", priority=200))
