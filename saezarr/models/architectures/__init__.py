"""Where each site lives in a model, per architecture: a site table for each Hugging Face `model_type`.

A site (TransformerLens' spelling, `blocks.12.hook_resid_post`) is read by a forward hook on one module of the model
as `AutoModel` loads it (the base model, no LM head): its output, or its input. A table maps each site kind it
supports to that module's path for `model.get_submodule`, `{layer}` standing for the site's layer.

The built-in tables are this package's modules, one per architecture family; another package adds one through the
entry-point group `saezarr.architectures`, the entry point named for the model type and naming a `SiteTable`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from saezarr.registry import Registry, UnknownEntry
from saezarr.sites import split_hook


class SiteNotInTable(UnknownEntry):
    """A site that the model's site table does not place."""


@dataclass(frozen=True)
class ModuleSite:
    """Where a site lives: a module's path (`{layer}` for the site's layer), and which of its values the site is."""

    path: str
    value: Literal["output", "input"] = "output"  # input: the module's first argument (or its `hidden_states`)

    def at(self, layer: int | None) -> ModuleSite:
        """This place with the site's layer filled in."""
        return ModuleSite(self.path.format(layer=layer), self.value)


@dataclass(frozen=True)
class SiteTable:
    """Where each site kind (`hook_resid_post`, ...) of one architecture lives in its base model."""

    sites: Mapping[str, ModuleSite]

    def where(self, hook: str) -> ModuleSite:
        """The module and value a hook reads, for `model.get_submodule`."""
        layer, kind = split_hook(hook)
        if kind not in self.sites:
            known = ", ".join(sorted(self.sites))
            raise SiteNotInTable(f"the model's site table does not place {hook} (it places {known})")
        return self.sites[kind].at(layer)


def layer_sites(layers: str) -> SiteTable:
    """The table of a model whose decoder layers are the module list at `layers` (`layers`, `h`, ...): the residual
    stream into a layer is its input, after it its output (the first element of a tuple)."""
    return SiteTable(
        {
            "hook_resid_pre": ModuleSite(f"{layers}.{{layer}}", "input"),
            "hook_resid_post": ModuleSite(f"{layers}.{{layer}}", "output"),
        }
    )


ARCHITECTURES: Registry[SiteTable] = Registry("architectures", "model type", "saezarr.models.architectures")
PLUGIN_HINT = "a plugin adds its site table under the entry-point group saezarr.architectures"
