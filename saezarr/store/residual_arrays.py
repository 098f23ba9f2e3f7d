"""The store's residual stream: `residuals[residual_layer, fragment, hidden]` (resid_post of each kept layer),
`embeddings[fragment, hidden]` (the input of the first decoder layer) and, for each other site kind that the store's
SAEs read at a kept layer, an array named after it (`hook_mlp_out[hook_mlp_out_layer, fragment, hidden]`,
`attn_hook_z[attn_hook_z_layer, fragment, attn_hook_z_width]`); one zstd chunk file per (layer, fragment chunk),
written whole and durably per fragment chunk (the chunk's residual unit), then marked in
`_saezarr/done_residuals/<chunk>`."""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from saezarr.sites import READ_SITES, RESID_POST, resid_post, resid_pre, split_hook
from saezarr.store.storage import Location, ObjectStat, Storage, open_storage

if TYPE_CHECKING:
    from saezarr.store.format import Store

RESIDUALS = "residuals"
EMBEDDINGS = "embeddings"
RESIDUAL_LAYER = "residual_layer"
EMBEDDINGS_HOOK = resid_pre(0)  # what the embeddings array holds: the residual stream into decoder layer 0
RESIDUAL_UNIT = -1  # the config index under which a chunk's residual unit is written, reported and marked
MARKS = "done_residuals"
ZSTD_LEVEL = 1


@dataclass(frozen=True)
class KeptSite:
    """A site kind other than resid_post whose activations the store keeps, at some of its kept layers."""

    kind: str  # `hook_mlp_out`, `attn.hook_z`, ... (hook_embed: layer 0)
    layers: tuple[int, ...]
    width: int

    @property
    def name(self) -> str:
        """Its array's name: `hook_mlp_out`, `attn_hook_z`."""
        return array_name(self.kind)

    @property
    def layer_dim(self) -> str:
        """Its layer dimension, and the name of that dimension's coordinate array."""
        return f"{self.name}_layer"

    def width_dim(self, hidden: int) -> str:
        """Its last dimension: `hidden` where its width is the hidden size, else `<name>_width`."""
        return "hidden" if self.width == hidden else f"{self.name}_width"

    def hook(self, layer: int) -> str:
        """The hook of this kind at a layer."""
        return _hook(self.kind, layer)


def array_name(kind: str) -> str:
    """The name of a site kind's array (dots are awkward in xarray names): `hook_mlp_out`, `attn_hook_z`."""
    return kind.replace(".", "_")


def _hook(kind: str, layer: int) -> str:
    return kind if kind == "hook_embed" else f"blocks.{layer}.{kind}"


def kept_sites(hooks: Iterable[str], layers: Iterable[int], width_of: Callable[[str], int]) -> tuple[KeptSite, ...]:
    """The site kinds a store keeps beside resid_post and the embeddings: each kind that `hooks` (its SAEs' sites)
    read at one of the kept `layers` (hook_embed's is 0), with those layers and the site's width."""
    kept_layers = set(layers)
    found: dict[str, set[int]] = {}
    for hook in set(hooks) - {EMBEDDINGS_HOOK}:  # the embeddings array holds that one already
        layer, kind = split_hook(hook)
        layer = 0 if kind == "hook_embed" else layer
        if kind != RESID_POST and layer in kept_layers:
            found.setdefault(kind, set()).add(layer)
    return tuple(
        KeptSite(kind, tuple(sorted(found[kind])), width_of(_hook(kind, min(found[kind]))))
        for kind in READ_SITES
        if kind in found
    )


def add_residual_arrays(
    path: Path,
    layers: list[int],
    hidden: int,
    n_fragments: int,
    chunk_fragments: int,
    dtype: str = "float32",
    sites: Iterable[KeptSite] = (),
) -> None:
    """Create the (unwritten) residuals and embeddings arrays, the residual_layer coordinate and the kept sites'
    arrays and layer coordinates in a store folder."""
    import zarr
    from zarr.codecs import ZstdCodec

    chunk_fragments = max(1, min(chunk_fragments, n_fragments))
    compressor = ZstdCodec(level=ZSTD_LEVEL, checksum=True)  # a damaged chunk fails to decode
    common: dict[str, Any] = dict(dtype=dtype, fill_value=np.nan, compressors=compressor, zarr_format=3)

    def layered(name: str, layer_dim: str, layers: Iterable[int], width: int, width_dim: str) -> None:
        layers = list(layers)
        zarr.create_array(
            str(path / name),
            shape=(len(layers), n_fragments, width),
            chunks=(1, chunk_fragments, width),
            dimension_names=(layer_dim, "fragment", width_dim),
            **common,
        )
        coordinate = zarr.create_array(
            str(path / layer_dim),
            shape=(len(layers),),
            chunks=(max(1, len(layers)),),
            dtype="int64",
            fill_value=0,
            dimension_names=(layer_dim,),
            zarr_format=3,
        )
        coordinate[:] = np.asarray(layers, dtype=np.int64)

    layered(RESIDUALS, RESIDUAL_LAYER, layers, hidden, "hidden")
    zarr.create_array(
        str(path / EMBEDDINGS),
        shape=(n_fragments, hidden),
        chunks=(chunk_fragments, hidden),
        dimension_names=("fragment", "hidden"),
        **common,
    )
    for site in sites:
        layered(site.name, site.layer_dim, site.layers, site.width, site.width_dim(hidden))


def write_consolidated(storage: Storage, attrs: dict | None = None) -> None:
    """Rewrite the root zarr.json durably: the arrays' metadata consolidated, and `attrs` as attributes if given."""
    root = json.loads(storage.get("zarr.json"))
    if attrs is not None:
        root["attributes"] = attrs
    metadata = {}
    for name in storage.list_dir(""):
        if not name.startswith(("_", ".")) and storage.exists(f"{name}/zarr.json"):
            metadata[name] = json.loads(storage.get(f"{name}/zarr.json"))
    root["consolidated_metadata"] = {"kind": "inline", "must_understand": False, "metadata": metadata}
    storage.put("zarr.json", json.dumps(root, indent=2).encode())


@dataclass(frozen=True)
class _Slot:
    """Where one stored hook lives: its array, its layer's index in that array (None: a 2-d array), its width."""

    hook: str
    array: str
    index: int | None
    width: int

    def key(self, chunk: int) -> str:
        return f"{self.array}/c/{chunk}/0" if self.index is None else f"{self.array}/c/{self.index}/{chunk}/0"


@dataclass(frozen=True)
class ResidualArrays:
    """A store's residual arrays: the layers and sites kept, and their chunk files written and read without zarr."""

    path: Location
    layers: tuple[int, ...]
    hidden: int
    n_fragments: int
    chunk_fragments: int
    dtype: np.dtype
    storage: Storage = field(compare=False, repr=False)
    sites: tuple[KeptSite, ...] = ()

    @classmethod
    def open(cls, path: Location, storage: Storage | None = None) -> ResidualArrays | None:
        """The residual arrays of the store at path (in storage, if given), or None if it keeps no residual stream."""
        from saezarr.store.shards import ChunkLayout

        storage = storage or open_storage(path)
        try:
            metadata = storage.get(f"{RESIDUALS}/zarr.json")
        except KeyError:
            return None
        layout = ChunkLayout.parse(metadata, f"{path}/{RESIDUALS}")
        sites = tuple(site for kind in READ_SITES if kind != RESID_POST if (site := _open_site(storage, kind)))
        layers = _layers(storage, RESIDUAL_LAYER)
        return cls(path, layers, layout.shape[2], layout.shape[1], layout.chunks[1], layout.dtype, storage, sites)

    @property
    def n_chunks(self) -> int:
        """Fragment chunks of the arrays."""
        return -(-self.n_fragments // self.chunk_fragments)

    def bounds(self, chunk: int) -> tuple[int, int]:
        """Fragment index range [start, stop) of a chunk."""
        start = chunk * self.chunk_fragments
        return start, min(start + self.chunk_fragments, self.n_fragments)

    @property
    def marks_prefix(self) -> str:
        """The storage key prefix of the residual units' completion marks."""
        return f"_saezarr/{MARKS}/"

    @functools.cached_property
    def _slots(self) -> dict[str, _Slot]:
        """Each stored hook's place, in the order of a unit's files: each layer's residuals, the embeddings, then each
        kept site's layers."""
        slots = [_Slot(resid_post(layer), RESIDUALS, i, self.hidden) for i, layer in enumerate(self.layers)]
        slots.append(_Slot(EMBEDDINGS_HOOK, EMBEDDINGS, None, self.hidden))
        for site in self.sites:
            slots += [_Slot(site.hook(layer), site.name, i, site.width) for i, layer in enumerate(site.layers)]
        return {slot.hook: slot for slot in slots}

    @property
    def hooks(self) -> tuple[str, ...]:
        """Every hook whose activations a residual unit holds, in the order of its files."""
        return tuple(self._slots)

    @property
    def arrays(self) -> tuple[str, ...]:
        """The names of the data arrays: residuals, embeddings, then the kept sites'."""
        return (RESIDUALS, EMBEDDINGS, *(site.name for site in self.sites))

    def shapes(self, n_fragments: int) -> dict[str, list[int]]:
        """Each data array's shape with `n_fragments` fragments."""
        shapes = {RESIDUALS: [len(self.layers), n_fragments, self.hidden], EMBEDDINGS: [n_fragments, self.hidden]}
        return shapes | {site.name: [len(site.layers), n_fragments, site.width] for site in self.sites}

    def keys(self, chunk: int) -> list[str]:
        """The storage keys of one unit's chunk files, in the order of `hooks`."""
        return [slot.key(chunk) for slot in self._slots.values()]

    def done(self) -> np.ndarray:
        """Completion of every chunk's residual unit, as a boolean [n_chunks] array."""
        done = np.zeros(self.n_chunks, dtype=bool)
        if self.storage.can_list:
            prefixes = (self.marks_prefix, *(f"{name}/" for name in self.arrays))
            listed = {key: found for prefix in prefixes for key, found in self.storage.stats(prefix).items()}
        else:
            listed = self._probed()
        marks = [key for key in listed if key.startswith(self.marks_prefix)]
        written = listed
        for key in marks:
            chunk = key.removeprefix(self.marks_prefix)
            if chunk.isdigit() and int(chunk) < self.n_chunks:
                done[int(chunk)] = all(key in written for key in self.keys(int(chunk)))
        return done

    def _probed(self) -> dict[str, ObjectStat]:
        """The marks and chunk files there are, asked for one by one (a storage that cannot list)."""
        found = {}
        for chunk in range(self.n_chunks):
            for key in (f"{self.marks_prefix}{chunk}", *self.keys(chunk)):
                with contextlib.suppress(KeyError):
                    found[key] = self.storage.stat(key)
        return found

    def write_unit(self, chunk: int, values: Mapping[str, np.ndarray]) -> None:
        """Write one chunk's activations {hook: [rows, width]} of every hook in `hooks` durably, unmarked."""
        start, stop = self.bounds(chunk)
        for slot in self._slots.values():
            block = values[slot.hook]
            if block.shape != (stop - start, slot.width):
                raise ValueError(
                    f"residual unit {chunk}: {slot.hook} takes {(stop - start, slot.width)}, got {block.shape}"
                )
            self.storage.put(slot.key(chunk), self._encode(block))

    def mark_done(self, chunk: int) -> None:
        """Mark a chunk's residual unit complete; only once its files are durable."""
        self.storage.touch(f"{self.marks_prefix}{chunk}")

    def unmark(self, chunk: int) -> None:
        """Remove a chunk's completion mark (its files stay)."""
        self.storage.delete(f"{self.marks_prefix}{chunk}")

    def read(self, hooks: Iterable[str], start: int, stop: int) -> dict[str, np.ndarray]:
        """{hook: activations [stop - start, width]} of stored hooks for fragments within one written chunk."""
        chunk = start // self.chunk_fragments
        offset = chunk * self.chunk_fragments
        return {hook: self._decode(self._slots[hook], chunk)[start - offset : stop - offset] for hook in hooks}

    def _encode(self, block: np.ndarray) -> bytes:
        # zarr stores an edge chunk whole, the rows past the array's end holding the fill value
        full = np.full((self.chunk_fragments, block.shape[1]), np.nan, dtype=self.dtype.newbyteorder("<"))
        full[: len(block)] = block
        return self._zstd().encode(full)

    def _decode(self, slot: _Slot, chunk: int) -> np.ndarray:
        data = self._zstd().decode(self.storage.get(slot.key(chunk)))
        return np.frombuffer(data, dtype=self.dtype.newbyteorder("<")).reshape(self.chunk_fragments, slot.width)

    def _zstd(self):
        from numcodecs import Zstd

        return Zstd(level=ZSTD_LEVEL, checksum=True)


def _open_site(storage: Storage, kind: str) -> KeptSite | None:
    """The store's array of a site kind, if it keeps one."""
    name = array_name(kind)
    try:
        shape = json.loads(storage.get(f"{name}/zarr.json"))["shape"]
    except KeyError:
        return None
    return KeptSite(kind, _layers(storage, f"{name}_layer"), int(shape[2]))


def _layers(storage: Storage, name: str) -> tuple[int, ...]:
    """The layers a layer coordinate array lists."""
    import zarr

    from saezarr.store.zarr_adapter import zarr_location

    stored = zarr.open_array(zarr_location(storage, name, read_only=True), mode="r")[...]
    return tuple(np.asarray(stored, dtype=np.int64).tolist())


def kept_residuals(store: Store) -> ResidualArrays:
    """The residual arrays of a store that keeps them: what reads or writes residuals is only given such a store."""
    if store.residuals is None:
        raise AssertionError(f"{store.path}: the store keeps no residuals")
    return store.residuals
