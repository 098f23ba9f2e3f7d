"""Locating model and SAE files: a Hugging Face hub repo id (possibly cached offline) or a local folder."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from saezarr.errors import InputError, SaezarrError, one_line, option

_SNAPSHOT = re.compile(r"[\\/]snapshots[\\/]([0-9a-f]{40})[\\/]")


@dataclass(frozen=True)
class Source:
    """Where a model or SAE repository comes from, with the revision it resolved to."""

    name: str
    revision: str
    local_dir: Path | None

    @property
    def is_local(self) -> bool:
        """True when `name` is a folder on disk rather than a hub repo id."""
        return self.local_dir is not None


def resolve(name: str, probe_file: str, option_name: str, revision: str | None = None) -> Source:
    """Resolve a repo id or folder (given as option `option_name`) to a Source, checking that `probe_file` can be had."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        if not (folder / probe_file).exists():
            raise InputError(f"{option(option_name, name)}: the folder has no {probe_file}")
        return Source(name=str(folder.resolve()), revision="local", local_dir=folder.resolve())
    if _looks_like_path(name):
        raise InputError(f"{option(option_name, name)}: no such folder")
    path = download(name, probe_file, option_name, revision)
    match = _SNAPSHOT.search(str(path))
    return Source(name=name, revision=match.group(1) if match else (revision or "unknown"), local_dir=None)


def download(
    repo: str, filename: str, option_name: str, revision: str | None = None, subfolder: str | None = None
) -> Path:
    """Fetch one file of a hub repo (given as option `option_name`) through the Hugging Face cache (offline when
    HF_HUB_OFFLINE=1)."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename, subfolder=subfolder, revision=revision))
    except Exception as exc:  # the hub raises a zoo of types: offline, missing, gated, network
        where = f"{subfolder}/{filename}" if subfolder else filename
        raise SaezarrError(
            f"{option(option_name, repo)}: could not get {where} ({type(exc).__name__}: {one_line(exc)})"
        ) from None


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1
