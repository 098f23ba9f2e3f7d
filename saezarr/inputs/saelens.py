"""SAELens' pretrained-SAE registry as saezarr ships it: every release, usable as `--config RELEASE`.

`saezarr/data/saelens_releases.json` (written by scripts/make_saelens_catalogue.py from the sae-lens wheel whose
version it names) holds, per release, its model (a Hugging Face hub id), SAE repository, format (SAELens' conversion
function) and config overrides, and per SAE one row of FIELDS. A release reads as a config file (`config_data`).
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

FIELDS = ("id", "path", "layer", "hook", "width", "average_l0", "neuronpedia", "norm_scaling_factor")
PROCESSING = ("model_from_pretrained_kwargs", "prepend_bos")  # the config overrides a config file carries


@functools.cache
def _data() -> dict[str, Any]:
    text = (resources.files("saezarr") / "data" / "saelens_releases.json").read_text(encoding="utf-8")
    return json.loads(text)


def version() -> str:
    """The version of sae-lens whose registry the data is."""
    return _data()["sae_lens"]


def names() -> list[str]:
    """Every release's name, sorted."""
    return sorted(_data()["releases"])


def exists(name: str) -> bool:
    """True if `name` is a release of the registry."""
    return name in _data()["releases"]


def release(name: str) -> dict[str, Any]:
    """A release's facts: model (hub id), saelens_model, repo_id, format, config_overrides where it has them."""
    return {key: value for key, value in _data()["releases"][name].items() if key != "saes"}


def saes(name: str) -> list[dict[str, Any]]:
    """A release's SAEs, each a dict of FIELDS (None where the registry does not say it)."""
    return [dict(zip(FIELDS, row)) for row in _data()["releases"][name]["saes"]]


def config_name(sae_id: str) -> str:
    """An SAE's config name: its SAELens id with each '/' written '_' (a store's config names hold no '/')."""
    return sae_id.replace("/", "_")


def description(name: str) -> str:
    """What a release is, in a line: its name, the sae-lens version and its format."""
    return f"SAELens release {name} (sae-lens {version()}; format {release(name)['format'] or 'saelens'})"


def config_data(name: str) -> dict[str, Any]:
    """A release as a config file's data: its model, SAE repository, an entry per SAE and its processing facts."""
    facts = release(name)
    overrides = facts.get("config_overrides") or {}
    return {
        "description": description(name),
        "model": facts["model"],
        "sae_repo": facts["repo_id"],
        "configs": [_entry(sae) for sae in saes(name)],
        **{key: overrides[key] for key in PROCESSING if key in overrides},
    }


def _entry(sae: dict[str, Any]) -> dict[str, Any]:
    """An SAE as a config file's entry: what the registry says of it, nothing where it says nothing."""
    l0 = sae["average_l0"]
    known = {
        "layer": sae["layer"],
        "hook": sae["hook"],
        "width": sae["width"],
        "average_l0": None if l0 is None else round(l0),
        "neuronpedia": sae["neuronpedia"],
        "norm_scaling_factor": sae["norm_scaling_factor"],
    }
    return {"name": config_name(sae["id"]), "path": sae["path"], **{k: v for k, v in known.items() if v is not None}}
