"""dictionary_learning and SAE Bench (`canrager/lm_sae`, `adamkarvonen/saebench_*`): `ae.pt` + `config.json`.

`ae.pt` is a PyTorch state dict, read with `torch.load(weights_only=True)` (never unpickled otherwise); `config.json`'s
`trainer` says the dictionary class and shape. As SAELens' `dictionary_learning_1` loader reads them: AutoEncoder
(ReLU), AutoEncoderTopK (TopK, `trainer.k`), GatedAutoEncoder (gated), BatchTopKSAE and MatryoshkaBatchTopKSAE
(JumpReLU on their stored threshold), each subtracting b_dec (`b_dec`, `bias` or `decoder_bias`) from its input, and
JumpReluAutoEncoder (JumpReLU, `W_enc` [d_in, d_sae], b_dec not subtracted). The site is the residual stream after
`trainer.layer` (SAE Bench's `submodule_name` must say resid_post).
"""

from __future__ import annotations

import json

from saezarr.errors import SAEFormatError
from saezarr.inputs.configs import SAEConfig
from saezarr.saes.description import Fetch, SAEDescription
from saezarr.saes.formats import SAEFormat, register_format
from saezarr.saes.weights import WeightsUnreadable, read_header
from saezarr.sites import Site, resid_post

CONFIG = "config.json"
WEIGHTS = "ae.pt"
MARKER = WEIGHTS  # the file whose presence says the layout
# each dictionary class: its activation and whether it subtracts b_dec from its input
CLASSES = {
    "AutoEncoder": ("relu", True),
    "AutoEncoderTopK": ("topk", True),
    "GatedAutoEncoder": ("gated", True),
    "BatchTopKSAE": ("jumprelu", True),
    "MatryoshkaBatchTopKSAE": ("jumprelu", True),
    "JumpReluAutoEncoder": ("jumprelu", False),
}
GATED = (("b_gate", "gate_bias"), ("r_mag", "r_mag"), ("b_mag", "mag_bias"))
B_DEC_KEYS = ("b_dec", "bias", "decoder_bias")


def read_settings(config: SAEConfig, fetch: Fetch) -> tuple[dict, int | None]:
    """config.json's `trainer` object, and the context its `buffer.ctx_len` says (None if it does not)."""
    path = fetch(CONFIG, True)
    assert path is not None  # required: fetch raises rather than return None
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
        trainer, buffer = settings.get("trainer"), settings.get("buffer") or {}
    except (OSError, ValueError, AttributeError) as exc:
        raise SAEFormatError(f"{path}: config {config.name}: not readable JSON with a 'trainer' ({exc})") from None
    if not isinstance(trainer, dict):
        raise SAEFormatError(f"{path}: config {config.name}: trainer must be an object, got {trainer!r}")
    context = buffer.get("ctx_len") if isinstance(buffer, dict) else None
    return trainer, context if isinstance(context, int) and not isinstance(context, bool) and context > 0 else None


def trainer_site(trainer: dict, where: str) -> Site:
    """The residual stream after `trainer.layer`; refuse another submodule."""
    layer, submodule = trainer.get("layer"), trainer.get("submodule_name")
    if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
        raise SAEFormatError(f"{where}: trainer.layer must be a layer's index, got {layer!r}")
    if submodule is not None and not str(submodule).startswith("resid_post"):
        raise SAEFormatError(f"{where}: trainer.submodule_name {submodule!r}: only resid_post is implemented")
    return Site(resid_post(layer), f"trainer.layer in {where.split(': ')[0]}")


def arrays(keys: dict, activation: str, subtract: bool, trainer: dict, where: str) -> dict:
    """The description's arrays, by the names the state dict holds them under."""
    fields: dict = {"W_enc_transposed": "W_enc" not in keys}
    fields["W_enc"] = "W_enc" if "W_enc" in keys else "encoder.weight"
    fields["b_enc"] = next((key for key in ("b_enc", "encoder.bias") if key in keys), None)
    b_dec = next((key for key in B_DEC_KEYS if key in keys), None)
    fields["b_dec"] = b_dec if subtract else None
    if subtract and b_dec is None:
        raise SAEFormatError(f"{where}: ae.pt has no b_dec ({', '.join(B_DEC_KEYS)}), which the class subtracts")
    if activation == "gated":
        fields.update(b_enc=None, vectors=GATED)
    elif fields["b_enc"] is None:
        raise SAEFormatError(f"{where}: ae.pt has no encoder bias (b_enc or encoder.bias)")
    if activation == "jumprelu":
        fields["threshold"] = "threshold"
    if activation == "topk":
        k = trainer.get("k")
        if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
            raise SAEFormatError(f"{where}: trainer.k must be a positive integer, got {k!r}")
        fields["k"] = k
    return fields


def describe(config: SAEConfig, fetch: Fetch, repo: str) -> SAEDescription | None:
    """The SAE's layout if its folder holds an ae.pt; refuse a dictionary class saezarr does not encode."""
    weights = fetch(WEIGHTS, False)
    if weights is None:
        return None
    where = f"{weights.parent / CONFIG}: config {config.name}"
    trainer, context = read_settings(config, fetch)
    named = trainer.get("dict_class")
    if named not in CLASSES:
        raise SAEFormatError(f"{where}: trainer.dict_class {named!r} is not implemented ({', '.join(CLASSES)})")
    activation, subtract = CLASSES[named]
    try:
        keys = read_header(weights)
    except WeightsUnreadable as exc:
        raise SAEFormatError(f"{weights}: config {config.name}: not a readable state dict ({exc})") from None
    site = trainer_site(trainer, where)
    lm_name = trainer.get("lm_name")
    return SAEDescription(
        "dictionary_learning",
        weights,
        activation,
        layer=site.layer,
        d_in=trainer.get("activation_dim"),
        d_sae=trainer.get("dict_size"),
        site=site,
        model_name=str(lm_name).split("/")[-1] if lm_name else None,
        context_size=context,
        **arrays(keys, activation, subtract, trainer, where),
    )


FORMAT = register_format(SAEFormat("dictionary_learning", describe, MARKER, f"{WEIGHTS} + {CONFIG}", priority=50))
