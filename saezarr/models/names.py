"""Whether a model name as TransformerLens spells it (an SAE's `model_name`) names the model being read."""

from __future__ import annotations

import re
from pathlib import Path

from saezarr.hub import Source

# TransformerLens names whose hub id is not the name with its organisation dropped
_TL_ALIASES = {"gpt2-small": "gpt2"}
_CACHED_REPO = re.compile(r"(?:^|[\\/])models--([^\\/]+?)--([^\\/]+)[\\/]snapshots[\\/]")


def _short(name: str) -> str:
    """A model name without its organisation, lower-case, TransformerLens' aliases resolved."""
    short = name.strip().rstrip("/").rsplit("/", 1)[-1].lower()
    return _TL_ALIASES.get(short, short)


def source_names(source: Source) -> list[str]:
    """The names a model source goes by: its hub id; for a folder, its name and the hub id of a cache snapshot."""
    if not source.is_local:
        return [source.name]
    names = [Path(source.name).name]
    cached = _CACHED_REPO.search(str(source.name) + "/")
    if cached:
        names.append(f"{cached.group(1)}/{cached.group(2)}")
    return names


def names_model(model_name: str, source: Source) -> bool:
    """True if `model_name` (TransformerLens' spelling: `gemma-2-2b`, `gpt2-small`, `google/gemma-3-1b-pt`) names
    the model at `source` (a hub id, or a folder matched by its name)."""
    return _short(model_name) in {_short(name) for name in source_names(source)}
