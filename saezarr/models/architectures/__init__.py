"""Where each site lives in a model, per architecture: a site table for each Hugging Face `model_type`.

A site (TransformerLens' spelling, `blocks.12.hook_resid_post`) is read by a forward hook on one module of the model
as `AutoModel` loads it (the base model, no LM head): its output, its input, or its input normalised as the module (a
LayerNorm or RMSNorm) normalises it before its gain and bias (TransformerLens' `ln2.hook_normalized`). A table maps
each site kind it supports to that module's path for `model.get_submodule`, `{layer}` standing for the site's layer.

The built-in tables are this package's modules, one per architecture family; another package adds one through the
entry-point group `saezarr.architectures`, the entry point named for the model type and naming a `SiteTable`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from saezarr.registry import Registry, UnknownEntry
from saezarr.sites import split_hook


class SiteNotInTable(UnknownEntry):
    """A site that the model's site table does not place."""


Value = Literal["output", "input", "normalized"]
Norm = Literal["layer", "rms"]


@dataclass(frozen=True)
class ModuleSite:
    """Where a site lives: a module's path (`{layer}` for the site's layer), and which of its values the site is."""

    path: str
    value: Value = "output"  # input: the module's first argument (or its `hidden_states`); normalized: see `norm`
    norm: Norm | None = None  # for `normalized`: the input centred and scaled (layer) or scaled (rms), no gain

    def at(self, layer: int | None) -> ModuleSite:
        """This place with the site's layer filled in."""
        return ModuleSite(self.path.format(layer=layer), self.value, self.norm)


def _fits_every_config(config: Any) -> str | None:
    return None


@dataclass(frozen=True)
class SiteTable:
    """Where each site kind (`hook_resid_post`, ...) of one architecture lives in its base model; `misfit` says why
    a config of the model type is laid out otherwise than the table places its sites (None: it is not)."""

    sites: Mapping[str, ModuleSite]
    misfit: Callable[[Any], str | None] = _fits_every_config

    def where(self, hook: str) -> ModuleSite:
        """The module and value a hook reads, for `model.get_submodule`."""
        layer, kind = split_hook(hook)
        if kind not in self.sites or (layer is None) != (kind == "hook_embed"):
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


@dataclass(frozen=True)
class Block:
    """The modules of one decoder layer that sites are read at, relative to the layer; `attn_out` and `mlp_out` are
    the modules whose output TransformerLens calls hook_attn_out and hook_mlp_out (a sandwich norm's, where there is
    one), `mlp_norm` the norm the MLP reads through (TransformerLens' ln2)."""

    attention: str
    z_input: str  # the attention's output projection, whose input is hook_z (heads flattened, value bias included)
    mlp_norm: str
    norm: Norm
    attn_out: str | None = None  # default: the attention module
    mlp_out: str = "mlp"
    parallel: bool = False  # attention and MLP both read the layer's input (GPT-J, GPT-NeoX): no hook_resid_mid


def block_sites(
    layers: str, embed: ModuleSite, block: Block, misfit: Callable[[Any], str | None] = _fits_every_config
) -> SiteTable:
    """The table of a decoder whose layers are the module list at `layers`, its embedding read at `embed`."""
    at = f"{layers}.{{layer}}"
    mlp_input = ModuleSite(at, "input") if block.parallel else ModuleSite(f"{at}.{block.mlp_norm}", "input")
    sites = {
        **layer_sites(layers).sites,
        "hook_embed": embed,
        "hook_attn_out": ModuleSite(f"{at}.{block.attn_out or block.attention}"),
        "attn.hook_z": ModuleSite(f"{at}.{block.attention}.{block.z_input}", "input"),
        "hook_mlp_out": ModuleSite(f"{at}.{block.mlp_out}"),
        "hook_mlp_in": mlp_input,  # TransformerLens': the residual stream the MLP's norm reads
        "ln2.hook_normalized": ModuleSite(f"{at}.{block.mlp_norm}", "normalized", block.norm),
        "mlp.hook_in": ModuleSite(f"{at}.{block.mlp_norm}"),  # the MLP's own input: its norm's output
    }
    if not block.parallel:
        sites["hook_resid_mid"] = mlp_input
    return SiteTable(sites, misfit)


ARCHITECTURES: Registry[SiteTable] = Registry("architectures", "model type", "saezarr.models.architectures")
PLUGIN_HINT = "a plugin adds its site table under the entry-point group saezarr.architectures"
