"""Llama Scope (`fnlp/Llama3_1-8B-Base-LX{R,A,M,TC}-{8,32}x`): `hyperparams.json` + `checkpoints/final.safetensors`.

As SAELens' `llama_scope` loader reads them: JumpReLU with one threshold for every feature (`jump_relu_threshold`
times the norm scaling factor sqrt(d_model) / `dataset_average_activation_norm.in`), `encoder.weight` [d_sae, d_in]
(an nn.Linear's), b_dec never on the input, and the input times the norm scaling factor (SAELens folds its registry's
factor into W_enc; the config entry's `norm_scaling_factor` gives it here, else the hyperparams do). The site is
`hook_point_in`, in TransformerLens' spelling.
"""

from __future__ import annotations

import re
from pathlib import Path

from saezarr.errors import SAEFormatError
from saezarr.inputs.configs import SAEConfig
from saezarr.saes.description import Fetch, SAEDescription
from saezarr.saes.formats import SAEFormat, read_settings, register_format
from saezarr.sites import Site

CONFIG = "hyperparams.json"
WEIGHTS = "checkpoints/final.safetensors"
MARKER = CONFIG  # the file whose presence says the layout
FOLDER = re.compile(r"(?:^|/)Llama3_1-8B-Base-L\d+(?:R|A|M|TC)-\d+x$")


def matches(path: str) -> bool:
    """True if the folder is named as Llama Scope names its SAEs."""
    return FOLDER.search(path) is not None


def number(settings: dict, name: str, where: str) -> float:
    """A positive number the hyperparams must give (`dataset_average_activation_norm.in` by its dotted name)."""
    value: object = settings
    for part in name.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise SAEFormatError(f"{where}: {name} must be a positive number, got {value!r}")
    return float(value)


def jumprelu_site(settings: dict, path: Path, where: str) -> Site:
    """The site a Llama Scope settings file's `hook_point_in` names; refuse an act_fn other than JumpReLU."""
    if str(settings.get("act_fn", "jumprelu")).lower() != "jumprelu":
        raise SAEFormatError(f"{where}: act_fn {settings.get('act_fn')!r} is not implemented (jumprelu)")
    hook = settings.get("hook_point_in")
    if not isinstance(hook, str) or not hook:
        raise SAEFormatError(f"{where}: hook_point_in must name the site the SAE reads, got {hook!r}")
    return Site(hook, f"hook_point_in in {path}")


def describe(config: SAEConfig, fetch: Fetch, repo: str) -> SAEDescription | None:
    """The SAE's layout if its folder holds a hyperparams.json; refuse what SAELens' reading does not cover."""
    found = read_settings(config, fetch, CONFIG)
    if found is None:
        return None
    settings, path = found
    where = f"{path}: config {config.name}"
    site = jumprelu_site(settings, path, where)
    d_in = int(number(settings, "d_model", where))
    factor = d_in**0.5 / number(settings, "dataset_average_activation_norm.in", where)
    threshold = number(settings, "jump_relu_threshold", where) * factor
    weights = fetch(WEIGHTS, True)
    assert weights is not None  # required: fetch raises rather than return None
    return SAEDescription(
        "llama_scope",
        weights,
        "jumprelu",
        "encoder.weight",
        "encoder.bias",
        W_enc_transposed=True,
        threshold_value=threshold,
        input_scale=float(config.norm_scaling_factor) if config.norm_scaling_factor is not None else factor,
        layer=site.layer,
        d_in=d_in,
        d_sae=settings.get("d_sae"),
        site=site,
    )


FORMAT = register_format(
    SAEFormat("llama_scope", describe, MARKER, f"{CONFIG} + {WEIGHTS}", priority=40, can_open=matches)
)
