"""EleutherAI's sparsify (`EleutherAI/sae-*`): `cfg.json` + `sae.safetensors` in a folder named by its hookpoint.

TopK over ReLU'd pre-activations (`k`), `encoder.weight` [num_latents, d_in] (an nn.Linear's); b_dec is subtracted from
the input unless the coder is a transcoder (`transcode`), as sparsify's `SparseCoder.encode` does (SAELens' sparsify
loader instead subtracts it unless `normalize_decoder`; saezarr follows sparsify). Hookpoints are the Hugging Face
model's module names: `layers.N` (its output: `blocks.N.hook_resid_post`), `embed_tokens` (`hook_embed`), and a
transcoder's `layers.N.mlp` (its input: `blocks.N.mlp.hook_in`); other modules' outputs are refused, as SAELens'
reading them as the residual stream would be wrong.
"""

from __future__ import annotations

import re

from saezarr.errors import SAEFormatError
from saezarr.inputs.configs import SAEConfig
from saezarr.saes.description import Fetch, SAEDescription
from saezarr.saes.formats import SAEFormat, register_format
from saezarr.saes.formats.saelens import read_cfg
from saezarr.sites import Site

CONFIG = "cfg.json"
WEIGHTS = "sae.safetensors"
MARKER = CONFIG  # the file whose presence says the layout (shared with SAELens: its fields tell them apart)
SPARSIFY_FIELDS = ("expansion_factor", "num_latents")  # fields of sparsify's cfg that SAELens' has not
HOOKPOINT = re.compile(r"(?:^|/)(embed_tokens|layers\.(\d+)((?:\.\w+)*))$")


def matches(path: str) -> bool:
    """True if the folder is named by a sparsify hookpoint."""
    return HOOKPOINT.search(path) is not None


def hookpoint_site(path: str, transcode: bool, where: str) -> Site:
    """The site the folder's hookpoint names; refuse a module whose output has no TransformerLens site."""
    found = HOOKPOINT.search(path)
    said_by = f"the folder's hookpoint {path.rsplit('/', 1)[-1]}"
    if found is None:
        raise SAEFormatError(f"{where}: the folder {path!r} is not named by a hookpoint (layers.N, embed_tokens)")
    if found.group(1) == "embed_tokens":
        return Site("hook_embed", said_by)
    layer, module = int(found.group(2)), found.group(3)
    if module == "" and not transcode:
        return Site(f"blocks.{layer}.hook_resid_post", said_by)
    if module == ".mlp" and transcode:
        return Site(f"blocks.{layer}.mlp.hook_in", said_by)
    role = "input" if transcode else "output"
    raise SAEFormatError(
        f"{where}: hookpoint {found.group(1)} (the module's {role}, transcode {transcode}): not implemented"
    )


def describe(config: SAEConfig, fetch: Fetch, repo: str) -> SAEDescription | None:
    """The SAE's layout if its folder holds sparsify's cfg.json; refuse what is not implemented."""
    found = read_cfg(config, fetch)
    if found is None or "d_sae" in found[0] or not any(name in found[0] for name in SPARSIFY_FIELDS):
        return None  # SAELens' cfg.json, not sparsify's
    cfg, path = found
    where = f"{path}: config {config.name}"
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise SAEFormatError(f"{where}: activation {activation!r} is not implemented (topk)")
    k = cfg.get("k")
    if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
        raise SAEFormatError(f"{where}: k must be a positive integer, got {k!r}")
    transcode = bool(cfg.get("transcode", False))
    site = hookpoint_site(config.path, transcode, where)
    weights = fetch(WEIGHTS, True)
    assert weights is not None  # required: fetch raises rather than return None
    return SAEDescription(
        "sparsify",
        weights,
        "topk",
        "encoder.weight",
        "encoder.bias",
        b_dec=None if transcode else "b_dec",
        k=k,
        W_enc_transposed=True,
        layer=site.layer,
        d_in=cfg.get("d_in"),
        d_sae=cfg.get("num_latents") or _expanded(cfg),
        site=site,
    )


def _expanded(cfg: dict) -> int | None:
    """d_in times expansion_factor: the width where num_latents is 0."""
    d_in, factor = cfg.get("d_in"), cfg.get("expansion_factor")
    return d_in * factor if isinstance(d_in, int) and isinstance(factor, int) else None


FORMAT = register_format(SAEFormat("sparsify", describe, MARKER, f"{CONFIG} + {WEIGHTS}", priority=5, can_open=matches))
