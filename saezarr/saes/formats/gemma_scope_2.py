"""Gemma Scope 2 (`google/gemma-scope-2-*`): `params.safetensors` with lowercase keys, optional `config.json`.

Residual SAEs are in `resid_post_all/layer_{L}_width_{W}_l0_{small|big}` (every layer) and
`resid_post/layer_{L}_width_{W}_l0_{small|medium|big}` (a few layers); the folder's name is the config's name.
"""

from __future__ import annotations

import json
import re

from saezarr.errors import SAEFormatError
from saezarr.inputs.configs import SAEConfig
from saezarr.saes.description import Fetch, SAEDescription
from saezarr.saes.formats import SAEFormat, register_format
from saezarr.sites import Site, gemma_scope_2_site, hf_hook_site

WEIGHTS = "params.safetensors"
CONFIG = "config.json"
MARKER = WEIGHTS  # the file whose presence says the layout
FOLDER = re.compile(r"(?:^|/)(layer_(\d+)_width_\w+_l0_\w+)$")
JUMPRELU_NAMES = ("jumprelu", "jump_relu")


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
        return None
    known = from_path(config.path)
    settings = fetch(CONFIG, False)
    site = _settings_site(settings, config) if settings is not None else None
    site = site or gemma_scope_2_site(config.path, known.get("layer", config.layer))
    return SAEDescription("gemma_scope_2", weights, "jumprelu", "w_enc", "b_enc", "threshold", site=site, **known)


def _settings_site(path, config: SAEConfig) -> Site | None:
    """The site config.json names (None if it names none); refuse what else it says that is not implemented."""
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SAEFormatError(f"{path}: config {config.name}: not readable JSON ({exc})") from None
    if not isinstance(settings, dict):
        raise SAEFormatError(f"{path}: config {config.name}: expected a JSON object")
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
