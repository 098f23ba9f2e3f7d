"""Michael Hanna's Qwen 3 transcoders (`mwhanna/qwen3-*-transcoders*`): one `layer_{L}.safetensors` per layer, with
circuit-tracer's `config.yaml` (and a `wandb-config.yaml`) at the repository's root.

As SAELens' `mwhanna_transcoder` loader reads them: a ReLU transcoder, `W_enc` [d_sae, d_in] (SAELens transposes it),
`b_enc`, b_dec never on the input (it is the output's), no normalisation, reading `blocks.L.mlp.hook_in`: the MLP
module's input, post_attention_layernorm's output with its gain (TransformerLens' bridge hooks the MLP module's input
there; SAELens loads the model with fold_ln off). The model is config.yaml's `model_name`, else the repository's
name's (`qwen3-{size}b`); a config.yaml that says the features read another hook is refused.
"""

from __future__ import annotations

import re
from pathlib import Path

from saezarr.errors import SAEFormatError
from saezarr.inputs.configs import SAEConfig
from saezarr.saes.description import Fetch, SAEDescription
from saezarr.saes.formats import ITSELF, LayerFiles, SAEFormat, beside, register_format, sae_file

FILE = re.compile(r"(?:^|/)layer_(?P<layer>\d+)\.safetensors$")
SETTINGS = "config.yaml"  # circuit-tracer's transcoder-set config, at the repository's root
INPUT_HOOK = "mlp.hook_in"  # what SAELens says the features read, and circuit-tracer's feature_input_hook
QWEN_3 = re.compile(r"qwen3-(\d+(?:\.\d+)?)b", re.IGNORECASE)
NAMES = LayerFiles(FILE, INPUT_HOOK)


def read_yaml(path: Path, config: SAEConfig) -> dict:
    """A YAML settings file as a dict; refused in one line unless it is a readable mapping."""
    import yaml  # PyYAML: huggingface_hub's dependency

    try:
        settings = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as exc:
        where = " ".join(str(exc).split())
        raise SAEFormatError(f"{path}: config {config.name}: not readable YAML ({where})") from None
    if not isinstance(settings, dict):
        raise SAEFormatError(f"{path}: config {config.name}: expected a YAML mapping")
    return settings


def model_name(settings: dict, repo: str) -> str | None:
    """The model the transcoders were trained on: config.yaml's model_name, else the repository's name's Qwen 3."""
    if settings.get("model_name"):
        return str(settings["model_name"])
    size = QWEN_3.search(repo)
    return f"Qwen/Qwen3-{size.group(1)}B" if size else None


def describe(config: SAEConfig, fetch: Fetch, repo: str) -> SAEDescription | None:
    """The SAE's layout if its path is a `layer_{L}.safetensors`; refuse a config.yaml naming another input hook."""
    found = sae_file(config, fetch, FILE)
    if found is None:
        return None
    weights = found[0]
    settings_path = fetch(beside(SETTINGS), False)
    settings = read_yaml(settings_path, config) if settings_path is not None else {}
    hook = settings.get("feature_input_hook", INPUT_HOOK)
    if hook != INPUT_HOOK:
        raise SAEFormatError(
            f"{settings_path}: config {config.name}: feature_input_hook {hook!r}: SAELens reads these transcoders at "
            f"{INPUT_HOOK}; not implemented"
        )
    site = NAMES.site(config.path)
    assert site is not None  # sae_file matched FILE
    return SAEDescription(
        "mwhanna_transcoder",
        weights,
        "relu",
        "W_enc",
        "b_enc",
        W_enc_transposed=True,
        layer=site.layer,
        site=site,
        model_name=model_name(settings, repo),
    )


FORMAT = register_format(
    SAEFormat(
        "mwhanna_transcoder",
        describe,
        ITSELF,
        "layer_{L}.safetensors",
        priority=61,
        can_open=NAMES.matches,
        from_path=NAMES.from_path,
        site_from_path=NAMES.site,
    )
)
