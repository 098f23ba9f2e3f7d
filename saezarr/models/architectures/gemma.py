"""Gemma's sites: Gemma 1 and 2 and Gemma 3's text model keep their decoder layers in `.layers`; a multimodal Gemma 3
(4B-27B, `Gemma3Model`) in its language model's."""

from saezarr.compat import gemma3_layers
from saezarr.models.architectures import ARCHITECTURES, layer_sites

for model_type in ("gemma", "gemma2", "gemma3_text"):
    ARCHITECTURES.register(model_type, layer_sites("layers"))
ARCHITECTURES.register("gemma3", layer_sites(gemma3_layers()))
