"""The Zarr store layout: one `activations[config, fragment, feature]` array, coordinates, completion marks."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from saezarr.compat import fill_value_encoding, settle_layout, writing_empty_chunks
from saezarr.durable import folders
from saezarr.durable.folders import TEMP_SUFFIX
from saezarr.errors import (
    InputError,
    OutputExists,
    ResumeMismatch,
    SaezarrError,
    StoreDamaged,
    StoreNotFound,
    WriteFailed,
    call,
    option,
)
from saezarr.inputs.configs import SAEConfig
from saezarr.store import DEFAULT_CHUNK_FRAGMENTS
from saezarr.store.residual_arrays import (
    RESIDUAL_UNIT,
    KeptSite,
    ResidualArrays,
    add_residual_arrays,
    kept_residuals,
    write_consolidated,
)
from saezarr.store.shards import ChunkLayout, ShardDamaged, ShardEncoder
from saezarr.store.storage import STORAGES, Location, Storage, as_location, open_storage
from saezarr.store.storage.base import ObjectStat, Ranges, WriterLock

if TYPE_CHECKING:
    import pandas as pd
    import zarr
    from zarr.storage import StorePath

    from saezarr.store.zarr_adapter import StorageStore

ACTIVATIONS = "activations"
STATE_GROUP = "_saezarr"
DEFAULT_FEATURE_CHUNK = 2048
UNIT_BYTES = 64 * 2**20  # a unit's float32 latents at most, by default, for SAEs wider than 32k (16k: 32 MiB)
MIN_UNIT_FRAGMENTS = 128  # but no fewer: BLAS packs all of W_enc per unit, a cost per row of 1/fragments (1m: 512 MiB)
STAGING_SUFFIX = ".creating"
MARKS = f"{STATE_GROUP}/done"  # a unit's completion mark: `MARKS/CONFIG/CHUNK`, an empty object
LOCK = f"{STATE_GROUP}/lock"  # the writer lock's record
CREATING = f"{STATE_GROUP}/creating"  # in a key-value storage, there while a store is being created
EXTEND_RECORD = "extend.json"  # in _saezarr/: what an extension keeps of the store's last partial chunk
WIDTHS = "widths"  # root attribute: each config's SAE width (absent in stores of one width from older versions)
STORE_ID = "store_id"  # root attribute: a random id, new on each create or overwrite (or extend) of a store
ZSTD_LEVEL = 1  # on SAE latents level 1 is both smaller and faster than 3 (USAGE.md)
# fields a resumed build must share with the build that started the store
RESUME_FIELDS = (
    "input_sha256",
    "configs",
    "model",
    "model_revision",
    "sae_repo",
    "sae_revision",
    "model_dtype",
    "fragments",
    "tokens_sha256",
)
FIELD_NAMES = {"tokens_sha256": "tokenization (sha256 of the token ids and fragment positions)"}


class Store:
    """An open saezarr store: its layout, and the completion marks of its (config, fragment-chunk) units.

    The layout and codecs come from the activations' zarr.json: shards in saezarr's layout are read and written
    without zarr, which opens the array on first use of `array` (or of a shard in another layout)."""

    def __init__(self, path: str | Path, mode: str = "r"):
        self.path: Location = as_location(path)
        self.mode = mode
        self.storage = open_storage(self.path)
        self.attrs = read_attrs(self.storage)
        self.layout = ChunkLayout.parse(self.storage.get(f"{ACTIVATIONS}/zarr.json"), f"{self.path}/{ACTIVATIONS}")
        self.shape = self.n_configs, self.n_fragments, self.width = self.layout.shape
        self.dtype = self.layout.dtype
        self.chunk_fragments = self.layout.chunks[1]  # fragments per shard (or chunk, without sharding)
        self.n_chunks = -(-self.n_fragments // self.chunk_fragments)
        self.config_names: list[str] = list(self.attrs["configs"])
        self.feature_chunk = self.layout.inner_chunks[2]  # features per (inner) chunk
        self.shard_width = self.layout.chunks[2]  # features per shard: a wider SAE's unit spans several shards
        # each config's SAE width; the feature axis is the widest, and a narrower SAE's features past its width are NaN
        self.widths = np.array(self.attrs.get(WIDTHS) or [self.width] * self.n_configs, dtype=np.int64)
        self._listing: dict[str, ObjectStat] | None = (
            None  # done_matrix's, while this process has written nothing since
        )

    @functools.cached_property
    def identity(self) -> str:
        """Which store this is: its store_id, new whenever a store is created (or renewed) at this path."""
        return self.attrs.get(STORE_ID) or _legacy_identity(self.path)

    @functools.cached_property
    def array(self) -> zarr.Array:
        """The activations array, opened with zarr (a one-line error if zarr cannot open it)."""
        import zarr

        try:
            array = zarr.open_array(self.zarr_location(ACTIVATIONS), mode=self.mode)
        except (OSError, ValueError, KeyError, TypeError, zarr.errors.BaseZarrError) as exc:
            raise StoreDamaged(f"{self.path}: {array_unreadable(exc)}") from None
        # every unit is written whole, so zarr need not test chunks for being all fill value
        return writing_empty_chunks(array)

    @functools.cached_property
    def residuals(self) -> ResidualArrays | None:
        """The store's residual stream arrays, or None if it keeps none."""
        return ResidualArrays.open(self.path, self.storage)

    @functools.cached_property
    def extend_record(self) -> dict | None:
        """The record of an extension still in progress (`kept_fragments`, `kept_configs`), or None."""
        try:
            return json.loads(self.storage.get(f"{STATE_GROUP}/{EXTEND_RECORD}"))
        except KeyError:
            return None

    def kept_rows(self, config_index: int, chunk: int) -> int:
        """Leading rows of a unit that an extension keeps from its shard as they were (0: none)."""
        record = self.extend_record
        if record is None or config_index >= record["kept_configs"]:
            return 0
        start, _ = self.chunk_bounds(chunk)
        return max(0, min(record["kept_fragments"] - start, self.chunk_size(chunk)))

    def residual_rows_stored(self, chunk: int, done: np.ndarray | None = None) -> int:
        """How many leading rows of a chunk have their residuals in the store (its unit done, or kept by an
        extension); `done` is the residual units' completion, read if not given."""
        if self.residuals is None:
            return 0
        done = self.residuals.done() if done is None else done
        if done[chunk]:
            return self.chunk_size(chunk)
        record = self.extend_record
        start, _ = self.chunk_bounds(chunk)
        kept = 0 if record is None else record["kept_fragments"]
        return max(0, min(kept - start, self.chunk_size(chunk)))

    def pending_residuals(self) -> np.ndarray:
        """The chunks whose residual unit is still to write (none without residuals)."""
        return np.array([], dtype=np.int64) if self.residuals is None else np.flatnonzero(~self.residuals.done())

    @functools.cached_property
    def _shard_encoder(self) -> ShardEncoder | None:
        return ShardEncoder.for_layout(self.layout)

    def coordinate(self, name: str) -> np.ndarray:
        """One coordinate of the store, e.g. `sentence_index` or `layer`, read whole (strings as numpy StringDType)."""
        import zarr

        return zarr.open_array(self.zarr_location(name, read_only=True), mode="r")[...]  # type: ignore[return-value]  # zarr: [...] of an N-d array is an ndarray

    def zarr_location(self, name: str = "", read_only: bool | None = None) -> Path | StorePath | StorageStore:
        """Where zarr opens the node `name` of this store ('': its root): by path if local, else through its storage."""
        from saezarr.store.zarr_adapter import zarr_location

        return zarr_location(self.storage, name, self.mode == "r" if read_only is None else read_only)

    def has_coordinate(self, name: str) -> bool:
        """True if the store has the coordinate (stores built by older saezarr versions lack some)."""
        return self.storage.exists(f"{name}/zarr.json")

    def chunk_bounds(self, chunk: int) -> tuple[int, int]:
        """Fragment index range [start, stop) of a fragment chunk."""
        start = chunk * self.chunk_fragments
        return start, min(start + self.chunk_fragments, self.n_fragments)

    def chunk_size(self, chunk: int) -> int:
        """Number of fragments in a fragment chunk."""
        start, stop = self.chunk_bounds(chunk)
        return stop - start

    def _mark(self, config_index: int, chunk: int) -> str:
        """The key of a unit's completion mark."""
        return f"{MARKS}/{self.config_names[config_index]}/{chunk}"

    def shard_keys(self, config_index: int, chunk: int) -> list[str]:
        """The storage keys that hold one unit's latents (there once written): one shard per `shard_width`
        features."""
        n_shards = -(-int(self.widths[config_index]) // self.shard_width)
        return [self._shard_key(config_index, chunk, s) for s in range(n_shards)]

    def shard_files(self, config_index: int, chunk: int) -> list[Path]:
        """The files of `shard_keys` (a store on the local file system)."""
        return [local_folder(self.storage) / key for key in self.shard_keys(config_index, chunk)]

    def _shard_key(self, config_index: int, chunk: int, shard: int) -> str:
        return f"{ACTIVATIONS}/{self.layout.chunk_key((config_index, chunk, shard))}"

    def is_done(self, config_index: int, chunk: int) -> bool:
        """True if the unit is marked complete and the data file it marks is there."""
        return self.storage.exists(self._mark(config_index, chunk)) and self.shard_written(config_index, chunk)

    def shard_written(self, config_index: int, chunk: int) -> bool:
        """True if the unit's shard file (RESIDUAL_UNIT: each of the chunk's residual files) is there and not empty
        (marked or not)."""
        keys = (
            kept_residuals(self).keys(chunk) if config_index == RESIDUAL_UNIT else self.shard_keys(config_index, chunk)
        )
        return all(_size(self.storage, key) > 0 for key in keys)

    def done_matrix(self) -> np.ndarray:
        """Completion of every (config, chunk) unit, as a boolean [n_configs, n_chunks] array."""
        done = np.zeros((self.n_configs, self.n_chunks), dtype=bool)
        index = {name: ci for ci, name in enumerate(self.config_names)}
        listed = self._listing = self.stats("")  # one listing: the marks and their shards, no request per unit
        for key in (key for key in listed if key.startswith(f"{MARKS}/")):
            name, _, chunk = key.removeprefix(f"{MARKS}/").rpartition("/")
            if name in index and chunk.isdigit() and int(chunk) < self.n_chunks:
                keys = self.shard_keys(index[name], int(chunk))
                done[index[name], int(chunk)] = all(key in listed and listed[key].size > 0 for key in keys)
        return done

    def stats(self, prefix: str) -> dict[str, ObjectStat]:
        """Each object's size and time of writing, by key, for the keys that start with prefix: from the storage's
        listing, or where it cannot list (a store published over HTTP), from asking for each key this store can
        have."""
        if self.storage.can_list:
            return self.storage.stats(prefix)
        found = {}
        for key in self._possible_keys():
            if key.startswith(prefix):
                with contextlib.suppress(KeyError):
                    found[key] = self.storage.stat(key)
        return found

    def _possible_keys(self) -> Iterator[str]:
        """Every completion mark and shard this store can have (and each array's metadata), whether written or not."""
        yield "zarr.json"
        for name in json.loads(self.storage.get("zarr.json")).get("consolidated_metadata", {}).get("metadata", {}):
            yield f"{name}/zarr.json"
        for ci in range(self.n_configs):
            for chunk in range(self.n_chunks):
                yield self._mark(ci, chunk)
                yield from self.shard_keys(ci, chunk)
        if self.residuals is not None:
            for chunk in range(self.n_chunks):
                yield f"{self.residuals.marks_prefix}{chunk}"
                yield from self.residuals.keys(chunk)

    def newest_mark_ns(self, config_indices: Sequence[int], residuals: bool = False) -> int:
        """When the latest of the configs' completion marks (and the residual units', with `residuals`) was written
        (ns; 0: none is): a store rebuilt after an export has newer marks than the export."""
        prefixes = [f"{MARKS}/{self.config_names[ci]}/" for ci in config_indices]
        if residuals and self.residuals is not None:
            prefixes.append(self.residuals.marks_prefix)
        return max((found.modified_ns for prefix in prefixes for found in self.stats(prefix).values()), default=0)

    def read_chunk(
        self, config_index: int, chunk: int, reduce: Callable[[np.ndarray], np.ndarray], features: slice = slice(None)
    ) -> np.ndarray:
        """`reduce` of one unit's latents [fragment, feature] (of a range of features, or all of its SAE's), applied to
        column blocks (it must act on rows alone)."""
        start, stop = self.chunk_bounds(chunk)
        first, last, _ = features.indices(int(self.widths[config_index]))
        if self._shard_encoder is None:
            return reduce(self.array[config_index, start:stop, first:last])  # type: ignore[arg-type]  # zarr: an ndarray
        parts = []
        for shard in range(first // self.shard_width, -(-last // self.shard_width)):
            offset = shard * self.shard_width
            low, high = max(first, offset) - offset, min(last, offset + self.shard_width) - offset
            inner = range(low // self.feature_chunk, -(-high // self.feature_chunk))
            # decoding the shard here runs at the codec's speed on the caller's thread, no event loop in between
            with self._shard(config_index, chunk, shard) as data:
                try:
                    block = self._shard_encoder.decode(data, stop - start, reduce, inner)
                except ShardDamaged as exc:
                    raise self.unreadable(config_index, chunk, exc) from None
            skip = low - inner.start * self.feature_chunk
            parts.append(block[:, skip : skip + high - low] if block.shape[1] != high - low else block)
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def read_columns(self, config_index: int, chunk: int, features: np.ndarray) -> np.ndarray:
        """One unit's latents [fragment, len(features)] of some features."""
        start, stop = self.chunk_bounds(chunk)
        if self._shard_encoder is None:
            return self.array.get_orthogonal_selection((config_index, slice(start, stop), features))  # type: ignore[return-value]  # zarr: [...] of an N-d array is an ndarray
        features = np.asarray(features, dtype=np.int64)
        out = np.empty((stop - start, len(features)), dtype="<f4")
        shards = features // self.shard_width
        for shard in np.unique(shards):
            here = shards == shard
            with self._shard(config_index, chunk, int(shard)) as data:
                try:
                    out[:, here] = self._shard_encoder.decode_columns(
                        data, stop - start, features[here] - shard * self.shard_width
                    )
                except ShardDamaged as exc:
                    raise self.unreadable(config_index, chunk, exc) from None
        return out

    def unreadable(self, config_index: int, chunk: int, exc: Exception) -> StoreDamaged:
        """The one-line error for a unit whose data cannot be read back."""
        return StoreDamaged(
            f"{self.path}: cannot read chunk {chunk} of {self.config_names[config_index]} ({type(exc).__name__}: "
            f"{exc}); the store may be damaged; rebuild it with `{call('build', 'overwrite')}`",
            exit_code=1,
        )

    @contextlib.contextmanager
    def _shard(self, config_index: int, chunk: int, shard: int) -> Iterator[Ranges | None]:
        """One of the unit's shard files, read in parts: a unit of analysis reads one inner chunk of it, not all."""
        with contextlib.ExitStack() as stack:
            try:
                ranges = stack.enter_context(self.storage.reader(self._shard_key(config_index, chunk, shard)))
            except KeyError:
                ranges = None  # never written: zarr reads it as the fill value
            yield ranges

    def write_shard(self, config_index: int, chunk: int, latents: np.ndarray) -> None:
        """Write one unit's latents durably, without marking it: any process may do this, the writer marks."""
        expected = (self.chunk_size(chunk), int(self.widths[config_index]))
        if latents.shape != expected:
            raise ValueError(f"unit ({config_index}, {chunk}) takes latents of shape {expected}, got {latents.shape}")
        keys = self.shard_keys(config_index, chunk)
        data = [self._encode_shard(config_index, chunk, shard, latents) for shard in range(len(keys))]
        refuse_if_replaced(self.path, self.identity)  # a task that began before the store was replaced stops here
        self._listing = None
        for key, content in zip(keys, data):
            self.storage.put(key, content)

    def _encode_shard(self, config_index: int, chunk: int, shard: int, latents: np.ndarray) -> bytes:
        """One shard's bytes: its `shard_width` columns of the unit's latents, NaN past the SAE's width."""
        columns = latents[:, shard * self.shard_width : (shard + 1) * self.shard_width]
        if columns.shape[1] < self.shard_width:
            columns = np.pad(columns, ((0, 0), (0, self.shard_width - columns.shape[1])), constant_values=np.nan)
        if self._shard_encoder is not None:
            # zarr's array API merges each inner chunk into a fill-value buffer on one event-loop thread;
            # encoding the whole shard here runs at the codec's speed on every writer thread
            return b"".join(self._shard_encoder.encode(columns))
        return self._encode_with_zarr(config_index, chunk, shard, columns)

    def mark_done(self, config_index: int, chunk: int) -> None:
        """Mark a unit complete (RESIDUAL_UNIT: a chunk's residuals); only once its files are durable."""
        self._listing = None
        if config_index == RESIDUAL_UNIT:
            kept_residuals(self).mark_done(chunk)
            return
        self.storage.touch(self._mark(config_index, chunk))

    def _encode_with_zarr(self, config_index: int, chunk: int, shard: int, columns: np.ndarray) -> bytes:
        """One shard's bytes as zarr's array API encodes them, written to a scratch in-memory copy of the array."""
        import zarr
        from zarr.core.buffer import default_buffer_prototype
        from zarr.storage import MemoryStore

        scratch: dict = {}
        metadata = self.storage.get(f"{ACTIVATIONS}/zarr.json")
        scratch["zarr.json"] = default_buffer_prototype().buffer.from_bytes(metadata)
        array = writing_empty_chunks(zarr.open_array(MemoryStore(scratch), mode="r+"))
        start, stop = self.chunk_bounds(chunk)
        first = shard * self.shard_width
        last = min(first + self.shard_width, self.width)
        array[config_index, start:stop, first:last] = columns[:, : last - first]
        return scratch[array.metadata.encode_chunk_key((config_index, chunk, shard))].to_bytes()

    def discard_partial_writes(self) -> None:
        """Delete the temporary files of writes that a killed build left (saezarr's and zarr's); a storage other
        than a folder writes each object whole and leaves none."""
        if self.storage.folder is None:
            return
        for pattern in ("*.partial", f".*{TEMP_SUFFIX}"):
            for array in (ACTIVATIONS, *(self.residuals.arrays if self.residuals is not None else ())):
                for path in (self.storage.folder / array).rglob(pattern):
                    path.unlink(missing_ok=True)

    def lock(self) -> WriterLock:
        """The store's writer lock (not yet acquired)."""
        return self.storage.lock(LOCK)

    def bytes_on_disk(self, name: str = "") -> int:
        """Total size of the store's objects (of those below the node `name` only, if given)."""
        folder = self.storage.folder
        if folder is not None:
            return directory_bytes(folder / name if name else folder)
        # a resume that found every unit done lists the store once, not twice
        listed = self._listing if self._listing is not None and not name else self.stats(f"{name}/" if name else "")
        return sum(found.size for found in listed.values())


def directory_bytes(path: Path) -> int:
    """Total size of the files below a folder (one that a build is writing into too)."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # a shard's temporary file, renamed meanwhile
                total += os.stat(os.path.join(folder, name)).st_size
    return total


def read_saezarr_attrs(path: str | Path) -> dict:
    """The store's root attributes, or an error if the folder is not a saezarr store."""
    return read_attrs(open_storage(path))


def read_attrs(storage: Storage) -> dict:
    """The root attributes of the store in storage, or an error if it holds no saezarr store."""
    try:
        attrs = json.loads(storage.get("zarr.json")).get("attributes", {})
    except SaezarrError:  # a storage that cannot be reached: not a store that is missing
        raise
    except (OSError, ValueError, KeyError):
        attrs = {}
    if "saezarr_version" not in attrs:
        raise StoreNotFound(f"{storage.location}: not a saezarr store (no saezarr attributes in zarr.json)")
    return attrs


def _size(storage: Storage, key: str) -> int:
    """The object's size, 0 if there is none."""
    try:
        return storage.stat(key).size
    except KeyError:
        return 0


def store_identity(path: str | Path) -> str:
    """The identity of the store at path as it is on disk now (see `Store.identity`)."""
    return read_saezarr_attrs(path).get(STORE_ID) or _legacy_identity(Path(path))


def refuse_if_replaced(path: str | Path, identity: str) -> None:
    """Refuse in one line when the store at path is no longer the store of this identity (replaced or grown)."""
    on_disk = store_identity(path)
    if on_disk != identity:
        raise SaezarrError(
            f"{path}: the store there was replaced (store_id {on_disk}) since this work was planned for store_id "
            f"{identity}; none of its units was marked done: rerun the command against the store as it is now"
        )


def _legacy_identity(path: str | Path) -> str:
    # a store from before store_id: its activations' metadata file, written anew whenever a store is created
    stat = (Path(path) / ACTIVATIONS / "zarr.json").stat()
    return f"legacy-{stat.st_ino}-{stat.st_mtime_ns}-{stat.st_size}"


def check_output_path(location: Location) -> bool:
    """Return whether a saezarr store already exists at location; refuse files, foreign folders and URLs of schemes
    that no registered storage handles."""
    location = as_location(location)
    if isinstance(location, str):
        scheme = location.partition("://")[0]
        if scheme not in STORAGES:
            raise InputError(
                f"{option('output', location)}: no storage handles {scheme}:// URLs (known: "
                f"{', '.join(name for name in STORAGES if name != 'file')}, or a path)"
            )
        return _check_output_storage(location)
    path = location
    if path.is_file() or (path.exists() and not path.is_dir()):
        raise InputError(f"{option('output', path)}: is a file, not a store folder")
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return False
    try:
        read_saezarr_attrs(path)
    except SaezarrError as exc:
        raise OutputExists(f"{option('output', exc)}; refusing to touch it") from None
    return True


def _check_output_storage(path: str) -> bool:
    """Return whether a saezarr store exists in the (non-local) storage at path; refuse one holding other objects,
    a read-only one, and one that cannot be reached."""
    try:
        storage = open_storage(path)
        if storage.read_only:
            raise InputError(
                f"{path}: a read-only store (published over {path.partition(':')[0]}); build writes to a "
                "path or to an object store (s3://, gs://, az://)"
            )
        try:
            storage.get("zarr.json")  # one request, where there is a store: read again below
        except KeyError:
            others = [key for key in storage.list_prefix("") if key != LOCK]
            if not others or CREATING in others:  # nothing, or a store that saezarr began to create
                return False
    except InputError as exc:
        raise InputError(option("output", exc.message)) from None
    try:
        read_attrs(storage)
    except SaezarrError as exc:
        raise OutputExists(f"{option('output', exc)}; refusing to touch it") from None
    return True


def check_conditional_writes(location: Location, unsafe: bool = False) -> None:
    """Refuse a store in a key-value storage that ignores conditional writes, on which the lock could let a second
    writer in (unless `unsafe`): a probe object is created twice with put-if-absent, and the second must fail."""
    storage = open_storage(location)
    if storage.folder is not None or unsafe:
        return
    probe = f"{STATE_GROUP}/.conditional-write-probe-{uuid.uuid4().hex}"  # '.': never listed
    try:
        honoured = storage.put_if_absent(probe, b"first") and not storage.put_if_absent(probe, b"second")
    finally:
        storage.delete(probe)
    if not honoured:
        raise InputError(
            f"{option('output', location)}: this object store ignores conditional writes (If-None-Match), so the "
            f"store's lock cannot keep a second build out; use {option('unsafe_lock', True)} to build anyway, one "
            "build at a time"
        )


def check_resume(path: Location, attrs: dict, configs: Sequence[SAEConfig] = ()) -> None:
    """Refuse to resume a store started with a different input, config selection, model, SAEs, tokens or options, or
    one that an extension has begun to grow."""
    try:
        open_storage(path).get(f"{STATE_GROUP}/{EXTEND_RECORD}")
        extending = True
    except KeyError:
        extending = False
    if extending:
        raise ResumeMismatch(
            f"{option('resume', True)} {path}: an extension of the store (build {option('extend')}) is in progress; "
            f"rerun that same {option('extend')} command to finish it"
        )
    stored = read_saezarr_attrs(path)
    for field in RESUME_FIELDS:
        name = FIELD_NAMES.get(field, field.replace("_", " "))
        if field not in stored and field in attrs:
            # a store from before the field was recorded: resuming it could mix what the field now guards
            raise ResumeMismatch(
                f"{option('resume', True)} {path}: the store records no {name}: an older saezarr "
                f"({stored.get('saezarr_version')}) started it, so this resume could not be checked against it; "
                f"finish it with that saezarr or use {option('overwrite', True)} to start over"
            )
        if stored.get(field) != attrs.get(field):
            raise ResumeMismatch(
                f"{option('resume', True)} {path}: the store was started with a different {name} "
                f"({_brief(stored.get(field))}, now {_brief(attrs.get(field))}); use {option('overwrite', True)} to "
                "start over"
            )
    stored_paths = dict(zip(stored["configs"], _stored_sae_paths(path)))
    for config in configs:
        if stored_paths.get(config.name, config.path) != config.path:
            raise ResumeMismatch(
                f"{option('resume', True)} {path}: the store was started with a different SAE path for config {config.name} "
                f"({_brief(stored_paths[config.name])}, now {_brief(config.path)}); use {option('overwrite', True)} "
                "to start over"
            )


def _stored_sae_paths(path: Location) -> list[str]:
    """The store's `sae_path` coordinate, one per config."""
    import zarr

    from saezarr.store.zarr_adapter import zarr_location

    try:
        return [
            str(value)
            for value in zarr.open_array(zarr_location(open_storage(path), "sae_path", True), mode="r")[:]  # type: ignore[union-attr]  # zarr: [:] is an ndarray
        ]
    except (OSError, ValueError, KeyError, zarr.errors.BaseZarrError) as exc:
        raise StoreDamaged(
            f"{option('resume', True)} {path}: the store is damaged and cannot be resumed (its sae_path coordinate: "
            f"{type(exc).__name__}: {exc}); rebuild it with {option('overwrite', True)}"
        ) from None


def _brief(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def create_store(
    path: Location,
    fragments: pd.DataFrame,
    configs: Sequence[SAEConfig],
    widths: int | Sequence[int],
    attrs: dict,
    chunk_fragments: int = DEFAULT_CHUNK_FRAGMENTS,
    replace: bool = False,
    residual_layers: Sequence[int] | None = None,
    hidden_size: int | None = None,
    residual_sites: Sequence[KeptSite] = (),
) -> Store:
    """Create the store with its coordinates and unwritten activations (and, with `residual_layers`, residuals and
    embeddings of `hidden_size` and the `residual_sites` kept) arrays, atomically; `widths` are each config's SAE
    width (an int: all)."""
    widths = [widths] * len(configs) if isinstance(widths, int) else list(widths)
    attrs = {**attrs, STORE_ID: uuid.uuid4().hex}

    def write(root: Path) -> None:
        _write_layout(root, fragments, configs, widths, attrs, chunk_fragments, shard_width=min(widths))
        if residual_layers is not None:
            assert hidden_size is not None  # the residuals' width comes with their layers
            add_residual_arrays(
                root, list(residual_layers), hidden_size, len(fragments), chunk_fragments, sites=residual_sites
            )
            write_consolidated(open_storage(root))

    storage = open_storage(path)
    if storage.folder is None:
        _create_in_storage(storage, write, replace)
    else:
        _create_in_folder(Path(path), write, replace)
    return Store(path, mode="r+")


def _create_in_folder(path: Path, write: Callable[[Path], None], replace: bool) -> None:
    """Write a store into a staging folder beside path, then rename it into place (`replace`: swap it in)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = folders.make_staging(path, STAGING_SUFFIX)
    try:
        write(staging)
        if replace:
            folders.swap_into_place(staging, path)
        else:
            os.rename(staging, path)
    except OSError as exc:
        raise WriteFailed(
            f"{option('output', path)}: could not create the store ({exc.strerror or exc})", exit_code=1
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _create_in_storage(storage: Storage, write: Callable[[Path], None], replace: bool) -> None:
    """Write a store into a scratch folder, then put its files into a key-value storage, the root zarr.json last:
    until that is in there is no store, as a folder's rename does. `replace` (or a store half-created by a killed
    build, which the CREATING mark tells): the old objects (but the lock) go first, the root before the rest."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="saezarr-create-") as scratch:
        write(Path(scratch) / "store")
        half_created = storage.exists(CREATING)
        storage.put(CREATING, b"")  # until the root is in, what is here is saezarr's, to replace on a rerun
        if replace or half_created:
            storage.delete("zarr.json")
            for key in list(storage.list_prefix("")):
                if key not in (LOCK, CREATING):
                    storage.delete(key)
        copy_objects(open_storage(Path(scratch) / "store"), storage, last="zarr.json")
        storage.delete(CREATING)


def copy_objects(source: Storage, target: Storage, into: str = "", last: str | None = None) -> None:
    """Put every object of source into target, its key prefixed by `into`, the key `last` after the others."""
    for key in source.list_prefix(""):
        if key != last:
            target.put(f"{into}{key}", source.get(key))
    if last is not None:
        target.put(f"{into}{last}", source.get(last))


def local_folder(storage: Storage) -> Path:
    """The folder of a storage on the local file system (what only such stores have, e.g. chunk files by path)."""
    if storage.folder is None:
        raise AssertionError(f"{storage.location}: not a store on the local file system")
    return storage.folder


def store_lock(path: Location) -> WriterLock:
    """The writer lock of the store at path (not yet acquired), usable even if the store is damaged."""
    return open_storage(path).lock(LOCK)


def open_for_resume(path: Location) -> Store:
    """Open an existing store for writing, or say in one line that it is too damaged to resume."""
    try:
        store = Store(path, mode="r+")
        _ = store.array  # opened now: a resume should stop before it computes anything
        return store
    except (OSError, ValueError, KeyError, TypeError, SaezarrError) as exc:
        reason = exc.message.removeprefix(f"{path}: ") if isinstance(exc, SaezarrError) else array_unreadable(exc)
        raise StoreDamaged(
            f"{option('resume', True)} {path}: the store is damaged and cannot be resumed ({reason}); rebuild it with "
            f"{option('overwrite', True)}"
        ) from None


def array_unreadable(exc: Exception) -> str:
    """Why the activations array cannot be read, for one-line errors."""
    return f"cannot read the store's {ACTIVATIONS} array ({type(exc).__name__}: {exc})"


def remove_stale_staging(path: Location) -> None:
    """Delete this output's half-created stores (`.NAME.PID.RANDOM.creating`) whose creating process is gone (a
    key-value storage has none: its stores are created in place)."""
    folder = open_storage(path).folder
    if folder is not None:
        folders.remove_stale_staging(folder, STAGING_SUFFIX)


def _write_layout(
    path: Path, fragments: pd.DataFrame, configs, widths: Sequence[int], attrs, chunk_fragments, shard_width: int
) -> None:
    """A new store's arrays and coordinates at path: a feature axis as wide as the widest SAE, in shards of
    `shard_width` features."""
    import dask.array as da
    import xarray as xr
    from zarr.codecs import ZstdCodec

    n_configs, n_fragments = len(configs), len(fragments)
    chunk_fragments = max(1, min(chunk_fragments, n_fragments))
    width = max(widths)
    attrs = {**attrs, WIDTHS: [int(w) for w in widths]}
    activations = da.zeros((n_configs, n_fragments, width), dtype=np.float32, chunks=(1, chunk_fragments, shard_width))
    coords = {
        "config": ("config", _strings(c.name for c in configs)),
        "layer": ("config", np.array([c.layer for c in configs], dtype=np.int64)),
        "average_l0": ("config", np.array([c.l0_or_missing for c in configs], dtype=np.int64)),  # -1: not known
        "width": ("config", np.array(widths, dtype=np.int64)),
        "architecture": ("config", _strings(c.architecture or "jumprelu" for c in configs)),
        "sae_path": ("config", _strings(c.path for c in configs)),
        "hook": ("config", _strings(c.site_hook for c in configs)),  # the site each SAE reads
        "neuronpedia_source": ("config", _strings(c.neuronpedia or "" for c in configs)),
        "feature": ("feature", np.arange(width, dtype=np.int64)),
    }
    for field in fragments.columns:
        values = fragments[field].to_numpy()
        coords[field] = (
            "fragment",
            _strings(values) if values.dtype.kind in "OUT" or field.endswith(("text", "sentence")) else values,
        )
    dataset = xr.Dataset({ACTIVATIONS: (("config", "fragment", "feature"), activations)}, coords=coords, attrs=attrs)
    encoding = {
        ACTIVATIONS: {
            "chunks": (1, chunk_fragments, _feature_chunk(shard_width)),
            "shards": (1, chunk_fragments, shard_width),
            "compressors": (ZstdCodec(level=ZSTD_LEVEL, checksum=True),),  # a damaged chunk fails to decode
            **fill_value_encoding(np.nan),
        }
    }
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        dataset.to_zarr(path, mode="w-", compute=False, encoding=encoding, zarr_format=3, consolidated=True)
    settle_layout(path, {ACTIVATIONS: "NaN"})
    (path / STATE_GROUP / "done").mkdir(parents=True)
    # written here, not by zarr: zarr before 3.1 adds `"consolidated_metadata": null` to a group's zarr.json
    (path / STATE_GROUP / "zarr.json").write_text(
        json.dumps({"attributes": {}, "zarr_format": 3, "node_type": "group"}, indent=2)
    )
    # the arrays in name order, as zarr from 3.1 consolidates them (3.0: in creation order)
    write_consolidated(open_storage(path))


def _strings(values: Iterable) -> np.ndarray:
    # variable-length UTF-8 has a Zarr v3 spec; fixed-width numpy unicode does not
    return np.array(list(values), dtype=object)


def default_chunk_fragments(width: int) -> int:
    """Fragments per unit by default: DEFAULT_CHUNK_FRAGMENTS, fewer for SAEs wider than 32k so that a unit's
    latents stay within UNIT_BYTES, which bounds the writer's host buffers, but at least MIN_UNIT_FRAGMENTS, below
    which encoding a unit is bound by packing W_enc rather than by its arithmetic (1m wide: 128 fragments)."""
    return max(MIN_UNIT_FRAGMENTS, min(DEFAULT_CHUNK_FRAGMENTS, UNIT_BYTES // (4 * width)))


def _feature_chunk(width: int) -> int:
    """Largest divisor of width not above DEFAULT_FEATURE_CHUNK, more where the default unit has fewer fragments
    (an inner chunk of a default unit keeps about 4 MiB at every width), so inner chunks tile the shard."""
    wanted = DEFAULT_FEATURE_CHUNK * DEFAULT_CHUNK_FRAGMENTS // default_chunk_fragments(width)
    return next(c for c in range(min(wanted, width), 0, -1) if width % c == 0)
