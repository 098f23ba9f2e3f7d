"""The SAE catalogues usable as `--config NAME`: the bundled config files, and SAELens' releases.

A bundled catalogue is a config file (`saezarr/data/catalogues/NAME.json`, written by scripts/make_catalogues.py);
DEFAULT is the build's default config (Gemma Scope 2B, 16k, every layer). Every release of SAELens' registry is one
too, as `saezarr.inputs.saelens` reads it (a bundled catalogue of the same name comes first).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

from saezarr.inputs import saelens
from saezarr.sites import Site

DEFAULT = "gemma-scope-2b-pt-res-16k"


@dataclass(frozen=True)
class Catalogue:
    """One catalogue: its name, model, the sites its SAEs read (`blocks.L.hook_resid_post`; `?` where unknown), their
    width (features; None where they differ or are not known) and the widths known, SAE repository, size, what it
    holds and where it comes from (`bundled`, or `sae-lens VERSION`)."""

    name: str
    model: str
    site: str
    width: int | None
    sae_repo: str
    n_configs: int
    description: str
    widths: tuple[int, ...] = ()
    origin: str = "bundled"


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


def list_catalogues(with_releases: bool = False) -> list[Catalogue]:
    """Every bundled catalogue, and every SAELens release if `with_releases`, by name."""
    releases = [_release(name) for name in saelens.names() if with_releases and not exists(name)]
    return sorted([*map(_bundled, names()), *releases], key=lambda catalogue: catalogue.name)


def _bundled(name: str) -> Catalogue:
    # imported here: the config file's module imports this one, and an SAE's site is what saes.locate says it is
    from saezarr.inputs.configs import load_config_file
    from saezarr.saes.locate import named_site

    config_file = load_config_file(name)
    sites = {_layerless(named_site(config_file.sae_repo, config)) for config in config_file.configs}
    widths = {config.width or _tagged_width(config.path) for config in config_file.configs}
    description = json.loads(read_text(name)).get("description", "")
    return _catalogue(
        name, config_file.model, config_file.sae_repo, sites, widths, len(config_file.configs), description
    )


def _release(name: str) -> Catalogue:
    facts, saes = saelens.release(name), saelens.saes(name)
    sites = {_layerless_hook(sae["hook"]) for sae in saes}
    widths = {sae["width"] for sae in saes}
    origin = f"sae-lens {saelens.version()}"
    return _catalogue(
        name, facts["model"], facts["repo_id"], sites, widths, len(saes), saelens.description(name), origin
    )


def _catalogue(
    name: str,
    model: str,
    sae_repo: str,
    sites: set[str],
    widths: set[int | None],
    n_configs: int,
    description: str,
    origin: str = "bundled",
) -> Catalogue:
    known = tuple(sorted(width for width in widths if width is not None))
    return Catalogue(
        name=name,
        model=model,
        site=",".join(sorted(sites)),
        width=known[0] if len(known) == 1 and None not in widths else None,
        sae_repo=sae_repo,
        n_configs=n_configs,
        description=description,
        widths=known,
        origin=origin,
    )


def names() -> list[str]:
    """Every bundled catalogue's name, sorted."""
    return sorted(entry.name.removesuffix(".json") for entry in _folder().iterdir() if entry.name.endswith(".json"))


def _layerless(site: Site | None) -> str:
    """A site with its layer written L (`blocks.L.hook_resid_post`); `?` where the names do not say it."""
    return _layerless_hook(None if site is None else site.hook)


def _layerless_hook(hook: str | None) -> str:
    """A hook name with its layer written L; `?` for None."""
    return "?" if hook is None else re.sub(r"^blocks\.\d+\.", "blocks.L.", hook)


def _tagged_width(path: str) -> int | None:
    """The width a Gemma Scope folder's name tags (`layer_12/width_16k/average_l0_82`: 16384), None if none."""
    from saezarr.inputs.configs import parse_width

    match = re.search(r"(?:^|/)width_(\w+?)(?:/|$)", path)
    return parse_width(match.group(1), path) if match else None


@functools.cache
def _neuronpedia_sources() -> dict[tuple[str, str], str]:
    """Each published SAE's (repo id, folder) and its Neuronpedia source ("" where none is published): the bundled
    catalogues', then SAELens' registry's where it names one."""
    sources: dict[tuple[str, str], str] = {}
    for key, source in [*_bundled_sources(), *_release_sources()]:
        if not sources.get(key):  # a release and its canonical twin list one SAE; either may name its source
            sources[key] = source
    return sources


def _bundled_sources() -> list[tuple[tuple[str, str], str]]:
    found = []
    for name in names():
        data = json.loads(read_text(name))
        found += [((data["sae_repo"], e["path"].strip("/")), e.get("neuronpedia") or "") for e in data["configs"]]
    return found


def _release_sources() -> list[tuple[tuple[str, str], str]]:
    found = []
    for name in saelens.names():
        repo = saelens.release(name)["repo_id"]
        found += [
            ((repo, sae["path"].strip("/")), sae["neuronpedia"]) for sae in saelens.saes(name) if sae["neuronpedia"]
        ]
    return found


def neuronpedia_source(sae_repo: str, path: str) -> str | None:
    """The exact Neuronpedia source of a published SAE (repo id + folder), as a bundled catalogue or SAELens' registry
    names it: "" if none is published, None if unknown."""
    return _neuronpedia_sources().get((sae_repo, path.strip("/")))
