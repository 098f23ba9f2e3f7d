"""The SAE configuration file: which model, which SAE repository, which SAEs."""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saezarr.errors import ConfigError, InputError, option
from saezarr.inputs import catalogues, saelens
from saezarr.sites import parse_hook, resid_post, site_tag

MISSING_L0 = -1  # the store's average_l0 of an SAE whose average L0 is not known
WIDTH_TAGS = {"k": 1000, "m": 1000**2}  # Gemma Scope's width tags round a power of two down: 65k = 65536
_CANONICAL = re.compile(r"(?:^|/)layer_(\d+)/width_\w+/canonical$")


@dataclass(frozen=True)
class SAEConfig:
    """One SAE: its folder, and what is known of it (the layer it reads, sparsity, width, name, Neuronpedia source).

    `neuronpedia` is None where nothing says, "" where no source is published. Once located (`locate_sae`), layer,
    width and architecture are known."""

    layer: int | None
    average_l0: int | None
    path: str
    neuronpedia: str | None = None  # this exact SAE's Neuronpedia source, e.g. "gemma-2-2b/12-gemmascope-res-16k"
    width: int | None = None
    given_name: str | None = None
    architecture: str | None = None
    hook: str | None = None  # the site it reads (`blocks.12.hook_resid_post`): as given, else as its source says
    norm_scaling_factor: float | None = None

    @property
    def name(self) -> str:
        """The config's name: as given, else `layer_{layer}_l0_{average_l0}` (with the site's kind after the layer for
        a site other than resid_post: `layer_5_hook_mlp_out_l0_24`), else derived from its folder."""
        if self.given_name:
            return self.given_name
        if self.layer is not None and self.average_l0 is not None:
            return f"layer_{self.layer}_{site_tag(self.hook)}l0_{self.average_l0}"
        canonical = _CANONICAL.search(self.path)
        if canonical:
            return f"layer_{canonical.group(1)}_canonical"
        return self.path.rsplit("/", 1)[-1]

    @property
    def site_hook(self) -> str:
        """The site it reads: its hook, else the residual stream after its layer."""
        return self.hook or resid_post(self.known_layer)

    @property
    def known_layer(self) -> int:
        """The layer it reads: known once described (`describe_configs`) or located (`locate_sae`)."""
        if self.layer is None:
            raise AssertionError(f"config {self.name}: its layer is read before it is known")
        return self.layer

    @property
    def known_width(self) -> int:
        """The number of its features: known once located (`locate_sae`)."""
        if self.width is None:
            raise AssertionError(f"config {self.name}: its width is read before it is known")
        return self.width

    @property
    def l0_or_missing(self) -> int:
        """The average L0, or MISSING_L0 where it is not known."""
        return MISSING_L0 if self.average_l0 is None else self.average_l0


@dataclass(frozen=True)
class ConfigFile:
    """A parsed configuration file."""

    model: str
    sae_repo: str
    configs: tuple[SAEConfig, ...]
    source: str = ""  # the file, or `catalogue NAME`, for messages
    # how the SAEs' activations were made, where the file says it: TransformerLens' from_pretrained keyword
    # arguments (`center_writing_weights`), and whether a BOS token was prepended
    model_from_pretrained_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    prepend_bos: bool | None = None


def load_config_file(path: str | Path) -> ConfigFile:
    """Read and validate a configuration file, a bundled catalogue or a SAELens release by name (`saezarr
    catalogues`)."""
    path = Path(path)
    data = _config_data(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object with keys 'model', 'sae_repo', 'configs'")
    missing = [key for key in ("model", "sae_repo", "configs") if key not in data]
    if missing:
        raise ConfigError(f"{path}: missing key {missing[0]!r} (expected 'model', 'sae_repo', 'configs')")
    if not isinstance(data["configs"], list) or not data["configs"]:
        raise ConfigError(f"{path}: 'configs' must be a non-empty list")
    configs = tuple(_parse_entry(path, i, entry) for i, entry in enumerate(data["configs"]))
    refuse_repeats(path, configs)
    return ConfigFile(
        model=str(data["model"]),
        sae_repo=str(data["sae_repo"]),
        configs=configs,
        source=str(path),
        **_processing(path, data),
    )


def _config_data(path: Path) -> object:
    """The file's JSON data, else the bundled catalogue's or the SAELens release's of that name."""
    name = str(path)
    if path.is_file() or not (catalogues.exists(name) or saelens.exists(name)):
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            known = [*catalogues.names(), *saelens.names()]
            raise ConfigError(
                f"{path}: no such config file or bundled catalogue or SAELens release given as "
                f"{option('config_file')}{suggest(name, known, 3)}; `saezarr catalogues` lists them"
            ) from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    elif catalogues.exists(name):
        text = catalogues.read_text(name)
    else:
        return saelens.config_data(name)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None


def _processing(path: Path, data: dict) -> dict[str, Any]:
    """The optional processing facts (`model_from_pretrained_kwargs`, `prepend_bos`), checked."""
    kwargs = data.get("model_from_pretrained_kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise ConfigError(
            f"{path}: 'model_from_pretrained_kwargs' must be an object of keyword arguments, got {kwargs!r}"
        )
    prepend_bos = data.get("prepend_bos")
    if prepend_bos is not None and not isinstance(prepend_bos, bool):
        raise ConfigError(f"{path}: 'prepend_bos' must be true or false, got {prepend_bos!r}")
    return {"model_from_pretrained_kwargs": kwargs or {}, "prepend_bos": prepend_bos}


def _parse_entry(path: Path, index: int, entry: object) -> SAEConfig:
    where = f"{path}: configs[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected an object with at least the key 'path'")
    if "path" not in entry:
        raise ConfigError(f"{where}: missing key 'path'")
    folder = entry["path"]
    if not isinstance(folder, str) or not folder.strip("/ "):
        raise ConfigError(f"{where}: 'path' must be a non-empty string (\".\" for the repository's root)")
    layer = _count(where, entry, "layer")
    l0 = _count(where, entry, "average_l0")
    name = entry.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip() or "/" in name):
        raise ConfigError(f"{where}: 'name' must be a non-empty string without '/', got {name!r}")
    neuronpedia = entry.get("neuronpedia", None)
    if neuronpedia is not None and (not isinstance(neuronpedia, str) or not neuronpedia.strip("/ ")):
        raise ConfigError(f"{where}: 'neuronpedia' must be a Neuronpedia source string or null, got {neuronpedia!r}")
    if "neuronpedia" in entry:  # null: the file says none is published
        neuronpedia = neuronpedia.strip("/ ") if neuronpedia else ""
    hook = parse_hook(entry["hook"], where) if entry.get("hook") is not None else None
    return SAEConfig(
        layer=layer,
        average_l0=l0,
        hook=hook,
        path=folder.strip("/ "),
        neuronpedia=neuronpedia,
        width=parse_width(entry["width"], f"{where}: 'width'") if entry.get("width") is not None else None,
        given_name=name.strip() if name else None,
        norm_scaling_factor=_positive(where, entry, "norm_scaling_factor"),
    )


def _count(where: str, entry: dict, key: str) -> int | None:
    value = entry.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise ConfigError(f"{where}: {key!r} must be a non-negative integer, got {value!r}")
    return value


def _positive(where: str, entry: dict, key: str) -> float | None:
    value = entry.get(key)
    if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0):
        raise ConfigError(f"{where}: {key!r} must be a positive number, got {value!r}")
    return None if value is None else float(value)


def parse_width(value: object, where: str) -> int:
    """An SAE width given as a number of features or a Gemma Scope tag (`16k` = 16384, `65k` = 65536, `1m` = 2**20):
    the power of two the tag rounds down, else the tag's number."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        match = re.fullmatch(r"(\d+)([km]?)", value.strip().lower())
        if match and int(match.group(1)) > 0:
            number, unit = int(match.group(1)), WIDTH_TAGS.get(match.group(2), 1)
            powers = [2**p for p in range(64) if 2**p // unit == number] if unit > 1 else []
            return powers[0] if powers else number * unit
    raise ConfigError(f"{where} must be a positive number of features or a tag like '16k' or '1m', got {value!r}")


def width_tag(width: int) -> str:
    """A number of features as Gemma Scope tags it (16384: `16k`, 2**20: `1m`), where a tag gives it back exactly."""
    for suffix, unit in sorted(WIDTH_TAGS.items(), key=lambda item: -item[1]):
        tag = f"{width // unit}{suffix}"
        if width >= unit and parse_width(tag, "") == width:
            return tag
    return str(width)


def refuse_repeats(where: object, configs: Sequence[SAEConfig]) -> None:
    """Refuse two configs with one name (a store keys its configs by name)."""
    seen: dict[str, str] = {}
    for config in configs:
        if config.name in seen:
            raise ConfigError(
                f"{where}: config {config.name} appears more than once (paths {seen[config.name]} and "
                f"{config.path}); give one of them a 'name'"
            )
        seen[config.name] = config.path


def parse_layers(text: str, name: str = "layers") -> list[int]:
    """Parse a `--layers 3,12` option value (of the option `name`)."""
    try:
        layers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"{option(name)}: expected comma-separated layer numbers, got {text!r}") from None
    if not layers:
        raise InputError(f"{option(name)}: no layer given")
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
            raise InputError(f"{option('layers')}: no config for layer {absent[0]} in the config file")
        chosen = [c for c in chosen if c.layer in layers]
    if names is not None:
        names = [n.strip() for n in names if n.strip()]
        known = {c.name for c in configs}
        for name in names:
            if name not in known:
                raise InputError(f"{option('configs')}: unknown config {name!r}{suggest(name, known)}")
        chosen = [c for c in chosen if c.name in names]
    if not chosen:
        raise InputError(f"{option('layers')}/{option('configs')}: the selection matches no config")
    return tuple(chosen)


def check_depth(configs: Sequence[SAEConfig], num_layers: int, config_file: object) -> None:
    """Refuse a config reading a layer deeper than the model's last."""
    deepest = max(configs, key=lambda c: c.known_layer)
    if deepest.known_layer >= num_layers:
        raise ConfigError(
            f"{config_file}: config {deepest.name} reads layer {deepest.layer}, but the model has "
            f"{num_layers} layers (0-{num_layers - 1})"
        )


def suggest(name: str, known: Iterable[str], n: int = 1) -> str:
    """A ' (did you mean ...?)' hint for a misspelled name (up to `n` close names), or '' if nothing is close."""
    close = [repr(match) for match in difflib.get_close_matches(name, list(known), n=n)]
    if len(close) > 1:
        close[-2:] = [f"{close[-2]} or {close[-1]}"]
    return f" (did you mean {', '.join(close)}?)" if close else ""


def with_neuronpedia(configs: Sequence[SAEConfig], sae_repo: str) -> tuple[SAEConfig, ...]:
    """The configs with the bundled Neuronpedia source of each published SAE whose config does not name one."""
    return tuple(
        config
        if config.neuronpedia is not None
        else dataclasses.replace(config, neuronpedia=catalogues.neuronpedia_source(sae_repo, config.path) or "")
        for config in configs
    )
