"""Qwen Scope (`Qwen/SAE-Res-{model}-W{N}K-L0_{K}`): one `layer{L}.sae.pt` state dict per layer, no settings file.

As SAELens' `qwen_scope` loader reads them: TopK with the k the repository's name gives (`L0_{K}`), `W_enc` [d_sae,
d_in] (SAELens transposes it), `b_enc`, b_dec never on the input, no normalisation, the residual stream after layer L
(`model.layers.L`'s output: `blocks.L.hook_resid_post`), trained on {model} with a context of 1024 tokens. The file is
read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import re

from saezarr.errors import SAEFormatError
from saezarr.inputs.configs import SAEConfig
from saezarr.saes.description import Fetch, SAEDescription
from saezarr.saes.formats import ITSELF, LayerFiles, SAEFormat, register_format, sae_file
from saezarr.sites import RESID_POST

FILE = re.compile(r"(?:^|/)layer(?P<layer>\d+)\.sae\.pt$")
REPO = re.compile(r"SAE-Res-(.+?)-W(\d+)K-L0_(\d+)")  # the repository's name: its model, width in 1024s and k
CONTEXT_SIZE = 1024  # what SAELens' qwen_scope config says
NAMES = LayerFiles(FILE, RESID_POST)


def describe(config: SAEConfig, fetch: Fetch, repo: str) -> SAEDescription | None:
    """The SAE's layout if its path is a `layer{L}.sae.pt`; refused unless the repository's name gives k."""
    found = sae_file(config, fetch, FILE)
    if found is None:
        return None
    weights, name = found
    named = REPO.search(repo)
    if named is None:
        raise SAEFormatError(
            f"{weights}: config {config.name}: the repository's name {repo!r} does not say k "
            "(SAE-Res-{model}-W{N}K-L0_{k}, as Qwen Scope names its repositories)"
        )
    site = NAMES.site(config.path)
    assert site is not None  # sae_file matched FILE
    return SAEDescription(
        "qwen_scope",
        weights,
        "topk",
        "W_enc",
        "b_enc",
        k=int(named.group(3)),
        W_enc_transposed=True,
        layer=site.layer,
        d_sae=int(named.group(2)) * 1024,
        site=site,
        model_name=named.group(1),
        context_size=CONTEXT_SIZE,
    )


FORMAT = register_format(
    SAEFormat(
        "qwen_scope",
        describe,
        ITSELF,
        "layer{L}.sae.pt",
        priority=60,
        can_open=NAMES.matches,
        from_path=NAMES.from_path,
        site_from_path=NAMES.site,
    )
)
