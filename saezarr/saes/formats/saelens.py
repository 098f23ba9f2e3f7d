"""SAELens' format (any repository or folder): `cfg.json` + `sae_weights.safetensors`.

The cfg's fields are at the top level before SAELens 6 (`hook_point`, `hook_point_head_index`, `activation_fn_str`,
`activation_fn_kwargs.k`, a boolean `normalize_activations`, defaults such as `apply_b_dec_to_input: true`) and partly
under `metadata` from 6 on (`hook_name`, `hook_head_index`); both are read. Architectures: standard, jumprelu, topk
(with `rescale_acts_by_decoder_norm`), gated, batchtopk and matryoshka_batchtopk (as saved for inference), and
(jumprelu) (skip) transcoders, which never subtract b_dec.
"""

from __future__ import annotations

from pathlib import Path

from saezarr.errors import SAEFormatError
from saezarr.inputs.configs import SAEConfig
from saezarr.saes.activations import ACTIVATIONS
from saezarr.saes.description import Fetch, SAEDescription, check_model_kwargs
from saezarr.saes.formats import SAEFormat, read_settings, register_format
from saezarr.saes.weights import WeightsUnreadable, read_header
from saezarr.sites import HEADS_KIND, Site

CONFIG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
MARKER = CONFIG  # the file whose presence says the layout
# SAELens' architectures saezarr encodes, and the registered activation each applies
ARCHITECTURES = {
    "standard": "relu",
    "jumprelu": "jumprelu",
    "jump_relu": "jumprelu",
    "topk": "topk",
    "gated": "gated",
    "batchtopk": "jumprelu",
    "matryoshka_batchtopk": "jumprelu",
    "transcoder": "relu",
    "skip_transcoder": "relu",
    "jumprelu_transcoder": "jumprelu",
    "jumprelu_skip_transcoder": "jumprelu",
}
TOPK_TRAINING = ("batchtopk", "matryoshka_batchtopk")  # saved for inference as JumpReLU SAEs
GATED_VECTORS = ("b_gate", "r_mag", "b_mag")
NO_NORMALISATION = (None, False, "none")
RUN_TIME_NORMALISATIONS = ("layer_norm", "constant_norm_rescale")  # saezarr.saes.normalise applies them


def read_cfg(config: SAEConfig, fetch: Fetch) -> tuple[dict, Path] | None:
    """The SAE's cfg.json as a dict (None if its folder has none), and the file's path."""
    return read_settings(config, fetch, CONFIG)


def field(cfg: dict, *names: str, default=None):
    """A cfg field by any of its names, at the top level (before SAELens 6) or under `metadata` (6 on)."""
    for scope in (cfg, cfg.get("metadata") or {}):
        for name in names:
            if name in scope:
                return scope[name]
    return default


def site(cfg: dict, path: object, where: str) -> tuple[Site, int | None]:
    """The site the cfg names (`hook_name`, `hook_point` before SAELens 6) and the attention head it reads of it
    (`hook_head_index`, `hook_point_head_index` before 6), if one."""
    hook = field(cfg, "hook_name", "hook_point")
    if not isinstance(hook, str) or not hook:
        raise SAEFormatError(f"{where}: the cfg names no hook_name, so the site the SAE reads is unknown")
    head = field(cfg, "hook_head_index", "hook_point_head_index")
    read = Site(hook, f"hook_name in {path}")
    if head is not None and (
        read.kind != HEADS_KIND or not isinstance(head, int) or isinstance(head, bool) or head < 0
    ):
        raise SAEFormatError(
            f"{where}: hook_head_index {head!r} of {hook}: one head is read only of {HEADS_KIND} (a head's index, "
            "from 0): not implemented"
        )
    return read, head


def training_facts(cfg: dict, where: str) -> dict:
    """What the cfg says of the model's activations in training that decides the numbers; refuse what saezarr does
    not reproduce (a TransformerLens processing it does not apply)."""
    kwargs = field(cfg, "model_from_pretrained_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise SAEFormatError(f"{where}: model_from_pretrained_kwargs must be an object, got {kwargs!r}")
    check_model_kwargs(kwargs, where)
    context = field(cfg, "context_size")
    model_name = field(cfg, "model_name")
    return {
        "model_name": str(model_name) if model_name else None,
        "context_size": context if isinstance(context, int) and not isinstance(context, bool) and context > 0 else None,
        "centred": bool(kwargs.get("center_writing_weights", False)),
        "prepend_bos": field(cfg, "prepend_bos", default=True) is not False,
    }


def cfg_architecture(cfg: dict, where: str) -> str:
    """The architecture the cfg names, in SAELens' spelling (`standard` with activation_fn topk before SAELens 6 is
    `topk`); refuse one whose encoding saezarr does not reproduce."""
    architecture = str(cfg.get("architecture", "standard")).lower()
    activation_fn = field(cfg, "activation_fn", "activation_fn_str")
    if architecture == "standard" and activation_fn == "topk":  # before SAELens 6, TopK was a standard SAE's
        return "topk"
    if architecture == "standard" and activation_fn not in (None, "relu"):
        raise SAEFormatError(f"{where}: activation_fn {activation_fn!r} is not implemented (relu)")
    if architecture not in ARCHITECTURES and architecture not in ACTIVATIONS:  # a registered one: as it is named
        known = ", ".join(sorted(set(ARCHITECTURES) | set(ACTIVATIONS)))
        raise SAEFormatError(f"{where}: architecture {cfg.get('architecture')!r} is not implemented ({known})")
    return architecture


def cfg_k(cfg: dict, activation: str, where: str) -> int:
    """A TopK SAE's k (`k`, `activation_fn_kwargs.k` before SAELens 6)."""
    k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
    if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
        raise SAEFormatError(f"{where}: a {activation} SAE needs a positive integer 'k', got {k!r}")
    return k


def normalisation(cfg: dict, config: SAEConfig, where: str) -> dict:
    """The description's fields for the cfg's `normalize_activations` (a boolean before SAELens 6: true is
    expected_average_only_in, whose factor the config entry's norm_scaling_factor gives, as SAELens' registry does)."""
    named = field(cfg, "normalize_activations", default="none")
    if named in NO_NORMALISATION:
        return {}
    if named in RUN_TIME_NORMALISATIONS:
        return {"normalise": named}
    if named is True or named == "expected_average_only_in":
        if config.norm_scaling_factor is None:
            raise SAEFormatError(
                f"{where}: normalize_activations {named!r} needs the config entry's norm_scaling_factor (SAELens' "
                "registry gives it), and it gives none"
            )
        return {"input_scale": float(config.norm_scaling_factor)}
    raise SAEFormatError(f"{where}: normalize_activations {named!r} is not implemented")


def arrays(cfg: dict, architecture: str, weights: Path, where: str) -> dict:
    """The description's arrays and activation for an architecture (batchtopk and matryoshka_batchtopk checkpoints
    as SAELens saves them for inference: JumpReLU with their topk_threshold, over rescaled pre-activations)."""
    if architecture in TOPK_TRAINING:
        try:
            names = read_header(weights)
        except WeightsUnreadable as exc:
            raise SAEFormatError(f"{where}: not a readable {weights.name} ({exc})") from None
        threshold = "threshold" if "threshold" in names else "topk_threshold"
        rescale = cfg.get("rescale_acts_by_decoder_norm", True)  # the training config's default
        return {"architecture": "jumprelu", "threshold": threshold, "rescale_by": "W_dec" if rescale else None}
    if architecture == "gated":
        return {"architecture": "gated", "b_enc": None, "vectors": tuple((role, role) for role in GATED_VECTORS)}
    activation = ACTIVATIONS[ARCHITECTURES.get(architecture, architecture)]
    rescale = architecture == "topk" and cfg.get("rescale_acts_by_decoder_norm", False)  # the inference default
    return {
        "architecture": activation.name,
        "threshold": "threshold" if activation.uses_threshold else None,
        "k": cfg_k(cfg, activation.name, where) if activation.uses_k else None,
        "rescale_by": "W_dec" if rescale else None,
    }


def describe(config: SAEConfig, fetch: Fetch, repo: str) -> SAEDescription | None:
    """The SAE's layout if its folder holds a cfg.json; refuse what this reader does not implement."""
    found = read_cfg(config, fetch)
    if found is None:
        return None
    cfg, path = found
    where = f"{path}: config {config.name}"
    architecture = cfg_architecture(cfg, where)
    scaling = normalisation(cfg, config, where)
    read, head = site(cfg, path, where)
    facts = training_facts(cfg, where)
    weights = fetch(WEIGHTS, True)
    assert weights is not None  # required: fetch raises rather than return None
    subtract = bool(cfg.get("apply_b_dec_to_input", True)) and not architecture.endswith("transcoder")
    described = {"b_enc": "b_enc", **arrays(cfg, architecture, weights, where)}
    return SAEDescription(
        "saelens",
        weights,
        W_enc="W_enc",
        b_dec="b_dec" if subtract else None,  # SAELens' default when the cfg does not say; never a transcoder's
        layer=read.layer,
        d_in=cfg.get("d_in"),
        d_sae=cfg.get("d_sae"),
        name=None if config.path != "." else read.hook,
        site=read,
        head_index=head,
        **described,
        **scaling,
        **facts,
    )


FORMAT = register_format(SAEFormat("saelens", describe, MARKER, f"{CONFIG} + {WEIGHTS}", priority=10))
