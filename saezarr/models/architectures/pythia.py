"""Pythia's sites (GPT-NeoX): decoder layers in `.layers`; attention and MLP run in parallel inside each, so the
residual stream is still a layer's input and output."""

from saezarr.models.architectures import ARCHITECTURES, layer_sites

ARCHITECTURES.register("gpt_neox", layer_sites("layers"))
