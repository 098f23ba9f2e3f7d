"""Llama's sites, and those of the models laid out as it is (Mistral, Qwen 2 and 3): decoder layers in `.layers`."""

from saezarr.models.architectures import ARCHITECTURES, layer_sites

for model_type in ("llama", "mistral", "qwen2", "qwen3"):
    ARCHITECTURES.register(model_type, layer_sites("layers"))
