"""The bundled SAE catalogues: config files for published SAE releases, shipped inside the package.

Each is a config file (`saezarr/data/catalogues/NAME.json`, written by scripts/make_catalogues.py) usable as
`--config NAME`; `default` is the build's default config (Gemma Scope 2B, 16k, every layer).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

from saezarr.sites import Site

DEFAULT = "gemma-scope-2b-pt-res-16k"


@dataclass(frozen=True)
class Catalogue:
    """One bundled catalogue: its name, model, the site its SAEs read (`blocks.L.hook_resid_post`), their width
    (features; None where they differ), SAE repository, size and what it holds."""

    name: str
    model: str
    site: str
    width: int | None
    sae_repo: str
    n_configs: int
    description: str


def _folder() -> Traversable:
    return resources.files("saezarr") / "data" / "catalogues"


def _file(name: str) -> Traversable:
    return _folder() / f"{name}.json"


def exists(name: str) -> bool:
    """True if `name` is a bundled catalogue's name."""
    return "/" not in name and "\\" not in name and _file(name).is_file()


def read_text(name: str) -> str:
    """A bundled catalogue's JSON text."""
    return _file(name).read_text(encoding="utf-8")


def list_catalogues() -> list[Catalogue]:
    """Every bundled catalogue, by name."""
    # imported here: the config file's module imports this one, and an SAE's site is what saes.locate says it is
    from saezarr.inputs.configs import load_config_file
    from saezarr.saes.locate import named_site

    found = []
    for name in names():
        config_file = load_config_file(name)
        sites = {_layerless(named_site(config_file.sae_repo, config)) for config in config_file.configs}
        widths = {config.width or _tagged_width(config.path) for config in config_file.configs}
        found.append(
            Catalogue(
                name=name,
                model=config_file.model,
                site=", ".join(sorted(sites)),
                width=widths.pop() if len(widths) == 1 else None,
                sae_repo=config_file.sae_repo,
                n_configs=len(config_file.configs),
                description=json.loads(read_text(name)).get("description", ""),
            )
        )
    return found


def names() -> list[str]:
    """Every bundled catalogue's name, sorted."""
    return sorted(entry.name.removesuffix(".json") for entry in _folder().iterdir() if entry.name.endswith(".json"))


def _layerless(site: Site | None) -> str:
    """A site with its layer written L (`blocks.L.hook_resid_post`); `?` where the names do not say it."""
    return "?" if site is None else re.sub(r"^blocks\.\d+\.", "blocks.L.", site.hook)


def _tagged_width(path: str) -> int | None:
    """The width a Gemma Scope folder's name tags (`layer_12/width_16k/average_l0_82`: 16384), None if none."""
    from saezarr.inputs.configs import parse_width

    match = re.search(r"(?:^|/)width_(\w+?)(?:/|$)", path)
    return parse_width(match.group(1), path) if match else None


@functools.cache
def _neuronpedia_sources() -> dict[tuple[str, str], str]:
    sources: dict[tuple[str, str], str] = {}
    for name in names():
        data = json.loads(read_text(name))
        for entry in data["configs"]:
            key = (data["sae_repo"], entry["path"].strip("/"))
            if not sources.get(key):  # a release and its canonical twin list one SAE; either may name its source
                sources[key] = entry.get("neuronpedia") or ""
    return sources


def neuronpedia_source(sae_repo: str, path: str) -> str | None:
    """The exact Neuronpedia source of a published SAE (repo id + folder): "" if none is published, None if unknown."""
    return _neuronpedia_sources().get((sae_repo, path.strip("/")))
