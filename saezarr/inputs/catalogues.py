"""The bundled SAE catalogues: config files for published SAE releases, shipped inside the package.

Each is a config file (`saezarr/data/catalogues/NAME.json`, written by scripts/make_catalogues.py) usable as
`--config NAME`; `default` is the build's default config (Gemma Scope 2B, 16k, every layer).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

DEFAULT = "gemma-scope-2b-pt-res-16k"


@dataclass(frozen=True)
class Catalogue:
    """One bundled catalogue: its name, model, SAE repository, size and what it holds."""

    name: str
    model: str
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
    found = []
    for entry in sorted(_folder().iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            data = json.loads(entry.read_text(encoding="utf-8"))
            name = entry.name.removesuffix(".json")
            found.append(
                Catalogue(name, data["model"], data["sae_repo"], len(data["configs"]), data.get("description", ""))
            )
    return found


@functools.cache
def _neuronpedia_sources() -> dict[tuple[str, str], str]:
    sources: dict[tuple[str, str], str] = {}
    for catalogue in list_catalogues():
        data = json.loads(read_text(catalogue.name))
        for entry in data["configs"]:
            key = (data["sae_repo"], entry["path"].strip("/"))
            if not sources.get(key):  # a release and its canonical twin list one SAE; either may name its source
                sources[key] = entry.get("neuronpedia") or ""
    return sources


def neuronpedia_source(sae_repo: str, path: str) -> str | None:
    """The exact Neuronpedia source of a published SAE (repo id + folder): "" if none is published, None if unknown."""
    return _neuronpedia_sources().get((sae_repo, path.strip("/")))
