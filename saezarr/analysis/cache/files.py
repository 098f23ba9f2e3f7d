"""The analysis cache: per-sentence activations and metrics, keyed by a fingerprint of the store, pool and configs."""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import shutil
import weakref
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from saezarr.analysis.cache.units import feature_units, unit_function
from saezarr.analysis.stats.metrics import METRICS, unstacked
from saezarr.analysis.stats.pooling import SentenceLayout, pooled_dtype
from saezarr.durable.folders import make_staging, remove_stale_staging_in, replace_file
from saezarr.durable.locking import SharedLease, exclusive_if_free
from saezarr.errors import SaezarrError, WriteFailed
from saezarr.execution.running import map_in_threads, map_units
from saezarr.machine import human_bytes, parse_size
from saezarr.store.format import ACTIVATIONS, Store
from saezarr.store.shards import ChunkFiles, ShardDamaged, chunk_file_count
from saezarr.store.storage import absolute_location

_log = logging.getLogger(__name__)
CACHE_FORMAT = 5  # bump when what the cache holds or how it is computed changes
POOLED = "pooled.zarr"
METRICS_FILE = "metrics.npy"
COMPLETE = "complete.json"  # written last into a filled entry: how many pooled chunk files it holds
LEASES = ".leases"  # `KEY.lease` per entry, share-locked while a run uses it (a dot name: never taken for an entry)
# a fill whose process this host cannot see is left alone for a day: it may be another host's, on a shared cache
FILL_GRACE = 24 * 3600.0
POOLED_FEATURES = 256  # features per chunk of pooled.zarr: the examples read a few features' chunks
PLOTS = "plots"  # the report's plots, by a digest of what they show
TOKENS = "tokens"  # each feature shown with examples: its activations at the fragment chunks read, `CONFIG_FEATURE.npy`
Feature = tuple[int, int]  # (store config index, feature id)
TOKEN_ROWS = np.dtype([("row", "<i8"), ("value", "<f4")])  # a fragment and the feature's activation there
STAGING_SUFFIX = ".filling"  # an entry being filled, or an evicted one being deleted: `.KEY.PID.RANDOM.filling`
MAX_BYTES_VARIABLE = "SAEZARR_CACHE_MAX_BYTES"
DEFAULT_MAX_BYTES = 20 * 2**30


def cache_root() -> Path:
    """Where saezarr keeps caches: $SAEZARR_CACHE, else ~/.cache/saezarr."""
    # absolute: the root is sent to dask workers, whose working directory is not this process's
    return Path(os.environ.get("SAEZARR_CACHE") or Path.home() / ".cache" / "saezarr").expanduser().absolute()


def cache_max_bytes() -> int:
    """The analysis cache's size cap: $SAEZARR_CACHE_MAX_BYTES (a size such as `20GiB`; `0` keeps only the entry in
    use), else 20 GiB."""
    text = os.environ.get(MAX_BYTES_VARIABLE, "").strip()
    if not text:
        return DEFAULT_MAX_BYTES
    return 0 if text == "0" else parse_size(text, MAX_BYTES_VARIABLE)


def fingerprint(store: Store, pool: str, config_indices: Sequence[int]) -> str:
    """A hex digest of the store's identity and every selected unit's shard file, the pool, the configs, the metrics
    (a plugin's add rows to metrics.npy) and the code that computes the entry (saezarr's version and source digest)."""
    import saezarr
    from saezarr.execution.checks import code_digest

    units = []
    listed = store.stats(f"{ACTIVATIONS}/")  # one listing, not a request per shard
    for ci in config_indices:
        for chunk in range(store.n_chunks):
            for key in store.shard_keys(ci, chunk):
                stat = listed[key] if key in listed else store.storage.stat(key)
                units.append([key, stat.size, stat.modified_ns])
    identity = {
        "format": CACHE_FORMAT,
        "saezarr": saezarr.__version__,
        "code": code_digest(),
        "store": str(absolute_location(store.path)),
        "attrs": store.attrs,
        "shape": list(store.shape),
        "pool": pool,
        "configs": [store.config_names[ci] for ci in config_indices],
        "metrics": list(METRICS),
        "units": units,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _pad_narrower_saes(store: Store, config_indices: Sequence[int], pooled: ChunkFiles, metrics: np.ndarray) -> None:
    """Past a narrower SAE's own features, the store's feature axis holds none: pooled as never firing (a dead
    feature, to the permutation and fold statistics), with NaN metrics, so that no such feature passes or is ranked."""
    step = pooled.chunks[2]
    for position, ci in enumerate(config_indices):
        width = int(store.widths[ci])
        if width < store.width:
            metrics[:, position, width:] = np.nan
            zeros = np.zeros((1, pooled.shape[1], step), dtype=pooled.dtype)
            # from the next chunk on: the one holding the SAE's last features was padded with zeros when written
            for start in range(-(-width // step) * step, store.width, step):
                pooled[position : position + 1, :, start : start + step] = zeros[:, :, : store.width - start]


class AnalysisCache:
    """One fingerprint's cache folder: `pooled.zarr` [config, sentence, feature], `metrics.npy` [metric, config,
    feature], and `plots/`; other entries are evicted, least recently used first, to keep them under max_bytes
    (None: $SAEZARR_CACHE_MAX_BYTES, checked here). From its creation until it is garbage collected (or `release()`),
    the object holds a shared lease on its entry, so no other run evicts the entry while this one uses it."""

    def __init__(self, key: str, root: Path | None = None, max_bytes: int | None = None):
        self.path = (root or cache_root()) / "analysis" / key
        self.max_bytes = cache_max_bytes() if max_bytes is None else max_bytes
        self._lease = SharedLease(self.path.parent / LEASES / f"{key}.lease").__enter__()
        self._release = weakref.finalize(self, self._lease.__exit__)

    def release(self) -> None:
        """Give up the lease on the entry: from now on other runs may evict it."""
        self._release()

    def remove_dead_fills(self) -> None:
        """Delete the half-filled entries (and half-deleted ones) of every fingerprint left by processes now gone."""
        remove_stale_staging_in(self.path.parent, STAGING_SUFFIX, FILL_GRACE)

    @property
    def complete(self) -> bool:
        """True if the entry holds everything a fill wrote: its marker, the metrics and every pooled chunk file."""
        try:
            expected = json.loads((self.path / COMPLETE).read_text())["pooled_chunk_files"]
            return (self.path / METRICS_FILE).is_file() and chunk_file_count(self.path / POOLED) == expected
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def fill(
        self,
        store: Store,
        config_indices: Sequence[int],
        layout: SentenceLayout,
        pool: str,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Compute and store the per-sentence activations of the configs, and their metrics, one unit of work per
        (config, feature chunk); the folder appears by rename once whole. Then evict old entries over the cap."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = make_staging(self.path, STAGING_SUFFIX, FILL_GRACE)
        try:
            shape = (len(config_indices), layout.n_sentences, store.width)
            chunks = (1, layout.n_sentences, min(POOLED_FEATURES, store.feature_chunk))
            pooled = ChunkFiles(staging / POOLED, shape, chunks, pooled_dtype(pool, store.dtype))
            # written straight into the file: no heap copy of configs × features × metrics that glibc may keep
            metrics = np.lib.format.open_memmap(
                staging / METRICS_FILE,
                mode="w+",
                dtype=np.float64,
                shape=(len(METRICS), len(config_indices), store.width),
            )
            units = feature_units(store, config_indices)
            for unit, values in map_units(unit_function(store, layout, pool, pooled), units, progress):
                metrics[:, unit.position, unit.start : unit.stop] = values
            _pad_narrower_saes(store, config_indices, pooled, metrics)
            metrics.flush()
            del metrics
            release_freed_memory()
            (staging / COMPLETE).write_text(json.dumps({"pooled_chunk_files": chunk_file_count(staging / POOLED)}))
            self._move_into_place(staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.touch()
        evict_old_entries(self.path.parent, self.max_bytes, keep=self.path)

    def _move_into_place(self, staging: Path) -> None:
        """Rename the filled staging folder to the entry; an incomplete entry found there is removed first."""
        for _ in range(3):
            try:
                os.rename(staging, self.path)
                return
            except OSError:
                if self.complete:  # another run filled it first
                    return
                _delete_entry(self.path)  # a stub or a damaged entry: this fill replaces it
        raise WriteFailed(f"{self.path}: could not put the filled analysis cache entry in place", exit_code=1)

    def pooled(self) -> ChunkFiles:
        """The cached per-sentence activations, read chunk by chunk."""
        return _EntryChunks.existing(self.path / POOLED)

    def metrics(self) -> dict[str, np.ndarray]:
        """The cached metrics, each a [config, feature] array (`monotonic` as bool), by name in METRICS order."""
        return unstacked(np.load(self.path / METRICS_FILE, mmap_mode="r"))  # pages are read as the tables need them

    def token_activations(self, store: Store, rows: dict[Feature, np.ndarray]) -> dict[Feature, np.ndarray]:
        """Each (store config index, feature)'s activations at its fragment rows, in their order. The
        entry's tokens/ folder keeps, per feature, every fragment chunk read for it (rows and values); the chunks it
        lacks are read from the store and added, so that a re-run showing the feature again decodes no shard."""
        kept = {key: self._kept_tokens(*key) for key in rows}
        lacking = defaultdict(list)  # (config, fragment chunk) -> features
        for (ci, feature), wanted in rows.items():
            for chunk in np.unique(wanted[~np.isin(wanted, kept[(ci, feature)]["row"])] // store.chunk_fragments):
                lacking[(ci, int(chunk))].append(feature)

        def read(unit: tuple[int, int]) -> list[tuple[Feature, np.ndarray]]:
            (ci, chunk), features = unit, lacking[unit]
            block = store.read_columns(ci, chunk, np.array(features, dtype=np.int64))
            fragments = np.arange(*store.chunk_bounds(chunk))
            return [((ci, feature), _tokens(fragments, block[:, j])) for j, feature in enumerate(features)]

        read_now = defaultdict(list)
        for parts in map_in_threads(read, lacking):
            for key, part in parts:
                read_now[key].append(part)
        out = {}
        for key, wanted in rows.items():
            tokens = kept[key]
            if key in read_now:
                tokens = np.sort(np.concatenate([tokens, *read_now[key]]), order="row")
                # never parents: an entry evicted meanwhile must not come back as a stub holding only tokens/
                replace_file(self._token_file(*key), partial(np.save, arr=tokens), parents=False)
            out[key] = tokens["value"][np.searchsorted(tokens["row"], wanted)]
        return out

    def _kept_tokens(self, config_index: int, feature: int) -> np.ndarray:
        try:
            kept = np.load(self._token_file(config_index, feature))
        except (OSError, ValueError, EOFError):  # none yet, or damaged: read again
            kept = None
        return kept if kept is not None and kept.dtype == TOKEN_ROWS else np.empty(0, dtype=TOKEN_ROWS)

    def _token_file(self, config_index: int, feature: int) -> Path:
        return self.path / TOKENS / f"{config_index}_{feature}.npy"

    def touch(self) -> None:
        """Mark the cache as used now (its folder's mtime), leaving its files as they are."""
        os.utime(self.path)


class _EntryChunks(ChunkFiles):
    """A cache entry's pooled chunks: one that cannot be read removes the entry and says so in one line."""

    def _read_chunk(self, coords: tuple[int, ...]) -> np.ndarray:
        try:
            return super()._read_chunk(coords)
        except ShardDamaged as exc:
            entry = self.path.parent
            _delete_entry(entry)
            raise SaezarrError(
                f"analysis cache entry {entry} is damaged ({exc}); it was removed, so running the same command again "
                "rebuilds it",
                exit_code=1,
            ) from None


def _tokens(rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    tokens = np.empty(len(rows), dtype=TOKEN_ROWS)
    tokens["row"], tokens["value"] = rows, values
    return tokens


def evict_old_entries(folder: Path, max_bytes: int, keep: Path) -> None:
    """Delete whole entries of folder, least recently used (folder mtime) first, until they total at most max_bytes;
    never keep, an entry another run holds a lease on, nor a staging folder; say so in one line if any went."""
    entries = [entry for entry in _entries(folder) if entry != keep]
    sizes = {entry: _size(entry) for entry in entries}
    excess = sum(sizes.values()) + _size(keep) - max_bytes
    removed = []
    for entry in sorted(entries, key=_mtime):
        if excess <= 0:
            break
        if _delete_unused_entry(entry):
            removed.append(entry)
            excess -= sizes[entry]
    if removed:
        freed = human_bytes(sum(sizes[entry] for entry in removed))
        _log.info(
            f"removed {len(removed)} old analysis cache entr{'y' if len(removed) == 1 else 'ies'} ({freed}) "
            f"to stay under {human_bytes(max_bytes)}; see {MAX_BYTES_VARIABLE}"
        )


def _entries(folder: Path) -> list[Path]:
    try:
        return [entry for entry in folder.iterdir() if not entry.name.startswith(".") and entry.is_dir()]
    except FileNotFoundError:
        return []


def _size(folder: Path) -> int:
    total = 0
    for parent, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(parent, name)).st_size
            except OSError:  # deleted meanwhile
                pass
    return total


def _mtime(folder: Path) -> float:
    try:
        return folder.stat().st_mtime
    except OSError:
        return 0.0


def _delete_unused_entry(entry: Path) -> bool:
    """Delete entry unless a run holds a lease on it; True if it went."""
    held = exclusive_if_free(entry.parent / LEASES / f"{entry.name}.lease")
    if held is None:  # in use (or no flock here: then nothing is evicted, rather than something in use)
        return False
    try:
        return _delete_entry(entry)
    finally:
        os.close(held)


def _delete_entry(entry: Path) -> bool:
    """Move entry into a staging folder first, so no reader sees it half deleted; False if it is gone already."""
    trash = make_staging(entry, STAGING_SUFFIX, FILL_GRACE)
    try:
        os.rename(entry, trash / entry.name)
        return True
    except OSError:  # another run deleted it first
        return False
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def release_freed_memory() -> None:
    """Hand the memory that worker threads freed back to the system (glibc keeps it in per-thread arenas, so the
    peak of what follows would stack on the peak of the fill); a no-op without glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
