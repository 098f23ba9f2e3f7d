"""One layer of a cross-layer transcoder (`mntss/clt-*`: `W_enc_{L}.safetensors` + `W_dec_{L}.safetensors` at the
repository's root, the SAE's path its layer `L`), refused.

SAELens' `mntss_clt_layer_transcoder` loader reads layer L as a single-layer ReLU transcoder: `W_enc_{L}`'s encoder
and the sum of `W_dec_{L}`'s decoders into every later layer. A CLT's features write to several layers and SAELens
warns the result is no transcoder of the model; saezarr does not read it as one.
"""

from __future__ import annotations

import re

from saezarr.errors import SAEFormatError
from saezarr.inputs.configs import SAEConfig
from saezarr.saes.description import Fetch, SAEDescription
from saezarr.saes.formats import SAEFormat, beside, register_format

LAYER = re.compile(r"(?:^|/)(\d+)$")  # the SAE's path: the CLT's layer


def matches(path: str) -> bool:
    """True if the SAE's path is a layer's number, as SAELens names a CLT's layers."""
    return LAYER.search(path) is not None


def describe(config: SAEConfig, fetch: Fetch, repo: str) -> SAEDescription | None:
    """None unless the path is a layer L with a `W_enc_{L}.safetensors` beside it; refused if it is."""
    found = LAYER.search(config.path)
    encoder = fetch(beside(f"W_enc_{found.group(1)}.safetensors"), False) if found else None
    if found is None or encoder is None:
        return None
    raise SAEFormatError(
        f"{encoder}: config {config.name}: W_dec_{found.group(1)} decodes layer {found.group(1)}'s features into "
        "every later layer (a cross-layer transcoder, which SAELens reads as one layer's by summing its decoders); "
        "not implemented"
    )


FORMAT = register_format(
    SAEFormat(
        "mntss_clt_layer_transcoder",
        describe,
        beside("config.yaml"),  # circuit-tracer's config, at the repository's root beside the layers' files
        "W_enc_{L}.safetensors + W_dec_{L}.safetensors",
        priority=201,
        can_open=matches,
    )
)
