"""Gemma Scope 1 (`google/gemma-scope-*-res`): `params.npz` in `layer_{L}/width_{W}/average_l0_{N}` (or `canonical`)."""

from __future__ import annotations

import re

from saezarr.inputs.configs import SAEConfig
from saezarr.saes.description import Fetch, SAEDescription
from saezarr.saes.formats import SAEFormat, register_format
from saezarr.sites import gemma_scope_1_site

WEIGHTS = "params.npz"
MARKER = WEIGHTS  # the file whose presence says the layout
FOLDER = re.compile(r"(?:^|/)layer_(\d+)/width_\w+/(?:average_l0_(\d+)|canonical)$")


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
    return SAEDescription("gemma_scope", weights, "jumprelu", "W_enc", "b_enc", "threshold", site=site, **known)


FORMAT = register_format(
    SAEFormat("gemma_scope", describe, MARKER, WEIGHTS, priority=30, can_open=matches, from_path=from_path)
)
