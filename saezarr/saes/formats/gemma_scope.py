"""Gemma Scope 1 (`google/gemma-scope-*-{res,att,mlp,transcoders}`): `params.npz` in
`layer_{L}/width_{W}/average_l0_{N}` (or `canonical`; `embedding/width_{W}/...` in `-res`).

Every family stores the same arrays (JumpReLU, `W_enc` [d_in, d_sae], no b_dec on the input: a transcoder's b_dec is
its output's); the repository's name says the site (`-res`: hook_resid_post, or hook_embed for `embedding/`; `-att`:
attn.hook_z, every head's d_head columns; `-mlp`: hook_mlp_out; `-transcoders`: ln2.hook_normalized), as SAELens'
`gemma_2` and `gemma_2_transcoder` loaders read them. An embedding SAE was trained on embeddings before Gemma's
sqrt(d_model) scaling, so its input is divided by sqrt(d_in), as SAELens divides its W_enc.
"""

from __future__ import annotations

import re

from saezarr.errors import SAEFormatError
from saezarr.inputs.configs import SAEConfig
from saezarr.saes.description import Fetch, SAEDescription
from saezarr.saes.formats import SAEFormat, register_format
from saezarr.saes.weights import WeightsUnreadable, read_header
from saezarr.sites import gemma_scope_1_site

WEIGHTS = "params.npz"
MARKER = WEIGHTS  # the file whose presence says the layout
FOLDER = re.compile(r"(?:^|/)layer_(\d+)/width_\w+/(?:average_l0_(\d+)|canonical)$")
EMBEDDING = "hook_embed"


def matches(path: str) -> bool:
    """True if the folder is named as Gemma Scope 1 names its SAEs."""
    return FOLDER.search(path) is not None


def from_path(path: str) -> dict:
    """The layer and average L0 the folder's name gives."""
    folder = FOLDER.search(path)
    if folder is None:
        return {}
    return {"layer": int(folder.group(1)), "average_l0": int(folder.group(2)) if folder.group(2) else None}


def describe(config: SAEConfig, fetch: Fetch, repo: str) -> SAEDescription | None:
    """The SAE's layout if its folder holds a params.npz (JumpReLU, upper-case keys, no b_dec on the input); the
    repository's name says its site."""
    weights = fetch(WEIGHTS, False)
    if weights is None:
        return None
    known = from_path(config.path)
    site = gemma_scope_1_site(repo, config.path, known.get("layer", config.layer))
    scale = embedding_scale(weights, config) if site is not None and site.hook == EMBEDDING else None
    return SAEDescription(
        "gemma_scope", weights, "jumprelu", "W_enc", "b_enc", "threshold", site=site, input_scale=scale, **known
    )


def embedding_scale(weights, config: SAEConfig) -> float:
    """1 / sqrt(d_in): what SAELens folds into an embedding SAE's W_enc."""
    try:
        shape = read_header(weights)["W_enc"].shape
    except (WeightsUnreadable, KeyError) as exc:
        raise SAEFormatError(f"{weights}: config {config.name}: W_enc: not readable ({exc})") from None
    return 1.0 / float(shape[0]) ** 0.5


FORMAT = register_format(
    SAEFormat("gemma_scope", describe, MARKER, WEIGHTS, priority=30, can_open=matches, from_path=from_path)
)
