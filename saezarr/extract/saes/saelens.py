"""SAELens' format (any repository or folder): `cfg.json` + `sae_weights.safetensors`.

The cfg's fields are at the top level before SAELens 6 (`hook_point`, `activation_fn_kwargs.k`, defaults such as
`apply_b_dec_to_input: true`) and partly under `metadata` from 6 on (`hook_name`); both are read.
"""

from __future__ import annotations

import json

from saezarr.configs import SAEConfig
from saezarr.errors import SaezarrError
from saezarr.extract.saes.layout import ARCHITECTURES, RESID_POST, Fetch, Layout

CONFIG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
MARKER = CONFIG  # the file whose presence says the layout
ARCHITECTURE_NAMES = {"jumprelu": "jumprelu", "jump_relu": "jumprelu", "standard": "relu", "relu": "relu"}
ARCHITECTURE_NAMES.update(topk="topk")
NO_NORMALISATION = (None, False, "none")


def read_cfg(config: SAEConfig, fetch: Fetch) -> tuple[dict, object] | None:
    """The SAE's cfg.json as a dict (None if its folder has none), and the file's path."""
    path = fetch(CONFIG, False)
    if path is None:
        return None
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SaezarrError(f"{path}: config {config.name}: not readable JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise SaezarrError(f"{path}: config {config.name}: expected a JSON object")
    return cfg, path


def field(cfg: dict, *names: str, default=None):
    """A cfg field by any of its names, at the top level (before SAELens 6) or under `metadata` (6 on)."""
    for scope in (cfg, cfg.get("metadata") or {}):
        for name in names:
            if name in scope:
                return scope[name]
    return default


def hook_layer(cfg: dict, where: str) -> int:
    """The decoder layer whose output a resid_post SAE reads; other hooks are refused."""
    hook = field(cfg, "hook_name", "hook_point")
    match = RESID_POST.match(str(hook)) if hook is not None else None
    if match is None:
        raise SaezarrError(
            f"{where}: hook_name {hook!r} is not supported (only blocks.{{L}}.hook_resid_post, the residual "
            "stream after decoder layer L)"
        )
    return int(match.group(1))


def describe(config: SAEConfig, fetch: Fetch) -> Layout | None:
    """The SAE's layout if its folder holds a cfg.json; refuse what this reader does not implement."""
    found = read_cfg(config, fetch)
    if found is None:
        return None
    cfg, path = found
    where = f"{path}: config {config.name}"
    architecture = ARCHITECTURE_NAMES.get(str(cfg.get("architecture", "standard")).lower())
    activation = field(cfg, "activation_fn", "activation_fn_str")
    if architecture == "relu" and activation == "topk":  # before SAELens 6, TopK was a standard SAE's activation
        architecture = "topk"
    elif architecture == "relu" and activation not in (None, "relu"):
        raise SaezarrError(f"{path}: config {config.name}: activation_fn {activation!r} is not implemented (relu)")
    if architecture not in ARCHITECTURES:
        raise SaezarrError(
            f"{where}: architecture {cfg.get('architecture')!r} is not implemented (jumprelu, standard, topk)"
        )
    normalise = field(cfg, "normalize_activations", default="none")
    if normalise not in NO_NORMALISATION:
        raise SaezarrError(
            f"{where}: normalize_activations {normalise!r} is not implemented (only 'none'); refusing to encode "
            "without it"
        )
    k = None
    if architecture == "topk":
        k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
        if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
            raise SaezarrError(f"{where}: a topk SAE needs a positive integer 'k', got {k!r}")
    subtract = bool(cfg.get("apply_b_dec_to_input", True))  # SAELens' default when the cfg does not say
    weights = fetch(WEIGHTS, True)
    return Layout(
        "saelens",
        weights,
        architecture,
        "W_enc",
        "b_enc",
        threshold="threshold" if architecture == "jumprelu" else None,
        b_dec="b_dec" if subtract else None,
        k=k,
        layer=hook_layer(cfg, where),
        d_in=cfg.get("d_in"),
        d_sae=cfg.get("d_sae"),
        name=None if config.path != "." else str(field(cfg, "hook_name", "hook_point")),
    )
