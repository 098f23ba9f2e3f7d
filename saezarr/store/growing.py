"""Growing a store in place (`build --extend`): more configs, more fragments, or both, leaving every written shard as
it is.

The order makes a kill at any point resumable by rerunning the extension: first the record of what the old store
was (`_saezarr/extend.json`), then the last partial chunk's marks are removed (its shards are rewritten with their
old rows kept bitwise and the new rows added), then each coordinate array is replaced whole, then the data arrays'
shapes, and last the root zarr.json (attributes, a new store id and consolidated metadata), the commit point of the new
inputs."""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from saezarr.durable import folders
from saezarr.inputs.configs import SAEConfig
from saezarr.store.format import (
    ACTIVATIONS,
    EXTEND_RECORD,
    STATE_GROUP,
    STORE_ID,
    Store,
    _write_layout,
    copy_objects,
)
from saezarr.store.residual_arrays import write_consolidated
from saezarr.store.storage import Location, Storage, open_storage

if TYPE_CHECKING:
    import pandas as pd

GROWING_SUFFIX = ".growing"


@dataclass(frozen=True)
class Growth:
    """What an extension adds: the whole fragment table and config list after it, and what the store held before."""

    fragments: pd.DataFrame
    configs: tuple[SAEConfig, ...]
    attrs: dict
    kept_fragments: int
    kept_configs: int

    @property
    def widths(self) -> list[int]:
        """Each config's SAE width after the extension."""
        return [c.known_width for c in self.configs]

    def record(self) -> dict:
        """The extension record kept in the store until the extension is complete."""
        return {
            "kept_fragments": self.kept_fragments,
            "kept_configs": self.kept_configs,
            "target": {key: self.attrs.get(key) for key in ("configs", "input_sha256", "n_sentences")},
        }


def read_record(path: Location) -> dict | None:
    """The record of an extension in progress in the store at path, or None."""
    try:
        return json.loads(open_storage(path).get(f"{STATE_GROUP}/{EXTEND_RECORD}"))
    except KeyError:
        return None


def grow_store(store: Store, growth: Growth) -> None:
    """Grow the store to `growth` (idempotent: a rerun after a kill finishes it), then give it a fresh identity."""
    storage = store.storage
    storage.put(f"{STATE_GROUP}/{EXTEND_RECORD}", json.dumps(growth.record()).encode())
    n_fragments, n_configs = len(growth.fragments), len(growth.configs)
    cf = store.chunk_fragments
    if n_fragments > growth.kept_fragments and growth.kept_fragments % cf:
        partial = growth.kept_fragments // cf  # its shards gain rows: written again, the old rows kept
        for ci in range(growth.kept_configs):
            store.storage.delete(store._mark(ci, partial))
        if store.residuals is not None:
            store.residuals.unmark(partial)
    width = max(store.width, *growth.widths)
    _replace_coordinates(storage, growth, cf, store.shard_width, grown_features=width > store.width)
    _set_shape(storage, ACTIVATIONS, [n_configs, n_fragments, width])
    if store.residuals is not None:
        for name, shape in store.residuals.shapes(n_fragments).items():
            _set_shape(storage, name, shape)
    # the commit point, with the fresh identity in the same write: a kill cannot commit the growth under the old id
    write_consolidated(storage, {**growth.attrs, STORE_ID: uuid.uuid4().hex})


def restore_interrupted_growth(path: Location) -> None:
    """Put back a coordinate folder that a killed growth moved aside before its new one was in (a key-value storage
    moves nothing aside: its coordinates are rewritten in place, and the rerun writes them again)."""
    folder = open_storage(path).folder
    if folder is not None:
        folders.restore_moved_aside(folder)


def finish_growth(path: Location) -> None:
    """Forget the extension record once every unit of the grown store is done."""
    open_storage(path).delete(f"{STATE_GROUP}/{EXTEND_RECORD}")


def _replace_coordinates(
    storage: Storage, growth: Growth, chunk_fragments: int, shard_width: int, grown_features: bool
) -> None:
    """Each coordinate on `config` or `fragment` (and `feature`, if it grew), written whole for the grown store and
    swapped in (a folder by rename; in a key-value storage its objects put, its zarr.json last, then the old
    ones it no longer has deleted)."""
    folder = storage.folder
    staging = folders.make_staging(folder, GROWING_SUFFIX) if folder else Path(tempfile.mkdtemp(GROWING_SUFFIX))
    grown = ("config", "fragment", "feature") if grown_features else ("config", "fragment")
    try:
        _write_layout(
            staging, growth.fragments, growth.configs, growth.widths, growth.attrs, chunk_fragments, shard_width
        )
        for meta in sorted(staging.glob("*/zarr.json")):
            name = meta.parent.name
            dims = json.loads(meta.read_text()).get("dimension_names") or []
            if name == ACTIVATIONS or len(dims) != 1 or dims[0] not in grown:
                continue
            if folder is not None:
                folders.swap_into_place(meta.parent, folder / name)
                continue
            written = open_storage(meta.parent)
            copy_objects(written, storage, into=f"{name}/", last="zarr.json")
            kept = set(written.list_prefix(""))
            for key in list(storage.list_prefix(f"{name}/")):
                if key.removeprefix(f"{name}/") not in kept:
                    storage.delete(key)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _set_shape(storage: Storage, array: str, shape: Sequence[int]) -> None:
    """Set an array's shape in its zarr.json (its chunk files stay; new ones fill the grown part)."""
    meta = json.loads(storage.get(f"{array}/zarr.json"))
    meta["shape"] = list(shape)
    storage.put(f"{array}/zarr.json", json.dumps(meta, indent=2).encode())
