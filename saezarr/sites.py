"""Which site of the model an SAE reads, as its source says it, and the refusal of sites saezarr does not read.

A site is named as TransformerLens and SAELens name it (`blocks.12.hook_resid_post`, `blocks.2.hook_mlp_out`,
`hook_embed`). What says it, by family:
- Gemma Scope 1: the repository's name (`-res`, `-att`, `-mlp`, `-transcoders`; `embedding/` folders of `-res`);
- Gemma Scope 2: `config.json`'s `hf_hook_point_in`, else the folder's prefix (`resid_post`, `attn_out`, `mlp_out`,
  `transcoder`, `clt`);
- SAELens: the cfg's `hook_name` (`hook_point` before SAELens 6);
- a config file entry's `hook`, where the source says nothing (a local folder of another name).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from saezarr.errors import SaezarrError

HEADS_KIND = "attn.hook_z"  # every head's d_head columns: its width is heads × head_dim, not the hidden size
RESID_POST = "hook_resid_post"  # the residual stream after a layer: the site of every store before sites were recorded
# the site kinds saezarr reads, where a model's site table places them (saezarr.models.architectures); all but
# hook_embed belong to a decoder layer. `mlp.hook_in` is the MLP's own input, its norm's output with the gain (what
# Gemma Scope 2's transcoders read); TransformerLens' `hook_mlp_in` is the residual stream that norm reads.
READ_SITES = (
    "hook_embed",
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_resid_post",
    "hook_attn_out",
    "attn.hook_z",
    "hook_mlp_out",
    "hook_mlp_in",
    "ln2.hook_normalized",
    "mlp.hook_in",
)
_HOOK = re.compile(r"^(?:blocks\.(\d+)\.)?([a-z0-9_.]+)$")
_GEMMA_SCOPE_1_REPO = re.compile(r"gemma-scope-\d+b-(?:pt|it)-(res|att|mlp|transcoders)(?![a-z])", re.IGNORECASE)
_GEMMA_SCOPE_1_SITES = {
    "res": "hook_resid_post",
    "att": "attn.hook_z",
    "mlp": "hook_mlp_out",
    "transcoders": "ln2.hook_normalized",
}
_GEMMA_SCOPE_2_PREFIXES = {
    "resid_post": "hook_resid_post",
    "attn_out": "attn.hook_z",
    "mlp_out": "hook_mlp_out",
    "transcoder": "mlp.hook_in",
    "clt": "mlp.hook_in",
}
# Gemma Scope 2's `hf_hook_point_in`: the output or input of a Hugging Face module of decoder layer L, and its site
_HF_MODULES = {
    "": "hook_resid_post",  # model.layers.L(.output): the decoder layer's output
    "output": "hook_resid_post",
    "self_attn.o_proj.input": "attn.hook_z",
    "post_attention_layernorm.output": "hook_attn_out",
    "pre_feedforward_layernorm.input": "hook_resid_mid",
    "pre_feedforward_layernorm.output": "mlp.hook_in",
    "post_feedforward_layernorm.output": "hook_mlp_out",
}
_HF_HOOK = re.compile(r"^model\.(?:language_model\.)?layers\.(\d+)\.?(.*)$")


class SiteRefused(SaezarrError):
    """An SAE's site that saezarr does not read, or that its sources contradict; the message says which and why."""


@dataclass(frozen=True)
class Site:
    """A site of the model in TransformerLens' spelling, and what says the SAE reads it."""

    hook: str
    said_by: str

    @property
    def layer(self) -> int | None:
        """The decoder layer the site belongs to; hook_embed's is 0, the layer it feeds (None: a hook with no layer
        that saezarr does not read)."""
        layer, kind = split_hook(self.hook)
        return 0 if kind == "hook_embed" else layer

    @property
    def kind(self) -> str:
        """The site without its layer: `hook_resid_post`, `hook_mlp_out`, `attn.hook_z`, ..."""
        return split_hook(self.hook)[1]

    @property
    def is_read(self) -> bool:
        """True if saezarr reads this site (where the model's site table places it)."""
        return self.kind in READ_SITES and (split_hook(self.hook)[0] is None) == (self.kind == "hook_embed")


def split_hook(hook: str) -> tuple[int | None, str]:
    """A hook name's decoder layer (None: none, e.g. hook_embed) and its kind (`hook_resid_post`, `attn.hook_z`)."""
    match = _HOOK.match(hook)
    if match is None:
        return None, hook
    return (int(match.group(1)) if match.group(1) else None), match.group(2)


def site_tag(hook: str | None) -> str:
    """What names of configs and files add for a site: "" for resid_post (or no hook: names stay as they were), else
    its kind with dots as dashes and a trailing underscore (`hook_mlp_out_`, `attn-hook_z_`)."""
    kind = split_hook(hook)[1] if hook is not None else RESID_POST
    return "" if kind == RESID_POST else f"{kind.replace('.', '-')}_"


def resid_post(layer: int) -> str:
    """The hook of the residual stream after decoder layer `layer`."""
    return f"blocks.{layer}.hook_resid_post"


def resid_pre(layer: int) -> str:
    """The hook of the residual stream into decoder layer `layer` (of layer 0: the embeddings as the model scales and
    adds them)."""
    return f"blocks.{layer}.hook_resid_pre"


def parse_hook(text: str, where: str) -> str:
    """A hook name as a config file gives it, checked for TransformerLens' spelling."""
    if not isinstance(text, str) or _HOOK.match(text.strip()) is None:
        raise SiteRefused(f"{where}: 'hook' must be a hook name like 'blocks.12.hook_resid_post', got {text!r}")
    return text.strip()


def _at(layer: int | None, kind: str) -> str:
    return kind if layer is None else f"blocks.{layer}.{kind}"


def gemma_scope_1_site(repo: str, path: str, layer: int | None) -> Site | None:
    """The site a Gemma Scope 1 SAE reads, from its repository's name (a hub id, or a folder or cache path)."""
    match = _GEMMA_SCOPE_1_REPO.search(repo)
    if match is None:
        return None
    family = match.group(1).lower()
    said_by = f"the repository's name ({match.group(0)})"
    if family == "res" and re.search(r"(?:^|/)embedding/", path):
        return Site("hook_embed", f"{said_by} and the folder embedding/")
    return Site(_at(layer, _GEMMA_SCOPE_1_SITES[family]), said_by)


def gemma_scope_2_site(path: str, layer: int | None) -> Site | None:
    """The site a Gemma Scope 2 SAE reads, from its folder's prefix (`resid_post_all/...`, `mlp_out/...`)."""
    parts = path.strip("/").split("/")
    for part in reversed(parts[:-1]):
        prefix = part.removesuffix("_all")
        if prefix in _GEMMA_SCOPE_2_PREFIXES:
            return Site(_at(layer, _GEMMA_SCOPE_2_PREFIXES[prefix]), f"the folder's prefix {part}/")
    return None


def hf_hook_site(hf_hook: str, said_by: str) -> Site:
    """The site a Hugging Face module hook (`model.layers.L.output`, `...o_proj.input`) names."""
    match = _HF_HOOK.match(hf_hook)
    kind = _HF_MODULES.get(match.group(2)) if match else None
    if match is None or kind is None:
        return Site(hf_hook, said_by)  # a module saezarr does not know: refused as unread
    return Site(_at(int(match.group(1)), kind), said_by)


def check_read(site: Site, entry_hook: str | None, name: str, where: str) -> Site:
    """The SAE's site, agreed by its source and its config entry; refuse one saezarr does not read."""
    if entry_hook is not None and entry_hook != site.hook:
        raise SiteRefused(
            f"{where}: config {name}: the config file says hook {entry_hook} but {site.said_by} says {site.hook}"
        )
    if not site.is_read:
        raise SiteRefused(
            f"{where}: config {name}: the SAE reads {site.hook} ({site.said_by}), a site saezarr does not read "
            f"(it reads {', '.join(READ_SITES)}): refused rather than encode the wrong activations"
        )
    return site
