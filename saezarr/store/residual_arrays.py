"""The store's residual stream: `residuals[residual_layer, fragment, hidden]` (resid_post of each kept layer) and
`embeddings[fragment, hidden]` (the input of the first decoder layer), one zstd chunk file per (layer, fragment
chunk), written whole and durably per fragment chunk, then marked in `_saezarr/done_residuals/<chunk>`."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from saezarr.store.storage import Location, ObjectStat, Storage, open_storage

if TYPE_CHECKING:
    from saezarr.store.format import Store

RESIDUALS = "residuals"
EMBEDDINGS = "embeddings"
RESIDUAL_LAYER = "residual_layer"
RESIDUAL_UNIT = -1  # the config index under which a chunk's residual unit is written, reported and marked
MARKS = "done_residuals"
ZSTD_LEVEL = 1


def add_residual_arrays(
    path: Path, layers: list[int], hidden: int, n_fragments: int, chunk_fragments: int, dtype: str = "float32"
) -> None:
    """Create the (unwritten) residuals and embeddings arrays and the residual_layer coordinate in a store folder."""
    import zarr
    from zarr.codecs import ZstdCodec

    chunk_fragments = max(1, min(chunk_fragments, n_fragments))
    compressor = ZstdCodec(level=ZSTD_LEVEL, checksum=True)  # a damaged chunk fails to decode
    common: dict[str, Any] = dict(dtype=dtype, fill_value=np.nan, compressors=compressor, zarr_format=3)
    zarr.create_array(
        str(path / RESIDUALS),
        shape=(len(layers), n_fragments, hidden),
        chunks=(1, chunk_fragments, hidden),
        dimension_names=(RESIDUAL_LAYER, "fragment", "hidden"),
        **common,
    )
    zarr.create_array(
        str(path / EMBEDDINGS),
        shape=(n_fragments, hidden),
        chunks=(chunk_fragments, hidden),
        dimension_names=("fragment", "hidden"),
        **common,
    )
    coordinate = zarr.create_array(
        str(path / RESIDUAL_LAYER),
        shape=(len(layers),),
        chunks=(max(1, len(layers)),),
        dtype="int64",
        fill_value=0,
        dimension_names=(RESIDUAL_LAYER,),
        zarr_format=3,
    )
    coordinate[:] = np.asarray(layers, dtype=np.int64)


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
class ResidualArrays:
    """A store's residual arrays: the layers kept, and their chunk files written and read without zarr."""

    path: Location
    layers: tuple[int, ...]
    hidden: int
    n_fragments: int
    chunk_fragments: int
    dtype: np.dtype
    storage: Storage = field(compare=False, repr=False)

    @classmethod
    def open(cls, path: Location, storage: Storage | None = None) -> ResidualArrays | None:
        """The residual arrays of the store at path (in storage, if given), or None if it keeps no residual stream."""
        from saezarr.store.shards import ChunkLayout
        from saezarr.store.zarr_adapter import zarr_location

        storage = storage or open_storage(path)
        try:
            metadata = storage.get(f"{RESIDUALS}/zarr.json")
        except KeyError:
            return None
        import zarr

        layout = ChunkLayout.parse(metadata, f"{path}/{RESIDUALS}")
        stored = zarr.open_array(zarr_location(storage, RESIDUAL_LAYER, read_only=True), mode="r")[...]
        layers = np.asarray(stored, dtype=np.int64)
        return cls(
            path, tuple(layers.tolist()), layout.shape[2], layout.shape[1], layout.chunks[1], layout.dtype, storage
        )

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

    def keys(self, chunk: int) -> list[str]:
        """The storage keys of one unit's chunk files: each layer's residuals, then the embeddings."""
        return [f"{RESIDUALS}/c/{i}/{chunk}/0" for i in range(len(self.layers))] + [f"{EMBEDDINGS}/c/{chunk}/0"]

    def done(self) -> np.ndarray:
        """Completion of every chunk's residual unit, as a boolean [n_chunks] array."""
        done = np.zeros(self.n_chunks, dtype=bool)
        if self.storage.can_list:
            prefixes = (self.marks_prefix, f"{RESIDUALS}/", f"{EMBEDDINGS}/")
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

    def write_unit(self, chunk: int, residuals: np.ndarray, embeddings: np.ndarray) -> None:
        """Write one chunk's residuals [layer, rows, hidden] and embeddings [rows, hidden] durably, unmarked."""
        start, stop = self.bounds(chunk)
        expected = (len(self.layers), stop - start, self.hidden)
        if residuals.shape != expected or embeddings.shape != expected[1:]:
            raise ValueError(f"residual unit {chunk} takes {expected}, got {residuals.shape} and {embeddings.shape}")
        blocks = [*residuals, embeddings]
        for key, block in zip(self.keys(chunk), blocks):
            self.storage.put(key, self._encode(block))

    def mark_done(self, chunk: int) -> None:
        """Mark a chunk's residual unit complete; only once its files are durable."""
        self.storage.touch(f"{self.marks_prefix}{chunk}")

    def unmark(self, chunk: int) -> None:
        """Remove a chunk's completion mark (its files stay)."""
        self.storage.delete(f"{self.marks_prefix}{chunk}")

    def read(self, layers: list[int], start: int, stop: int) -> dict[int, np.ndarray]:
        """{layer: residuals [stop - start, hidden]} of kept layers for fragments within one written chunk."""
        chunk = start // self.chunk_fragments
        offset = chunk * self.chunk_fragments
        keys = self.keys(chunk)
        return {layer: self._decode(keys[self.layers.index(layer)])[start - offset : stop - offset] for layer in layers}

    def read_embeddings(self, start: int, stop: int) -> np.ndarray:
        """Embeddings [stop - start, hidden] of fragments within one written chunk."""
        offset = (start // self.chunk_fragments) * self.chunk_fragments
        return self._decode(self.keys(start // self.chunk_fragments)[-1])[start - offset : stop - offset]

    def _encode(self, block: np.ndarray) -> bytes:
        # zarr stores an edge chunk whole, the rows past the array's end holding the fill value
        full = np.full((self.chunk_fragments, self.hidden), np.nan, dtype=self.dtype.newbyteorder("<"))
        full[: len(block)] = block
        return self._zstd().encode(full)

    def _decode(self, key: str) -> np.ndarray:
        data = self._zstd().decode(self.storage.get(key))
        return np.frombuffer(data, dtype=self.dtype.newbyteorder("<")).reshape(self.chunk_fragments, self.hidden)

    def _zstd(self):
        from numcodecs import Zstd

        return Zstd(level=ZSTD_LEVEL, checksum=True)


def kept_residuals(store: Store) -> ResidualArrays:
    """The residual arrays of a store that keeps them: what reads or writes residuals is only given such a store."""
    if store.residuals is None:
        raise AssertionError(f"{store.path}: the store keeps no residuals")
    return store.residuals
