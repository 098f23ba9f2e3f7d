"""SAELens' format (any repository or folder): `cfg.json` + `sae_weights.safetensors`.

The cfg's fields are at the top level before SAELens 6 (`hook_point`, `activation_fn_kwargs.k`, defaults such as
`apply_b_dec_to_input: true`) and partly under `metadata` from 6 on (`hook_name`); both are read.
"""

from __future__ import annotations

import json

from saezarr.errors import SAEFormatError
from saezarr.inputs.configs import SAEConfig
from saezarr.saes.activations import ACTIVATIONS, Activation, known_activations
from saezarr.saes.description import Fetch, SAEDescription
from saezarr.saes.formats import SAEFormat, register_format
from saezarr.sites import Site

CONFIG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
MARKER = CONFIG  # the file whose presence says the layout
SAELENS_NAMES = {"jump_relu": "jumprelu", "standard": "relu"}  # SAELens' names for registered activations
NO_NORMALISATION = (None, False, "none")
# TransformerLens' from_pretrained kwargs that change none of the sites saezarr reads; center_writing_weights is
# checked against the model (a no-op without LayerNorm), any other kwarg is refused
NEUTRAL_MODEL_KWARGS = frozenset(
    {"fold_ln", "center_unembed", "fold_value_biases", "refactor_factored_attn_matrices", "dtype", "torch_dtype"}
    | {"device", "n_devices", "move_to_device", "default_padding_side", "first_n_layers"}
)


def read_cfg(config: SAEConfig, fetch: Fetch) -> tuple[dict, object] | None:
    """The SAE's cfg.json as a dict (None if its folder has none), and the file's path."""
    path = fetch(CONFIG, False)
    if path is None:
        return None
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SAEFormatError(f"{path}: config {config.name}: not readable JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise SAEFormatError(f"{path}: config {config.name}: expected a JSON object")
    return cfg, path


def field(cfg: dict, *names: str, default=None):
    """A cfg field by any of its names, at the top level (before SAELens 6) or under `metadata` (6 on)."""
    for scope in (cfg, cfg.get("metadata") or {}):
        for name in names:
            if name in scope:
                return scope[name]
    return default


def site(cfg: dict, path: object, where: str) -> Site:
    """The site the cfg names (`hook_name`, `hook_point` before SAELens 6); a head index is refused."""
    hook = field(cfg, "hook_name", "hook_point")
    if not isinstance(hook, str) or not hook:
        raise SAEFormatError(f"{where}: the cfg names no hook_name, so the site the SAE reads is unknown")
    head = field(cfg, "hook_head_index", "hook_point_head_index")
    if head is not None:
        raise SAEFormatError(
            f"{where}: hook_head_index {head!r}: the SAE reads one attention head of {hook}; not implemented (refused "
            "rather than encode every head)"
        )
    return Site(hook, f"hook_name in {path}")


def training_facts(cfg: dict, where: str) -> dict:
    """What the cfg says of the model's activations in training that decides the numbers; refuse what saezarr does
    not reproduce (no BOS, a TransformerLens processing it does not apply)."""
    if field(cfg, "prepend_bos", default=True) is False:
        raise SAEFormatError(
            f"{where}: prepend_bos is false (trained without BOS); saezarr prepends BOS to every sentence and never "
            "encodes it, so it would read other activations: not implemented"
        )
    kwargs = field(cfg, "model_from_pretrained_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise SAEFormatError(f"{where}: model_from_pretrained_kwargs must be an object, got {kwargs!r}")
    unknown = sorted(set(kwargs) - NEUTRAL_MODEL_KWARGS - {"center_writing_weights"})
    if unknown:
        raise SAEFormatError(
            f"{where}: model_from_pretrained_kwargs {unknown[0]}={kwargs[unknown[0]]!r}: the model was processed "
            "in a way saezarr does not reproduce; not implemented"
        )
    context = field(cfg, "context_size")
    model_name = field(cfg, "model_name")
    return {
        "model_name": str(model_name) if model_name else None,
        "context_size": context if isinstance(context, int) and not isinstance(context, bool) and context > 0 else None,
        "centred": bool(kwargs.get("center_writing_weights", False)),
    }


def cfg_activation(cfg: dict, where: str) -> Activation:
    """The registered activation function the cfg's architecture (and, before SAELens 6, activation_fn) names."""
    named = str(cfg.get("architecture", "standard")).lower()
    architecture = SAELENS_NAMES.get(named, named)
    activation_fn = field(cfg, "activation_fn", "activation_fn_str")
    if architecture == "relu" and activation_fn == "topk":  # before SAELens 6, TopK was a standard SAE's activation
        architecture = "topk"
    elif architecture == "relu" and activation_fn not in (None, "relu"):
        raise SAEFormatError(f"{where}: activation_fn {activation_fn!r} is not implemented (relu)")
    if architecture not in ACTIVATIONS:
        raise SAEFormatError(
            f"{where}: architecture {cfg.get('architecture')!r} is not implemented ({known_activations()})"
        )
    return ACTIVATIONS[architecture]


def describe(config: SAEConfig, fetch: Fetch, repo: str) -> SAEDescription | None:
    """The SAE's layout if its folder holds a cfg.json; refuse what this reader does not implement."""
    found = read_cfg(config, fetch)
    if found is None:
        return None
    cfg, path = found
    where = f"{path}: config {config.name}"
    activation = cfg_activation(cfg, where)
    normalise = field(cfg, "normalize_activations", default="none")
    if normalise not in NO_NORMALISATION:
        raise SAEFormatError(
            f"{where}: normalize_activations {normalise!r} is not implemented (only 'none'); refusing to encode "
            "without it"
        )
    k = None
    if activation.uses_k:
        k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
        if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
            raise SAEFormatError(f"{where}: a {activation.name} SAE needs a positive integer 'k', got {k!r}")
    subtract = bool(cfg.get("apply_b_dec_to_input", True))  # SAELens' default when the cfg does not say
    read = site(cfg, path, where)
    facts = training_facts(cfg, where)
    weights = fetch(WEIGHTS, True)
    assert weights is not None  # required: fetch raises rather than return None
    return SAEDescription(
        "saelens",
        weights,
        activation.name,
        "W_enc",
        "b_enc",
        threshold="threshold" if activation.uses_threshold else None,
        b_dec="b_dec" if subtract else None,
        k=k,
        layer=read.layer,
        d_in=cfg.get("d_in"),
        d_sae=cfg.get("d_sae"),
        name=None if config.path != "." else read.hook,
        site=read,
        **facts,
    )


FORMAT = register_format(SAEFormat("saelens", describe, MARKER, f"{CONFIG} + {WEIGHTS}", priority=10))
