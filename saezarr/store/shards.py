"""Zarr v3 chunks encoded and decoded at the codec's speed, without zarr's event loop: whole shards in the
`sharding_indexed` format of the activations layout saezarr creates, and the plain chunks of the arrays it caches.

Both read an array's layout and codecs from its zarr.json; zarr itself (0.1 s to import) is needed only to create
arrays. numcodecs is imported where chunks are encoded or decoded: a cached analysis has features.parquet under
way before it reads any chunk."""

from __future__ import annotations

import itertools
import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from saezarr.compat import crc32c

if TYPE_CHECKING:
    from numcodecs import Zstd

    from saezarr.store.storage.base import Ranges

MISSING = 2**64 - 1  # an index entry (offset and length) for an inner chunk that holds only the fill value


class ShardDamaged(ValueError):
    """A shard's bytes do not decode: too short for its index, or a checksum that does not match."""


@dataclass(frozen=True)
class ShardEncoder:
    """Encodes one shard of rows [fragment, feature] into the exact bytes zarr would write for it, and decodes them."""

    shard_rows: int
    inner_width: int
    width: int
    fill_value: float
    zstd: Zstd
    _buffers: threading.local = field(default_factory=threading.local, compare=False, repr=False)

    @classmethod
    def for_layout(cls, layout: ChunkLayout) -> ShardEncoder | None:
        """The encoder for a [config, fragment, feature] array, or None if its codecs are not saezarr's layout."""
        from numcodecs import Zstd

        if len(layout.codecs) != 1 or layout.codecs[0].get("name") != "sharding_indexed":
            return None
        sharding = layout.codecs[0].get("configuration", {})
        inner, index = sharding.get("codecs", []), sharding.get("index_codecs", [])
        shard, chunk = layout.chunks, layout.inner_chunks
        fill_value = _float(layout.fill_value)
        if not (
            len(inner) == 2
            and _is_little_endian_bytes(inner[0])
            and inner[1].get("name") == "zstd"
            and len(index) == 2
            and _is_little_endian_bytes(index[0])
            and index[1].get("name") == "crc32c"
            and sharding.get("index_location", "end") == "end"
            and layout.dtype == np.dtype("float32")
            and fill_value is not None
            and shard[0] == chunk[0] == 1
            and shard[1] == chunk[1]
            and shard[2] % chunk[2] == 0
        ):
            return None
        zstd = inner[1].get("configuration", {})
        return cls(
            shard_rows=shard[1],
            inner_width=chunk[2],
            width=shard[2],
            fill_value=fill_value,
            zstd=Zstd(level=zstd.get("level", 0), checksum=zstd.get("checksum", False)),
        )

    def __reduce__(self):
        # pickled for dask workers: a fresh per-thread buffer there
        return type(self), (self.shard_rows, self.inner_width, self.width, self.fill_value, self.zstd)

    def encode(self, rows: np.ndarray) -> list[bytes]:
        """The shard file's content as a list of byte strings: compressed inner chunks, then the index."""
        parts = [self._encode_inner_chunk(rows, start) for start in range(0, rows.shape[1], self.inner_width)]
        lengths = np.array([len(part) for part in parts], dtype="<u8")
        offsets = np.cumsum(lengths) - lengths
        index = np.stack([offsets, lengths], axis=1).astype("<u8").tobytes()
        return [*parts, index + _checksum(index)]  # the index, then its little-endian CRC32C

    def decode(
        self,
        data: bytes | Ranges | None,
        n_rows: int,
        reduce: Callable[[np.ndarray], np.ndarray],
        inner: range | None = None,
    ) -> np.ndarray:
        """`reduce` of a shard's rows [n_rows, feature], applied to each inner chunk's columns (those in `inner`, or
        all) and put side by side; data None is a shard never written (all fill value). `reduce` must return a new
        array, not a view."""
        inner = range(self.width // self.inner_width) if inner is None else inner
        index, block = self._index(data), self._block()
        out: np.ndarray | None = None
        for j, i in enumerate(inner):
            self._decode_inner_chunk(data, index[i], block)
            part = reduce(block[:n_rows])
            if out is None:
                out = np.empty((part.shape[0], len(inner) * self.inner_width), dtype=part.dtype)
            out[:, j * self.inner_width : (j + 1) * self.inner_width] = part
        assert out is not None  # callers ask for at least one inner chunk
        return out

    def decode_columns(self, data: bytes | Ranges | None, n_rows: int, columns: np.ndarray) -> np.ndarray:
        """A shard's rows [n_rows, len(columns)] of some feature columns (data None: never written), decoding only the
        inner chunks that hold them."""
        columns = np.asarray(columns, dtype=np.int64)
        out = np.empty((n_rows, len(columns)), dtype="<f4")
        index, block = self._index(data), self._block()
        inner = columns // self.inner_width
        for i in np.unique(inner):
            self._decode_inner_chunk(data, index[i], block)
            here = inner == i
            out[:, here] = block[:n_rows, columns[here] - i * self.inner_width]
        return out

    def _decode_inner_chunk(self, data: bytes | Ranges | None, entry: tuple[int, int], block: np.ndarray) -> None:
        offset, length = entry
        if offset == MISSING and length == MISSING:
            block.fill(self.fill_value)
            return
        assert data is not None  # a shard never written has only missing chunks (its index says so)
        try:
            self.zstd.decode(data[offset : offset + length], out=block)
        except RuntimeError as exc:  # numcodecs' zstd: a bad frame or checksum
            raise ShardDamaged(str(exc)) from None

    def _index(self, data: bytes | Ranges | None) -> list[tuple[int, int]]:
        """(offset, length) of every inner chunk, from the CRC32C-checked index at the shard's end."""
        n_inner = self.width // self.inner_width
        if data is None:
            return [(MISSING, MISSING)] * n_inner
        size = 16 * n_inner + 4
        if len(data) < size:
            raise ShardDamaged(f"a shard of {len(data)} bytes is too short for its index of {size} bytes")
        tail = bytes(data[-size:])  # one read: the index, then its checksum
        stored, computed = tail[-4:], _checksum(tail[:-4])
        if stored != computed:
            raise ShardDamaged(
                f"the shard index's CRC32C checksum does not match (stored {stored.hex()}, computed {computed.hex()})"
            )
        index = np.frombuffer(tail[:-4], dtype="<u8").reshape(n_inner, 2)
        return [(int(offset), int(length)) for offset, length in index]

    def _block(self) -> np.ndarray:
        # one contiguous buffer per thread, reused: a fresh 4 MiB array per chunk costs its page faults
        block = getattr(self._buffers, "block", None)
        if block is None:
            block = self._buffers.block = np.empty((self.shard_rows, self.inner_width), dtype="<f4")
        return block

    def _encode_inner_chunk(self, rows: np.ndarray, start: int) -> bytes:
        block = self._block()
        n_rows = rows.shape[0]
        block[:n_rows] = rows[:, start : start + self.inner_width]
        block[n_rows:] = self.fill_value  # rows past the array's last fragment hold the fill value, as zarr writes
        return self.zstd.encode(block)


def _checksum(data: bytes) -> bytes:
    return crc32c(data).to_bytes(4, "little")


def _is_little_endian_bytes(codec: dict) -> bool:
    return codec.get("name") == "bytes" and codec.get("configuration", {}).get("endian") == "little"


def _float(fill_value: object) -> float | None:
    """A zarr.json fill value of a float array as a float ("NaN", "Infinity", numbers); None for other forms."""
    if isinstance(fill_value, (int, float)) or fill_value in ("NaN", "Infinity", "-Infinity"):
        return float(fill_value)
    return None


@dataclass(frozen=True)
class ChunkLayout:
    """Where a Zarr v3 array keeps its data, as its zarr.json says: shape, data type, the chunk grid (shards, for a
    sharded array), the chunks inside a shard, and the file of each grid cell."""

    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...]
    inner_chunks: tuple[int, ...]  # = chunks for an array without sharding
    key_encoding: str  # "default" (`c/1/2`) or "v2" (`1.2`)
    separator: str
    codecs: tuple[dict, ...]  # as zarr.json lists them
    fill_value: object  # as zarr.json writes it

    @classmethod
    def read(cls, path: Path) -> ChunkLayout:
        """The layout of the array at path (OSError, ValueError, KeyError or TypeError for a broken zarr.json)."""
        return cls.parse((Path(path) / "zarr.json").read_bytes(), path)

    @classmethod
    def parse(cls, metadata: bytes, path: Path | str) -> ChunkLayout:
        """The layout of the array at path whose zarr.json holds metadata (ValueError, KeyError or TypeError if it is
        broken)."""
        meta = json.loads(metadata)
        if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
            raise ValueError(f"{path} is no Zarr v3 array")
        chunks = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
        codecs = tuple(meta.get("codecs") or ())
        sharded = bool(codecs) and codecs[0].get("name") == "sharding_indexed"
        encoding = meta["chunk_key_encoding"]
        name = encoding["name"]
        if name not in ("default", "v2"):
            raise ValueError(f"unknown chunk key encoding {name!r}")
        separator = encoding.get("configuration", {}).get("separator", "/" if name == "default" else ".")
        return cls(
            tuple(meta["shape"]),
            np.dtype(meta["data_type"]),
            chunks,
            tuple(codecs[0]["configuration"]["chunk_shape"]) if sharded else chunks,
            name,
            separator,
            codecs,
            meta.get("fill_value"),
        )

    def chunk_key(self, coords: tuple[int, ...]) -> str:
        """The path, relative to the array, of the chunk (or shard) at grid coordinates coords."""
        parts = [str(i) for i in coords]
        if self.key_encoding == "default":
            return self.separator.join(["c", *parts])
        return self.separator.join(parts) or "0"


class ChunkFiles:
    """A new zarr array (zstd level 1) whose chunks are written and read straight from their files, whole chunks at a
    time; picklable, so that dask workers can write chunks of it."""

    def __init__(self, path: Path, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: np.dtype):
        import zarr
        from zarr.codecs import ZstdCodec

        zarr.create_array(
            str(path),
            shape=shape,
            chunks=chunks,
            dtype=dtype,
            fill_value=0,
            compressors=ZstdCodec(level=1, checksum=False),
        )
        self._attach(path)

    @classmethod
    def existing(cls, path: Path) -> ChunkFiles:
        """The array that a ChunkFiles wrote at path before."""
        files = cls.__new__(cls)
        files._attach(path)
        return files

    def _attach(self, path: Path) -> None:
        from numcodecs import Zstd

        self.path, self.layout = Path(path), ChunkLayout.read(path)
        self.shape, self.chunks = self.layout.shape, self.layout.chunks
        self.dtype = self.layout.dtype.newbyteorder("<")
        self.zstd = Zstd(level=1, checksum=False)

    def __setitem__(self, region: tuple[slice, ...], values: np.ndarray) -> None:
        """Write the values at region, which covers whole chunks (or the parts of edge chunks inside the array)."""
        region = self._region(region)
        for coords, place in self._chunks_in(region):
            block = values[place]
            if block.shape != self.chunks:  # zarr stores edge chunks whole, the part outside the array as fill value
                padded = np.zeros(self.chunks, dtype=block.dtype)
                padded[tuple(slice(0, n) for n in block.shape)] = block
                block = padded
            file = self._file(coords)
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(self.zstd.encode(np.ascontiguousarray(block, dtype=self.dtype)))

    def __getitem__(self, region: tuple[slice, ...]) -> np.ndarray:
        """The values at region, which starts at a chunk edge."""
        region = self._region(region)
        out = np.empty(tuple(s.stop - s.start for s in region), dtype=self.dtype)
        for place, block in self.blocks(region):
            out[place] = block
        return out

    def blocks(self, region: tuple[slice, ...]) -> Iterator[tuple[tuple[slice, ...], np.ndarray]]:
        """Each chunk's part of region (which starts at a chunk edge), and where that part lies within the region, in
        the chunks' C order, without copying them into one array."""
        region = self._region(region)
        for coords, place in self._chunks_in(region):
            yield place, self._read_chunk(coords)[tuple(slice(0, p.stop - p.start) for p in place)]

    def _read_chunk(self, coords: tuple[int, ...]) -> np.ndarray:
        file = self._file(coords)
        try:
            block = np.frombuffer(self.zstd.decode(file.read_bytes()), dtype=self.dtype)
            return block.reshape(self.chunks)
        except FileNotFoundError:
            raise ShardDamaged(f"chunk file {file} is missing") from None
        except (OSError, RuntimeError, ValueError) as exc:  # numcodecs' zstd: a bad frame; a wrong decoded size
            raise ShardDamaged(f"chunk file {file} does not decode ({type(exc).__name__}: {exc})") from None

    def _chunks_in(self, region: tuple[slice, ...]):
        """Each chunk that region (starting at a chunk edge) touches, and where its part lies within the region."""
        ranges = [range(s.start // c, -(-s.stop // c)) for s, c in zip(region, self.chunks)]
        for coords in itertools.product(*ranges):
            yield (
                coords,
                tuple(
                    slice(i * c - s.start, min((i + 1) * c, s.stop) - s.start)
                    for i, c, s in zip(coords, self.chunks, region)
                ),
            )

    def _region(self, region: tuple[slice, ...]) -> tuple[slice, ...]:
        return tuple(slice(*s.indices(n)[:2]) for s, n in zip(region, self.shape))

    def _file(self, coords: tuple[int, ...]) -> Path:
        return self.path / self.layout.chunk_key(coords)


def chunk_file_count(path: Path) -> int:
    """How many chunk files the array at path (a ChunkFiles) has on disk, without importing numcodecs."""
    return sum(len(files) for _, _, files in os.walk(path)) - 1  # less zarr.json
