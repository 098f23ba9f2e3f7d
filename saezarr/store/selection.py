"""Choosing a store's configs by name (--configs) and by layer (--layers)."""

from __future__ import annotations

from collections.abc import Sequence

from saezarr.errors import InputError, option
from saezarr.inputs.configs import suggest


def select_stored_configs(
    config_names: Sequence[str], config_layers: Sequence[int], names: Sequence[str] | None, layers: Sequence[int] | None
) -> list[int]:
    """Store indices of the configs chosen by --configs and --layers (all by default), in store order."""
    chosen = list(range(len(config_names)))
    if layers is not None:
        known_layers = sorted(set(config_layers))
        for layer in layers:
            if layer not in known_layers:
                listed = ", ".join(map(str, known_layers))
                raise InputError(f"{option('layers')}: the store has no config on layer {layer} (its layers: {listed})")
        chosen = [i for i in chosen if config_layers[i] in layers]
    if names is not None:
        names = [n.strip() for n in names if n.strip()]
        for name in names:
            if name not in config_names:
                listing = suggest(name, config_names) or f" (it has {', '.join(config_names)})"
                raise InputError(f"{option('configs')}: the store has no config {name!r}{listing}")
        chosen = [i for i in chosen if config_names[i] in names]
    if not chosen:
        raise InputError(f"{option('layers')}/{option('configs')}: the selection matches no config of the store")
    return chosen
