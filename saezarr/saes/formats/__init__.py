"""The SAE formats saezarr reads, one module each, registered by name in `SAE_FORMATS`.

A format, like xarray's `BackendEntrypoint`, says whether a folder's name claims it (`can_open`) and reads an SAE's
folder into an `SAEDescription` (`describe`, None when the folder lacks its files). Formats are tried in the order
of `formats_for`: those the folder's name claims first, then the rest by `priority`. Another package adds one
through the `saezarr.sae_formats` entry-point group, naming an `SAEFormat` (or a module that registers its own).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from saezarr.errors import SAEFormatError
from saezarr.inputs.configs import SAEConfig
from saezarr.registry import Registry
from saezarr.saes.description import Fetch, SAEDescription
from saezarr.saes.weights import Tensor, WeightsUnreadable, read_header
from saezarr.sites import Site

ITSELF = "."  # what a format fetches where the SAE is one file (its config's path), not a folder


def _claims_no_folder(path: str) -> bool:
    return False


def _knows_nothing(path: str) -> dict:
    return {}


def _names_no_site(path: str, layer: int | None) -> Site | None:
    return None


@dataclass(frozen=True)
class SAEFormat:
    """One SAE format: the files that say it, how it reads a folder, and what a folder's name tells of it."""

    name: str
    describe: Callable[[SAEConfig, Fetch, str], SAEDescription | None]  # (config, fetch, repo)
    marker: str  # the file whose presence says the format (probed on the hub to find the repository)
    files: str  # the files that make an SAE of this format, as a refusal lists them
    priority: int = 100  # lower is tried first among the formats the folder's name does not claim
    can_open: Callable[[str], bool] = _claims_no_folder  # True if the folder's name says this format
    from_path: Callable[[str], dict] = _knows_nothing  # the config fields (layer, average_l0) the folder's name gives
    site_from_path: Callable[[str, int | None], Site | None] = _names_no_site  # the site the folder's name says


def json_object(path: Path, config: SAEConfig) -> dict:
    """A format's settings file (cfg.json, config.json, hyperparams.json) as a dict; refused in one line naming the
    file and the config unless it is a readable JSON object."""
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SAEFormatError(f"{path}: config {config.name}: not readable JSON ({exc})") from None
    if not isinstance(settings, dict):
        raise SAEFormatError(f"{path}: config {config.name}: expected a JSON object")
    return settings


def read_settings(config: SAEConfig, fetch: Fetch, filename: str) -> tuple[dict, Path] | None:
    """The SAE folder's settings file as a dict (None if the folder has none), and the file's path."""
    path = fetch(filename, False)
    return None if path is None else (json_object(path, config), path)


def beside(filename: str) -> str:
    """What a format fetches for a file beside an SAE that is one file (in the folder holding it)."""
    return f"../{filename}"


def sae_file(config: SAEConfig, fetch: Fetch, name: re.Pattern) -> tuple[Path, re.Match] | None:
    """An SAE that is one file: the file, and the match of its name; None if the config's path is not so named or
    the file is not there."""
    found = name.search(config.path)
    path = fetch(ITSELF, False) if found is not None else None
    return None if path is None or found is None else (path, found)


def arrays_of(weights: Path, config: SAEConfig) -> dict[str, Tensor]:
    """The arrays a weights file holds by name, from its header; refused in one line unless it is readable."""
    try:
        return read_header(weights)
    except WeightsUnreadable as exc:
        raise SAEFormatError(f"{weights}: config {config.name}: not a readable {weights.name} ({exc})") from None


@dataclass(frozen=True)
class LayerFiles:
    """SAEs that are single files named for the layer they read (`layer_12.safetensors`): what the name says. The
    pattern's group `layer` is the layer; `kind` the site there (`hook_resid_post`, `mlp.hook_in`)."""

    pattern: re.Pattern
    kind: str

    def matches(self, path: str) -> bool:
        """True if the SAE's path is named so."""
        return self.pattern.search(path) is not None

    def from_path(self, path: str) -> dict:
        """The layer the file's name gives."""
        found = self.pattern.search(path)
        return {"layer": int(found.group("layer"))} if found else {}

    def site(self, path: str, layer: int | None = None) -> Site | None:
        """The site at the layer the file's name gives (None: not so named)."""
        found = self.pattern.search(path)
        if found is None:
            return None
        return Site(f"blocks.{found.group('layer')}.{self.kind}", f"the file's name {found.group(0).lstrip('/')}")


SAE_FORMATS: Registry[SAEFormat] = Registry("sae_formats", "SAE format", __name__)


def register_format(sae_format: SAEFormat) -> SAEFormat:
    """Register a format under its own name."""
    return SAE_FORMATS.register(sae_format.name, sae_format)


def by_priority() -> list[SAEFormat]:
    """Every registered format, lowest priority first (then by name)."""
    return sorted((entry for _, entry in SAE_FORMATS.items()), key=lambda entry: (entry.priority, entry.name))


def claiming(path: str) -> list[SAEFormat]:
    """The formats the folder's name says, by priority."""
    return [entry for entry in by_priority() if entry.can_open(path)]


def formats_for(path: str) -> list[SAEFormat]:
    """The formats to try on a folder: those its name claims first (one hub request in the usual case), then the
    others by priority."""
    return sorted(by_priority(), key=lambda entry: not entry.can_open(path))
