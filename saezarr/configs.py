"""The SAE configuration file: which model, which SAE repository, which SAEs."""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from saezarr.errors import SaezarrError


@dataclass(frozen=True)
class SAEConfig:
    """One SAE: the layer whose residual stream it reads, its sparsity tag and its folder."""

    layer: int
    average_l0: int
    path: str
    neuronpedia: str | None = None  # this exact SAE's Neuronpedia source, e.g. "gemma-2-2b/12-gemmascope-res-16k"

    @property
    def name(self) -> str:
        """The config's name, `layer_{layer}_l0_{average_l0}`."""
        return f"layer_{self.layer}_l0_{self.average_l0}"


@dataclass(frozen=True)
class ConfigFile:
    """A parsed configuration file."""

    model: str
    sae_repo: str
    configs: tuple[SAEConfig, ...]


def load_config_file(path: str | Path) -> ConfigFile:
    """Read and validate a configuration file of the `gemma_scope_16k_configurations.json` schema."""
    path = Path(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SaezarrError(f"{path}: no such config file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SaezarrError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise SaezarrError(f"{path}: expected a JSON object with keys 'model', 'sae_repo', 'configs'")
    missing = [key for key in ("model", "sae_repo", "configs") if key not in data]
    if missing:
        raise SaezarrError(f"{path}: missing key {missing[0]!r} (expected 'model', 'sae_repo', 'configs')")
    if not isinstance(data["configs"], list) or not data["configs"]:
        raise SaezarrError(f"{path}: 'configs' must be a non-empty list")
    configs = tuple(_parse_entry(path, i, entry) for i, entry in enumerate(data["configs"]))
    _refuse_repeats(path, configs)
    return ConfigFile(model=str(data["model"]), sae_repo=str(data["sae_repo"]), configs=configs)


def _parse_entry(path: Path, index: int, entry: object) -> SAEConfig:
    where = f"{path}: configs[{index}]"
    if not isinstance(entry, dict):
        raise SaezarrError(f"{where}: expected an object with keys 'layer', 'average_l0', 'path'")
    for key in ("layer", "average_l0", "path"):
        if key not in entry:
            raise SaezarrError(f"{where}: missing key {key!r}")
    layer, l0, folder = entry["layer"], entry["average_l0"], entry["path"]
    if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
        raise SaezarrError(f"{where}: 'layer' must be a non-negative integer, got {layer!r}")
    if not isinstance(l0, int) or isinstance(l0, bool) or l0 < 0:
        raise SaezarrError(f"{where}: 'average_l0' must be a non-negative integer, got {l0!r}")
    if not isinstance(folder, str) or not folder.strip():
        raise SaezarrError(f"{where}: 'path' must be a non-empty string")
    neuronpedia = entry.get("neuronpedia")
    if neuronpedia is not None and (not isinstance(neuronpedia, str) or not neuronpedia.strip("/ ")):
        raise SaezarrError(f"{where}: 'neuronpedia' must be a Neuronpedia source string or null, got {neuronpedia!r}")
    return SAEConfig(
        layer=layer, average_l0=l0, path=folder.strip("/"), neuronpedia=neuronpedia and neuronpedia.strip("/ ")
    )


def _refuse_repeats(path: Path, configs: Sequence[SAEConfig]) -> None:
    seen: set[str] = set()
    for config in configs:
        if config.name in seen:
            raise SaezarrError(f"{path}: config {config.name} appears more than once")
        seen.add(config.name)


def parse_layers(text: str) -> list[int]:
    """Parse a `--layers 3,12` option value."""
    try:
        layers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SaezarrError(f"--layers: expected comma-separated layer numbers, got {text!r}") from None
    if not layers:
        raise SaezarrError("--layers: no layer given")
    return layers


def select_configs(
    configs: Sequence[SAEConfig], layers: Iterable[int] | None = None, names: Iterable[str] | None = None
) -> tuple[SAEConfig, ...]:
    """Keep the configs on the given layers and/or with the given names, in file order."""
    chosen = list(configs)
    if layers is not None:
        layers = list(layers)
        absent = sorted(set(layers) - {c.layer for c in configs})
        if absent:
            raise SaezarrError(f"--layers: no config for layer {absent[0]} in the config file")
        chosen = [c for c in chosen if c.layer in layers]
    if names is not None:
        names = [n.strip() for n in names if n.strip()]
        known = {c.name for c in configs}
        for name in names:
            if name not in known:
                raise SaezarrError(f"--configs: unknown config {name!r}{suggest(name, known)}")
        chosen = [c for c in chosen if c.name in names]
    if not chosen:
        raise SaezarrError("--layers/--configs: the selection matches no config")
    return tuple(chosen)


def suggest(name: str, known: Iterable[str]) -> str:
    """A ' (did you mean ...?)' hint for a misspelled name, or '' if nothing is close."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
