"""Connor Kissane and Rob Krzyzanowski's attention-output SAEs (`ckkissane/attn-saes-gpt2-small-all-layers`): one
`{name}.pt` state dict per SAE, with `{name}_cfg.json` beside it.

As SAELens' `connor_rob_hook_z` loader reads them: a ReLU SAE (`standard`), `W_enc` [d_in, d_sae], `b_enc`, b_dec
subtracted from the input, no normalisation, reading every head of the cfg's `act_name` (attn.hook_z, its heads'
d_head columns side by side, as SAELens' `reshape_activations: hook_z` flattens them), trained on gpt2-small with a
context of 128 tokens (what SAELens' config says). The file is read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import re

from saezarr.errors import SAEFormatError
from saezarr.inputs.configs import SAEConfig
from saezarr.saes.description import Fetch, SAEDescription
from saezarr.saes.formats import ITSELF, SAEFormat, beside, read_settings, register_format, sae_file
from saezarr.sites import HEADS_KIND, Site

FILE = re.compile(r"(?:^|/)([^/]+)\.pt$")
NAMED = re.compile(r"(?:^|/)[^/]*_L(\d+)_Hcat_z_[^/]*\.pt$")  # how the repository names its files
MODEL_NAME, CONTEXT_SIZE = "gpt2-small", 128  # what SAELens' config says


def matches(path: str) -> bool:
    """True if the SAE's path is named as this repository names its files (`..._L{L}_Hcat_z_....pt`)."""
    return NAMED.search(path) is not None


def file_site(path: str, layer: int | None) -> Site | None:
    """attn.hook_z of the layer the file's name gives."""
    found = NAMED.search(path)
    return Site(f"blocks.{found.group(1)}.{HEADS_KIND}", "the file's name") if found else None


def describe(config: SAEConfig, fetch: Fetch, repo: str) -> SAEDescription | None:
    """The SAE's layout if its path is a `.pt` file with a `_cfg.json` beside it; refuse a site other than
    attn.hook_z, whose heads SAELens flattens."""
    named = FILE.search(config.path)
    found = read_settings(config, fetch, beside(f"{named.group(1)}_cfg.json")) if named else None
    if found is None:
        return None
    settings, path = found
    weights = sae_file(config, fetch, FILE)
    if weights is None:
        raise SAEFormatError(f"{path}: config {config.name}: no {config.path} beside it")
    hook = settings.get("act_name")
    site = Site(hook, f"act_name in {path}") if isinstance(hook, str) else None
    if site is None or site.kind != HEADS_KIND:
        raise SAEFormatError(
            f"{path}: config {config.name}: act_name {hook!r}: SAELens flattens the heads of {HEADS_KIND} "
            "(reshape_activations hook_z), which only that site has; not implemented"
        )
    return SAEDescription(
        "connor_rob_hook_z",
        weights[0],
        "relu",
        "W_enc",
        "b_enc",
        b_dec="b_dec",
        layer=site.layer,
        d_in=settings.get("act_size"),
        d_sae=settings.get("dict_size"),
        site=site,
        model_name=MODEL_NAME,
        context_size=CONTEXT_SIZE,
    )


FORMAT = register_format(
    SAEFormat(
        "connor_rob_hook_z",
        describe,
        ITSELF,
        "{name}.pt + {name}_cfg.json",
        priority=70,
        can_open=matches,
        site_from_path=file_site,
    )
)
