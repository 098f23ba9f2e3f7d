"""Gemma Scope 2 (`google/gemma-scope-2-*`): `params.safetensors` with lowercase keys, optional `config.json`.

Every folder (`resid_post`, `attn_out`, `mlp_out`, `transcoder`, each also `*_all`) holds
`layer_{L}_width_{W}_l0_{small|medium|big}[_affine]`, the folder's name the config's name; as SAELens' `gemma_3` loader
reads them: JumpReLU (config.json's architecture must be `jump_relu`), `w_enc` [d_in, d_sae], b_dec never on the input
(a transcoder's b_dec, and its affine skip connection, are its output's). Sites: config.json's `hf_hook_point_in`, else
the folder's prefix; attn_out SAEs read attn.hook_z (o_proj's input, every head), transcoders the MLP's input as
pre_feedforward_layernorm leaves it, gain included (`blocks.L.mlp.hook_in`). Cross-layer transcoders (`clt/`) are
refused.
"""

from __future__ import annotations

import re

from saezarr.errors import SAEFormatError
from saezarr.inputs.configs import SAEConfig
from saezarr.saes.description import Fetch, SAEDescription
from saezarr.saes.formats import SAEFormat, json_object, register_format
from saezarr.sites import Site, gemma_scope_2_site, hf_hook_site

WEIGHTS = "params.safetensors"
CONFIG = "config.json"
MARKER = WEIGHTS  # the file whose presence says the layout
FOLDER = re.compile(r"(?:^|/)(layer_(\d+)_width_\w+_l0_\w+)$")
JUMPRELU_NAMES = ("jumprelu", "jump_relu")
MLP_INPUT = "mlp.hook_in"  # what a transcoder reads: pre_feedforward_layernorm's output


def matches(path: str) -> bool:
    """True if the folder is named as Gemma Scope 2 names its SAEs."""
    return FOLDER.search(path) is not None


def from_path(path: str) -> dict:
    """The layer the folder's name gives."""
    folder = FOLDER.search(path)
    return {"layer": int(folder.group(2))} if folder else {}


def describe(config: SAEConfig, fetch: Fetch, repo: str) -> SAEDescription | None:
    """The SAE's layout if its folder holds a params.safetensors; a config.json beside it must agree (JumpReLU) and
    says its site, else the folder's prefix does."""
    weights = fetch(WEIGHTS, False)
    if weights is None:
        if "clt" in config.path.split("/"):
            raise SAEFormatError(
                f"{config.path}: config {config.name}: a Gemma Scope 2 cross-layer transcoder (clt/): not implemented"
            )
        return None
    known = from_path(config.path)
    settings = fetch(CONFIG, False)
    site = _settings_site(settings, config) if settings is not None else None
    site = _mlp_input(site) if site is not None else gemma_scope_2_site(config.path, known.get("layer", config.layer))
    return SAEDescription("gemma_scope_2", weights, "jumprelu", "w_enc", "b_enc", "threshold", site=site, **known)


def _mlp_input(site: Site) -> Site:
    """The site a config.json names, with the MLP's input read where a TransformerLens `hook_mlp_in` names
    pre_feedforward_layernorm's output (hook_mlp_in, SAELens' name for it, is the residual stream before that norm;
    the folder prefixes and hf hooks already say mlp.hook_in: saezarr.sites)."""
    if site.kind != "hook_mlp_in" or site.layer is None:
        return site
    return Site(f"blocks.{site.layer}.{MLP_INPUT}", site.said_by)


def _settings_site(path, config: SAEConfig) -> Site | None:
    """The site config.json names (None if it names none); refuse what else it says that is not implemented."""
    settings = json_object(path, config)
    architecture = str(settings.get("architecture", "jumprelu")).lower()
    if architecture not in JUMPRELU_NAMES:
        raise SAEFormatError(
            f"{path}: config {config.name}: architecture {architecture!r} is not implemented for Gemma Scope 2 "
            "(only JumpReLU SAEs)"
        )
    for key in ("hf_hook_point_in", "hook_point_in"):
        if settings.get(key):
            return hf_hook_site(str(settings[key]), f"{key} in {path}")
    return None


FORMAT = register_format(
    SAEFormat(
        "gemma_scope_2",
        describe,
        MARKER,
        WEIGHTS,
        priority=20,
        can_open=matches,
        from_path=from_path,
        site_from_path=gemma_scope_2_site,
    )
)
